"""Process-group setup and the loss normalisation for ranks that see unequal numbers of samples.

Packed steps give every rank the same token budget but not the same number of samples, so the
usual "mean loss per rank, then DDP averages the gradients" weighs a sample on a rank with few
samples more than one on a busy rank. The fix is one all-reduce of the step's sample count:

    totals = reduce_sums({"samples": batch.num_samples}, ctx)          # one all-reduce
    loss = scale_to_global_mean(loss_sum, totals["samples"], ctx.world_size)
    loss.backward()                                                     # DDP / FSDP average over ranks

``loss_sum`` is the *sum* of the per-sample losses of this rank; DDP and FSDP divide the summed
gradients by the world size, so the result is the gradient of the mean loss over the union of all
ranks' samples: what one process would get from the whole step.
"""
from __future__ import annotations

import datetime
import gc
import os
import traceback
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "gather_objects", "init_distributed", "reduce_sums", "scale_to_global_mean"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs.

    Attributes:
        rank, world_size, local_rank: from ``torchrun`` (``0, 1, 0`` for a plain process).
        device: ``cuda:<local_rank>`` with CUDA, else ``cpu``.
        backend: ``"nccl"``, ``"gloo"`` or ``None`` (plain process: no process group).

    As a context manager (``with init_distributed() as ctx:``) it leaves the process group on
    exit, after releasing what an exception's frames still hold (a DDP reducer destroyed after
    its gloo group can deadlock on gloo's thread, which needs the GIL the destructor holds).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def shutdown(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def __enter__(self) -> "DistributedContext":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if tb is not None:
            traceback.clear_frames(tb)  # the model and its wrapper go before the process group
        gc.collect()
        self.shutdown()


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group ``torchrun`` set up, or describe a plain single process.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT`` through
    ``init_method="env://"``). NCCL on CUDA, gloo on CPU.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"``.
        timeout_s: collective timeout.

    Raises:
        ValueError: an unknown ``device``, or ``"cuda"`` without CUDA.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(torch_device)
    if "RANK" not in os.environ:  # a plain `python script.py`: no process group at all
        return DistributedContext(device=torch_device)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(
        backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s),
        device_id=torch_device if use_cuda else None,
    )
    return DistributedContext(dist.get_rank(), world_size, local_rank, torch_device, backend)


def reduce_sums(values: Mapping[str, float | int | torch.Tensor], ctx: DistributedContext) -> dict[str, float]:
    """Sum named scalars over all ranks with ONE all-reduce (float64: counts stay exact below 2**53).

    Args:
        values: name -> Python number or one-element tensor (on any device).
        ctx: the :class:`DistributedContext`; without a process group the values come back as floats.

    Returns:
        name -> the sum over ranks, as a Python float (reading it back syncs the device once).
    """
    names = list(values)
    parts = [
        value.detach().reshape(()).to(ctx.device, torch.float64) if isinstance(value, torch.Tensor)
        else torch.tensor(float(value), dtype=torch.float64, device=ctx.device)
        for value in values.values()
    ]
    flat = torch.stack(parts) if parts else torch.zeros(0, dtype=torch.float64)
    if ctx.distributed and names:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return dict(zip(names, flat.tolist()))


def gather_objects(value: Any, ctx: DistributedContext) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` without a
    process group. A collective: every rank must call it."""
    if not ctx.distributed:
        return [value]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def scale_to_global_mean(loss_sum: torch.Tensor, global_samples: float, world_size: int) -> torch.Tensor:
    """``loss_sum * world_size / global_samples``: the loss to back-propagate on this rank.

    Args:
        loss_sum: 0-d tensor, the SUM of this rank's per-sample losses in the step.
        global_samples: samples in the step over all ranks (from :func:`reduce_sums`), > 0.
        world_size: ranks whose gradients DDP / FSDP average.

    Returns:
        A 0-d tensor whose gradient, averaged over ranks by DDP/FSDP, is the gradient of the mean
        per-sample loss over all ranks' samples (one process over the union gives the same).

    Raises:
        ValueError: ``global_samples <= 0`` or ``world_size < 1``.
    """
    if not global_samples > 0:
        raise ValueError(f"global_samples must be > 0, got {global_samples}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return loss_sum * (world_size / global_samples)
