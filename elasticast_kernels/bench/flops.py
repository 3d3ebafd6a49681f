"""Work and byte counts, and the physical limits they are compared with.

Only real, unmasked work is counted: for attention the FLOPs of each sample's own
``n_i x n_i`` block (no cross-sample pairs, no padding), whichever implementation runs. A masked
baseline therefore gets the same count as the packed kernel, and its achieved TFLOP/s is the rate
of useful work it delivers, not the rate of the arithmetic it burns on masked pairs.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

# Backward of attention = 2.5x the forward's matmul FLOPs (5 matmuls instead of 2), as
# FlashAttention counts it.
BWD_FACTOR = 2.5
PASS_FACTOR = {"fwd": 1.0, "bwd": BWD_FACTOR, "fwd_bwd": 1.0 + BWD_FACTOR}

# Measured on the lent GPU machines (late 2026): device-to-device copy bandwidth counting
# bytes read + written, and a large bf16 matmul. Keys are matched against the GPU name.
GPU_LIMITS = {
    "H100": {"copy_bytes_per_s": 3.0e12, "bf16_flops_per_s": 798e12},
    "H200": {"copy_bytes_per_s": 4.3e12, "bf16_flops_per_s": 790e12},
}


def gpu_limits(gpu_name: str | None) -> dict | None:
    """Measured limits for a GPU name (``"NVIDIA H100 80GB HBM3"`` -> the H100 entry), else None."""
    if not gpu_name:
        return None
    for key, limits in GPU_LIMITS.items():
        if key in gpu_name:
            return dict(limits, source=key)
    return None


def _sum_sq(seqlens: Iterable[int]) -> float:
    arr = np.asarray(list(seqlens), dtype=np.float64)
    return float((arr * arr).sum())


def attention_flops(seqlens: Iterable[int], heads: int, head_dim: int, pass_: str = "fwd") -> float:
    """Real FLOPs of non-causal self-attention over samples of the given lengths.

    Forward: ``QK^T`` and ``PV``, 2 FLOPs per multiply-add each: ``4 * n^2 * head_dim`` per head.
    """
    if pass_ not in PASS_FACTOR:
        raise ValueError(f"pass_ must be one of {tuple(PASS_FACTOR)}, got {pass_!r}")
    return 4.0 * _sum_sq(seqlens) * heads * head_dim * PASS_FACTOR[pass_]


def pooling_kv_bytes(total_tokens: int, heads: int, head_dim: int, element_size: int) -> int:
    """Bytes of k and v that the pooling forward must read once."""
    return 2 * int(total_tokens) * heads * head_dim * element_size


def model_flops(seqlens: Iterable[int], dim: int, depth: int, patch_pixels: int = 256, training: bool = False) -> float:
    """Real FLOPs of an ElasticAST forward (x3 for a training step) over samples of these lengths.

    Per token and block: q, kv, proj and the 4x MLP are ``2 * 12 * dim^2``; attention adds
    ``4 * n * dim`` per token of a sample of length n; plus the patch embedding and the pooling's
    k/v projection.
    """
    lengths = list(seqlens)
    tokens = float(sum(lengths))
    per_block = 24.0 * dim * dim * tokens + 4.0 * _sum_sq(lengths) * dim
    total = depth * per_block + 2.0 * patch_pixels * dim * tokens + 4.0 * dim * dim * tokens
    return total * (3.0 if training else 1.0)
