"""One optimiser update of a packed step: the global per-sample mean, clipped, and never non-finite.

Ranks see unequal numbers of samples in a packed step, so each back-propagates the sum of its
per-sample losses times ``world_size / global samples`` (one all-reduce; see
:mod:`~elasticast_kernels.training.distributed`), and DDP's or FSDP2's gradient average is then the
gradient of the mean over all ranks' samples. The same all-reduce carries the loss sum, so every
rank sees the same non-finite loss, and the clipped gradient norm is the same on every rank: all
ranks skip the update of a non-finite step together, without another collective.
"""
from __future__ import annotations

import math
import re
import warnings
from typing import Mapping, NamedTuple

import torch
from torch import nn

from .distributed import DistributedContext, reduce_sums, scale_to_global_mean

__all__ = ["StepOutcome", "global_mean_update"]


class StepOutcome(NamedTuple):
    """``totals``: the step's sums over all ranks (``samples``, ``loss_sum`` and the caller's);
    ``grad_norm``: the gradient norm before clipping (NaN when the loss was not finite);
    ``problem``: None, or what was not finite with its value (``"loss (nan)"``,
    ``"gradient norm (inf)"``), in which case the optimiser did not step."""

    totals: dict[str, float]
    grad_norm: float
    problem: str | None


def global_mean_update(model: nn.Module, optimizer: torch.optim.Optimizer, loss_sum: torch.Tensor, num_samples: int,
                       ctx: DistributedContext, *, clip_grad: float | None = None,
                       scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                       totals: Mapping[str, float | torch.Tensor] | None = None) -> StepOutcome:
    """Back-propagate and apply one step whose forward the caller ran, unless it is not finite.

    Args:
        model: the (DDP/FSDP2-wrapped or plain) model of the forward.
        optimizer: its optimiser; its gradients are zeroed first.
        loss_sum: 0-d tensor, the SUM of this rank's per-sample losses.
        num_samples: this rank's samples in the step (may be 0 on a rank).
        ctx: the :class:`DistributedContext`.
        clip_grad: clip the gradient norm to this (None: no clipping; the norm is still computed).
        scheduler: stepped after the update, and also after a skipped one (the schedule follows
            the step count).
        totals: more values to sum over ranks in the same all-reduce (tokens, correct, flags).

    Returns:
        A :class:`StepOutcome`. The host reads the reduced totals and the gradient norm: two
        synchronisations per step, the price of never stepping on a NaN.

    Raises:
        ValueError: no sample in the step on any rank.
    """
    reduced = reduce_sums({"samples": num_samples, "loss_sum": loss_sum, **dict(totals or {})}, ctx)
    optimizer.zero_grad(set_to_none=True)
    grad_norm, problem = math.nan, f"loss ({reduced['loss_sum']})"
    if math.isfinite(reduced["loss_sum"]):
        scale_to_global_mean(loss_sum, reduced["samples"], ctx.world_size).backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf if clip_grad is None else clip_grad)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP2: a DTensor
        problem = None if math.isfinite(grad_norm) else f"gradient norm ({grad_norm})"
        if problem is None:
            optimizer.step()
    if scheduler is not None:
        with warnings.catch_warnings():
            # a skipped update before the first one makes torch warn of a wrong call order; it is on purpose
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"))
            scheduler.step()
    return StepOutcome(reduced, grad_norm, problem)
