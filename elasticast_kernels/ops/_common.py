"""What both op families share: one dispatch rule, the log-sum-exp layout, and log2(e).

No Triton import here: the torch paths (and machines without Triton) use this module too.

Dispatch: Triton runs for CUDA tensors, and for CPU tensors when ``TRITON_INTERPRET=1`` is set
(the interpreter is how the kernels are tested without a GPU), except bf16 CPU tensors: the
interpreter computes bf16 through numpy, which has no bfloat16, and returns garbage. Triton
decides interpreted vs compiled when a kernel module is imported, so the variable must be set
before importing this package.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

LOG2E = 1.4426950408889634  # log2(e): the kernels scale scores by scale * log2(e) and use exp2
# Tile offsets inside the kernels are int32: a tile of up to 128 rows (tokens) at a row stride
# below this stays under 2^31 elements. Wider rows are copied compact or take the torch path.
MAX_ROW_STRIDE = 2**23


def lse_columns(total_tokens):
    """Row length of a saved log-sum-exp ``[heads, lse_columns(total_tokens)]``: ``total_tokens``
    rounded up to a multiple of 16, so the row stride is 16-divisible (vector loads in Triton).

    Works on SymInts too (the fake implementations call it under torch.compile).
    """
    return (total_tokens + 15) // 16 * 16


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when ``import triton`` works (it is absent on macOS/Windows wheels)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_interpret() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set (read at call time, so tests can toggle the CPU path)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether an op on ``tensor`` launches the Triton kernels (the rule in the module docstring)."""
    if not triton_available():
        return False
    if tensor.is_cuda:
        return True
    return tensor.device.type == "cpu" and triton_interpret() and tensor.dtype != torch.bfloat16


def on_device(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it ``tensor``'s (multi-GPU safety)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def longest_first(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Device-side launch order (no host sync): ``order`` int32 ``[batch]``, the samples by
    decreasing length (ties in sample order), and ``order_cu`` int32 ``[batch + 1]``, the
    cumulative lengths in that order. Heavy programs then start first and the grid ends on light
    ones, which shortens the tail of a ragged launch (``GRID_ORDER`` of the kernels module)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    order = torch.argsort(lengths, descending=True, stable=True)
    order_cu = torch.zeros_like(cu_seqlens)
    torch.cumsum(lengths.index_select(0, order), 0, dtype=torch.int32, out=order_cu[1:])
    return order.to(torch.int32), order_cu
