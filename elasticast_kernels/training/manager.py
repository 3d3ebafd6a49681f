"""The checkpoint / resume protocol of a training run, for any training loop.

A run that is killed and resumed must continue exactly where it was: the same weights and
optimiser moments, the same learning rate, the samples it had not trained on yet (no more, no
fewer), and the same random draws on every rank (dropout, token dropout). :class:`CheckpointManager`
saves and restores all of that with two calls::

    with init_distributed() as ctx:
        resume = CheckpointManager.read("ckpt/last.pt", ctx)       # None on a fresh start
        ...build model, optimiser, scheduler, sampler (from resume.extra if you saved settings)...
        manager = CheckpointManager("ckpt/last.pt", ctx, model, optimizer, scheduler=scheduler,
                                    sampler=sampler, card=card)
        step = manager.restore(resume) if resume else 0              # RNG states are restored last
        for epoch ...:
            sampler.set_epoch(epoch)
            for batch in loader:
                ...forward, backward, optimizer.step(), scheduler.step()...
                step += 1
                sampler.advance()                                    # this step's samples are used
                if step % 200 == 0:
                    manager.save(step)                               # every rank calls it

What a checkpoint holds: the full (unsharded) model under its own state-dict keys, so it loads
into a plain model; the optimiser state keyed by parameter name (portable between DDP, FSDP2 and
one process); the scheduler's and the sampler's ``state_dict()`` (torch's ``Stateful`` protocol;
the sampler counts the steps the loop finished, not those a loader prefetched); every rank's
torch/CUDA/numpy/Python RNG states; the step and the world size; optionally a
:class:`~elasticast_kernels.saved_model.ModelCard` (so :func:`~elasticast_kernels.saved_model.load_model`
rebuilds the model from the file) and any plain values the caller adds.

How it is written: the RNG states are gathered from every rank, the full state is gathered to
rank 0 (a collective under FSDP), every rank checks that its weights and optimiser state are
finite (a NaN checkpoint never replaces a good one), rank 0 writes the file atomically with a
content digest (`elasticast_kernels.serialization`), and an all-reduce tells every rank whether
the write succeeded, so no rank runs ahead, or is killed, while the file is being written.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from elasticast_kernels.saved_model import CARD_KEY, ModelCard
from elasticast_kernels._checks import check_int
from elasticast_kernels.serialization import CheckpointError

from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .distributed import DistributedContext, gather_objects, reduce_sums
from .finite import check_finite_state
from .parallel import full_training_state, load_training_state

__all__ = ["CheckpointManager", "Stateful", "TrainingCheckpoint"]

#: Keys the manager writes itself; the caller's ``extra`` values may not use them.
RESERVED_KEYS = ("model", "optimizer", "scheduler", "sampler", "rng", "step", "world_size", "format", CARD_KEY)
_REQUIRED = ("model", "optimizer", "rng", "step", "world_size")


@runtime_checkable
class Stateful(Protocol):
    """torch's checkpoint protocol (``torch.distributed.checkpoint.stateful.Stateful``)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


@dataclass
class TrainingCheckpoint:
    """A checkpoint read by :meth:`CheckpointManager.read`, before it is restored.

    Attributes:
        path: the file. step: the step it was written after. world_size: ranks that wrote it.
        card: its :class:`ModelCard`, or None. extra: the caller's values (``save(extra=...)``).
        state: the whole payload (what :meth:`CheckpointManager.restore` loads from).
    """

    path: str
    step: int
    world_size: int
    card: ModelCard | None
    extra: dict[str, Any]
    state: dict[str, Any] = field(repr=False)


class CheckpointManager:
    """Saves and restores everything a training run needs to continue exactly (see the module doc).

    Args:
        path: the checkpoint file (e.g. ``DIR/last.pt``); each save replaces it atomically.
        ctx: the :class:`DistributedContext` (every rank makes its own manager).
        model: the model as trained: plain, DDP-wrapped or FSDP2-sharded.
        optimizer: its optimiser.
        scheduler, sampler: ``Stateful`` objects (``state_dict()`` / ``load_state_dict()``), or None.
        card: a :class:`ModelCard` stored with every checkpoint (under ``"model_card"``), so that
            ``load_model(path)`` rebuilds the trained model with its classes and feature settings.
        stateful: further ``Stateful`` objects by name (an EMA, a ``GradScaler``, ...).

    Raises:
        TypeError: a component without ``state_dict``/``load_state_dict``, a card that is not a
            ModelCard. ValueError: a ``stateful`` name the manager uses itself.
    """

    def __init__(self, path: str | os.PathLike, ctx: DistributedContext, model: nn.Module,
                 optimizer: torch.optim.Optimizer, *, scheduler: Stateful | None = None,
                 sampler: Stateful | None = None, card: ModelCard | None = None,
                 stateful: Mapping[str, Stateful] | None = None) -> None:
        self.path, self.ctx, self.model, self.optimizer, self.card = os.fspath(path), ctx, model, optimizer, card
        if card is not None and not isinstance(card, ModelCard):
            raise TypeError(f"card must be a ModelCard, got {type(card).__name__}")
        clashes = sorted(set(stateful or {}) & set(RESERVED_KEYS))
        if clashes:
            raise ValueError(f"stateful names {clashes} are keys the manager uses itself; pick others")
        components = {"scheduler": scheduler, "sampler": sampler, **dict(stateful or {})}
        for name, component in components.items():
            if component is not None and not isinstance(component, Stateful):
                raise TypeError(f"{name} must have state_dict() and load_state_dict(), got {type(component).__name__}")
        self.components = {name: component for name, component in components.items() if component is not None}

    # ------------------------------------------------------------------ reading
    @staticmethod
    def read(path: str | os.PathLike, ctx: DistributedContext,
             map_location: str | torch.device = "cpu") -> TrainingCheckpoint | None:
        """Read and check the checkpoint at ``path`` on this rank; None when there is none yet.

        Raises:
            CheckpointError: an unreadable, corrupt or foreign file, a part missing, an invalid
                card, or a checkpoint written by another number of ranks (the RNG states and the
                sampler's data shares are per rank).
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            return None
        state = load_checkpoint(path, required=_REQUIRED, map_location=map_location)
        world_size, step = state["world_size"], state["step"]
        for name, value, minimum in (("world_size", world_size, 1), ("step", step, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise CheckpointError(f"{path}: {name} must be an int >= {minimum}, got {value!r}")
        if world_size != ctx.world_size:
            raise CheckpointError(f"{path} was written by {world_size} ranks; resume it on the same number (this "
                                  f"run has {ctx.world_size}) so that every rank gets its RNG state and data share back")
        card = None
        if CARD_KEY in state:
            try:
                card = ModelCard.from_dict(state[CARD_KEY])
            except (TypeError, ValueError) as error:
                raise CheckpointError(f"{path}: invalid model card: {error}") from None
        extra = {key: value for key, value in state.items() if key not in RESERVED_KEYS}
        return TrainingCheckpoint(path, step, world_size, card, extra, state)

    def restore(self, checkpoint: TrainingCheckpoint | None = None) -> int:
        """Load the model, optimiser, every component and this rank's RNG states; returns the step.

        Call it right before the training loop, after everything that draws random numbers
        (model construction, ...): the RNG states are restored last. A collective under FSDP.

        Args:
            checkpoint: from :meth:`read` (default: read :attr:`path` now).

        Raises:
            FileNotFoundError: no checkpoint (and none given).
            CheckpointError: a component's state is missing or does not fit (naming the file and
                the component), or any error of :meth:`read`.
        """
        checkpoint = checkpoint if checkpoint is not None else self.read(self.path, self.ctx)
        if checkpoint is None:
            raise FileNotFoundError(f"no checkpoint at {self.path} to restore")
        state = checkpoint.state
        missing = [name for name in self.components if name not in state]
        if missing:
            raise CheckpointError(f"checkpoint {checkpoint.path} lacks {missing}")
        try:
            load_training_state(self.model, self.optimizer, state["model"], state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(f"{checkpoint.path}: the model or optimiser state does not fit: {error}") from None
        for name, component in self.components.items():
            try:
                component.load_state_dict(state[name])
            except (TypeError, ValueError, KeyError) as error:
                raise CheckpointError(f"{checkpoint.path}: the {name} state does not fit: {error}") from None
        rng = state["rng"]
        if not isinstance(rng, list) or len(rng) != self.ctx.world_size:
            raise CheckpointError(f"{checkpoint.path}: expected {self.ctx.world_size} RNG states, got "
                                  f"{len(rng) if isinstance(rng, list) else type(rng).__name__}")
        try:
            restore_rng_state(rng[self.ctx.rank])
        except (TypeError, ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"{checkpoint.path}: rank {self.ctx.rank}'s RNG state is invalid: {error}") from None
        return checkpoint.step

    # ------------------------------------------------------------------ writing
    def save(self, step: int, extra: Mapping[str, Any] | None = None) -> None:
        """Write the checkpoint of ``step`` to :attr:`path` (every rank calls it; rank 0 writes).

        Args:
            step: the number of optimiser steps taken (what :meth:`restore` returns).
            extra: plain values to store beside the state (settings the run needs to resume:
                normalisation, arguments, ...); they come back in ``TrainingCheckpoint.extra``.

        Raises:
            NonFiniteError: some rank's weights or optimiser state hold NaN/inf; nothing is
                written, and the previous checkpoint stays.
            ValueError: ``extra`` uses a key the manager writes itself.
            CheckpointError: rank 0 could not write (on the other ranks; rank 0 raises the
                OSError or TypeError itself). The previous checkpoint stays.
        """
        check_int("step", step, 0)
        extra = dict(extra or {})
        clashes = sorted(set(extra) & set(RESERVED_KEYS))
        if clashes:
            raise ValueError(f"extra must not use the keys {clashes}: the manager writes them itself")
        rng_states = gather_objects(capture_rng_state(), self.ctx)
        check_finite_state(self.model, self.optimizer, self.ctx, what=f"step {step}'s training state")
        model_state, optimizer_state = full_training_state(self.model, self.optimizer)  # a collective under FSDP
        error: BaseException | None = None
        if self.ctx.is_main:
            payload = {"model": model_state, "optimizer": optimizer_state, "rng": rng_states, "step": step,
                       "world_size": self.ctx.world_size, **extra,
                       **{name: component.state_dict() for name, component in self.components.items()}}
            if self.card is not None:
                payload[CARD_KEY] = self.card.to_dict()
            try:
                save_checkpoint(self.path, payload)
            except (OSError, TypeError, ValueError) as caught:
                error = caught
        # Doubles as the barrier: nobody runs ahead (or gets killed) while the file is written.
        if reduce_sums({"failed": float(error is not None)}, self.ctx)["failed"] > 0:
            if error is not None:
                raise error
            raise CheckpointError(f"rank 0 could not write the checkpoint {self.path} (see its error)")
