"""Test helpers shared by the test files: offsets, float64 references and one tolerance rule.

The references are deliberately plain (one sample at a time, float64, autograd for gradients) so
they can be trusted at a glance.
"""
from __future__ import annotations

from typing import Sequence

import torch


def cu_from(lengths: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """int32 ``[batch + 1]`` cumulative offsets of ``lengths``."""
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + int(length))
    return torch.tensor(offsets, dtype=torch.int32, device=device)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """Max abs error at most ``tol`` times the largest reference magnitude (at least 1): outputs
    and gradients mix scales, so the bound is relative to the tensor, not to each element."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.numel() == 0:
        return
    magnitude = max(1.0, expected.abs().max().item())
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= tol * magnitude, f"{what}: max error {error:.3g} > {tol:.1g} * {magnitude:.3g}"


def reference_attention(q, k, v, cu_seqlens, softmax_scale, causal=False) -> torch.Tensor:
    """Per-sample softmax attention in float64 (differentiable): ``[total, heads, head_dim]``."""
    bounds = cu_seqlens.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].double().transpose(0, 1) for t in (q, k, v))  # [heads, n, d]
        scores = qs @ ks.transpose(-1, -2) * softmax_scale
        if causal:
            n = end - start
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        outs.append((scores.softmax(-1) @ vs).transpose(0, 1))
    return torch.cat(outs) if outs else q.new_zeros(q.shape, dtype=torch.float64)


def reference_pool(q, k, v, cu_seqlens, softmax_scale) -> torch.Tensor:
    """Attention pooling in float64 (differentiable): ``[batch, heads, head_dim]``.

    ``q`` is ``[heads, head_dim]`` (shared) or ``[batch, heads, head_dim]``; an empty sample pools to 0.
    """
    bounds = cu_seqlens.tolist()
    rows = []
    for b, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        qb = (q if q.dim() == 2 else q[b]).double()  # [heads, d]
        if end == start:
            rows.append(qb * 0)
            continue
        kb, vb = k[start:end].double(), v[start:end].double()  # [n, heads, d]
        p = torch.softmax(torch.einsum("hd,nhd->hn", qb, kb) * softmax_scale, dim=-1)
        rows.append(torch.einsum("hn,nhd->hd", p, vb))
    if rows:
        return torch.stack(rows)
    return k.new_zeros((0, *k.shape[1:]), dtype=torch.float64)


def reference_mean(x, cu_seqlens) -> torch.Tensor:
    """Mean of each segment's tokens in float64; an empty segment gives 0."""
    bounds = cu_seqlens.tolist()
    rows = [x[a:b].double().mean(0) if b > a else x.new_zeros(x.shape[1:], dtype=torch.float64)
            for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.stack(rows) if rows else x.new_zeros((0, *x.shape[1:]), dtype=torch.float64)


def reference_patches(spec: torch.Tensor, p: int) -> torch.Tensor:
    """``[C, F, T] -> [(F/p)*(T/p), C*p*p]`` by unfold: frequency-major tokens; token ``(f, t)``
    holds ``spec[c, f*p + i, t*p + j]`` at column ``(c*p + i)*p + j``."""
    channels = spec.shape[0]
    windows = spec.unfold(1, p, p).unfold(2, p, p)  # [C, F/p, T/p, p (freq), p (time)]
    return windows.permute(1, 2, 0, 3, 4).reshape(-1, channels * p * p)
