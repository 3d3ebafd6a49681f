"""Test helpers shared by the test files: offsets, float64 references and one tolerance rule.

The references are deliberately plain (one sample at a time, float64, autograd for gradients) so
they can be trusted at a glance.
"""
from __future__ import annotations

from typing import Sequence

import pytest
import torch


#: The GPU accuracy tests' dtypes (bf16 is wrong in the interpreter, so these run on a GPU only).
half_dtypes = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])


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


def visible_keys(seqlen_q: int, seqlen_k: int, causal: bool = False, window: tuple[int, int] = (-1, -1),
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """bool ``[seqlen_q, seqlen_k]``: which keys each query of one sample may see (flash-attn's rule).

    Query ``i`` is aligned with key ``i + seqlen_k - seqlen_q`` (bottom-right). ``causal`` is the
    window ``(left, 0)``; ``window = (left, right)`` lets query ``i`` see keys
    ``[i + seqlen_k - seqlen_q - left, i + seqlen_k - seqlen_q + right]``, ``-1`` meaning unbounded.
    """
    left, right = window
    if causal:
        right = 0
    rows = torch.arange(seqlen_q, device=device)[:, None] + (seqlen_k - seqlen_q)
    cols = torch.arange(seqlen_k, device=device)[None, :]
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if right >= 0:
        visible &= cols <= rows + right
    if left >= 0:
        visible &= cols >= rows - left
    return visible


def reference_attention(q, k, v, cu_seqlens, softmax_scale, causal=False, *, cu_seqlens_k=None,
                        window=(-1, -1), softcap=0.0) -> torch.Tensor:
    """Per-sample softmax attention in float64 (differentiable): ``[total_q, heads, head_dim]``.

    flash-attn's semantics: ``k``/``v`` may have fewer heads (``heads % heads_k == 0``, query head
    ``h`` reads key head ``h // (heads // heads_k)``); ``cu_seqlens_k`` (default: ``cu_seqlens``)
    gives the keys of each sample (cross-attention); ``causal``/``window`` as `visible_keys`;
    ``softcap > 0`` replaces the scaled scores ``s`` by ``softcap * tanh(s / softcap)``. A query
    that sees no key at all (a window or a causal mask past the keys, or no keys) gives 0.
    """
    bounds_q = cu_seqlens.tolist()
    bounds_k = bounds_q if cu_seqlens_k is None else cu_seqlens_k.tolist()
    group = q.shape[1] // k.shape[1]
    outs = []
    for (q0, q1), (k0, k1) in zip(zip(bounds_q[:-1], bounds_q[1:]), zip(bounds_k[:-1], bounds_k[1:])):
        qs = q[q0:q1].double().transpose(0, 1)  # [heads, n_q, d]
        ks, vs = (t[k0:k1].double().repeat_interleave(group, dim=1).transpose(0, 1) for t in (k, v))
        scores = qs @ ks.transpose(-1, -2) * softmax_scale
        if softcap > 0:
            scores = softcap * torch.tanh(scores / softcap)
        visible = visible_keys(q1 - q0, k1 - k0, causal, window, q.device)
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        probs = probs.masked_fill(~visible.any(-1, keepdim=True), 0.0)  # rows that see nothing: 0, not NaN
        outs.append((probs @ vs).transpose(0, 1))
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
