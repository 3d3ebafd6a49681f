"""Float64 reference for varlen self-attention (pad every sample, mask, softmax), used by the
varlen attention tests, and a check of the reference itself against per-sample SDPA."""
from __future__ import annotations

import torch


def reference_varlen_attention(q, k, v, cu_seqlens, softmax_scale, causal=False):
    """Padded-and-masked attention in float64 (differentiable). q, k, v [total, heads, dim]."""
    lengths = cu_seqlens.diff().tolist()
    batch, longest = len(lengths), max(lengths, default=0)
    total, heads, dim = q.shape
    # token t of sample b goes to padded position (b, t - cu_seqlens[b])
    sample = torch.repeat_interleave(torch.arange(batch), torch.tensor(lengths, dtype=torch.long))
    position = torch.arange(total) - cu_seqlens[:-1].long().repeat_interleave(torch.tensor(lengths, dtype=torch.long))

    def pad(x):
        padded = x.new_zeros((batch, longest, heads, dim), dtype=torch.float64)
        return padded.index_put((sample, position), x.double())

    qp, kp, vp = pad(q), pad(k), pad(v)
    scores = torch.einsum("bqhd,bkhd->bhqk", qp, kp) * softmax_scale
    key_ok = torch.arange(longest)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]  # [batch, key]
    mask = key_ok[:, None, None, :]
    if causal:
        mask = mask & torch.ones(longest, longest, dtype=torch.bool).tril()
    # a finite fill keeps fully masked rows (padding of empty samples) free of NaN
    scores = scores.masked_fill(~mask, torch.finfo(torch.float64).min)
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), vp)
    return out[sample, position]


def cu_seqlens_of(lengths, device="cpu"):
    """int32 cumulative offsets [batch + 1] of a list of sample lengths."""
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    return torch.tensor(offsets, dtype=torch.int32, device=device)


def test_reference_matches_per_sample_sdpa():
    """The reference itself, against torch SDPA run on each sample separately (float64)."""
    lengths = [3, 0, 7, 1]
    cu_seqlens = cu_seqlens_of(lengths)
    q, k, v = (torch.randn(11, 2, 8, dtype=torch.float64) for _ in range(3))
    for causal in (False, True):
        out = reference_varlen_attention(q, k, v, cu_seqlens, 0.5, causal)
        for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
            if end == start:
                continue
            expected = torch.nn.functional.scaled_dot_product_attention(
                *(x[start:end].transpose(0, 1) for x in (q, k, v)), is_causal=causal, scale=0.5
            ).transpose(0, 1)
            assert torch.allclose(out[start:end], expected), (causal, start, end)
    assert out.shape == q.shape
