"""Triton helpers shared by the kernel modules (``varlen_attention_kernels``, ``segment_pool_kernels``)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def tile_offsets(stride, ROWS: tl.constexpr, COLS: tl.constexpr):
    """int32 element offsets of a ``[ROWS, COLS]`` tile from its first row.

    int32 is enough inside a tile; callers add the first row's offset to the base pointer as a
    scalar (int64 where the tensor needs it), so a tensor past 2^31 elements still addresses right.
    """
    return tl.arange(0, ROWS)[:, None] * stride + tl.arange(0, COLS)[None, :]


def needs_int64(*tensors: torch.Tensor, overhang_rows: int = 256) -> bool:
    """Whether element offsets into any of ``tensors`` (plus ``overhang_rows`` rows past the end,
    which a masked tile may compute) can pass int32."""
    for t in tensors:
        if t.numel() == 0:
            continue
        span = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
        if span + overhang_rows * max(t.stride()) >= 2**31:
            return True
    return False


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
