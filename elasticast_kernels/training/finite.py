"""Keeping NaN and inf out of a run: one error type, and the check that guards every checkpoint.

A single NaN sample or an overflowing step makes the loss non-finite; one optimiser update with
its gradients turns every weight into NaN, and a checkpoint written after that replaces the last
good one. The training loop therefore checks the step's loss and gradient norm before it updates
(and either stops with :class:`NonFiniteError` naming the step and the files of its batch, or
skips the update), and :class:`~elasticast_kernels.training.CheckpointManager` refuses to write
weights or optimiser state that are not finite.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from .distributed import DistributedContext, gather_objects, reduce_sums

__all__ = ["NonFiniteError", "NonFiniteSteps", "first_nonfinite", "check_finite_state"]


class NonFiniteError(RuntimeError):
    """A non-finite loss, gradient norm or weight.

    Attributes:
        step: the training step it happened at (None when not tied to a step).
        quantity: what was not finite (``"loss"``, ``"gradient norm"``, ``"model state"``).
        files: per rank, the sources of the samples of that step's batch (may be empty).
    """

    def __init__(self, message: str, *, step: int | None = None, quantity: str = "",
                 files: Sequence[Sequence[str]] = ()) -> None:
        self.step, self.quantity = step, quantity
        self.files = [list(rank_files) for rank_files in files]
        listing = "".join(f"\n  rank {rank}: {name}" for rank, rank_files in enumerate(self.files)
                          for name in rank_files)
        super().__init__(message + (f"; the step's samples:{listing}" if listing else ""))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly FSDP-sharded) tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def first_nonfinite(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> str | None:
    """Name of the first floating-point parameter, buffer or optimiser-state tensor holding NaN
    or inf on this rank (its own shard under FSDP), or None when all are finite.

    One host synchronisation for the whole check (not one per tensor).
    """
    named = [(name, _local(t)) for name, t in [*model.named_parameters(), *model.named_buffers()]]
    if optimizer is not None:
        ids = {id(p): name for name, p in model.named_parameters()}
        for param, state in optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    named.append((f"optimizer state {key!r} of {ids.get(id(param), '?')}", _local(value)))
    named = [(name, t) for name, t in named if t.is_floating_point() and t.numel()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(t).all().to(named[0][1].device) for _, t in named]).cpu()
    bad = torch.nonzero(~finite)
    return named[int(bad[0])][0] if bad.numel() else None


def check_finite_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, ctx: DistributedContext,
                       what: str = "the training state") -> None:
    """Raise :class:`NonFiniteError` on every rank when any rank's weights or optimiser state hold
    NaN/inf. A collective (one all-reduce of a flag) in a process group: every rank calls it."""
    name = first_nonfinite(model, optimizer)
    if reduce_sums({"nonfinite": float(name is not None)}, ctx)["nonfinite"] > 0:
        where = f"{name} on rank {ctx.rank}" if name else "on another rank"
        raise NonFiniteError(f"{what} holds NaN or inf values (first: {where}); nothing was written",
                             quantity="model state")


class NonFiniteSteps:
    """What a training loop does with a step whose loss or gradient norm is NaN/inf.

    The loop skips the optimiser update of such a step (the check happens on every rank with
    the same, all-reduced values, so every rank agrees) and calls :meth:`handle`, which gathers
    every rank's sources of the step's samples and either raises :class:`NonFiniteError` naming
    the step and those files, or (``skip=True``) counts the step in :attr:`skipped`, reports it
    through ``say`` and writes a line to ``log``.

    Args:
        ctx: the :class:`DistributedContext` (``handle`` is a collective: every rank calls it).
        skip: count and continue instead of stopping.
        log: an object with ``write(**record)`` (a :class:`~elasticast_kernels.training.MetricsLog`), or None.
        say: where the warning goes (rank 0's ``print``).
    """

    def __init__(self, ctx: DistributedContext, skip: bool = False, log: Any = None,
                 say: Callable[[str], Any] = print) -> None:
        self.ctx, self.skip, self.log, self.say = ctx, bool(skip), log, say
        self.skipped = 0

    def handle(self, problem: str, step: int, sources: Sequence[str], where: str = "") -> None:
        """``problem``: what was not finite and its value (``"loss (nan)"``); ``sources``: this
        rank's files (or other names) of the step's samples; ``where``: e.g. ``"epoch 2"``."""
        files = gather_objects(list(sources), self.ctx)
        message = f"step {step}{f' ({where})' if where else ''}: non-finite {problem}"
        if not self.skip:
            raise NonFiniteError(f"{message}; stopped before the update", step=step,
                                 quantity=problem.split(" (")[0], files=files)
        self.skipped += 1
        self.say(str(NonFiniteError(f"WARNING {message}; step skipped, no update", files=files)))
        if self.log is not None:
            self.log.write(step=step, nonfinite=problem, files=[name for rank_files in files for name in rank_files])
