"""Plain-torch segment pooling: the CPU path when the Triton kernels do not run.

Same contract as the launchers in ``segment_pool_kernels.py``, so the custom ops in
``segment_pool.py`` treat both alike: the attention-pooling forward returns ``out`` in k's dtype
and the base-2 log-sum-exp ``lse2 [batch, heads]`` fp32 with the softmax scale folded in; the
backward recomputes the probabilities from it. Vectorised over the packed tokens: segment ids from
``cu_seqlens``, then scatter reductions in fp32. A sample is empty when its length is 0 (never
judged from its softmax sum, which is NaN when a score is), so non-finite inputs give that sample
a non-finite output and stay out of every other sample.
"""
from __future__ import annotations

import math

import torch

from elasticast_kernels.layout import segment_ids
from elasticast_kernels.ops._common import LOG2E

__all__ = [
    "segment_attention_pool_forward_torch", "segment_attention_pool_backward_torch",
    "segment_mean_forward_torch", "segment_mean_backward_torch",
]


def _per_token_query(q: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(heads, d) or (batch, heads, d) -> (total_tokens, heads, d), fp32."""
    q = q.float()
    return q.unsqueeze(0).expand(ids.numel(), *q.shape) if q.dim() == 2 else q[ids]


def _scores2(q, k, ids, softmax_scale) -> torch.Tensor:
    """Scores in the base-2 domain, ``scale * log2(e) * q.k`` per (token, head), fp32."""
    return (k.float() * _per_token_query(q, ids)).sum(-1) * (softmax_scale * LOG2E)


def segment_attention_pool_forward_torch(q, k, v, cu_seqlens, softmax_scale):
    """``(out [batch, heads, head_dim] in k's dtype, lse2 [batch, heads] fp32)``."""
    total_tokens, heads, head_dim = k.shape
    batch = cu_seqlens.shape[0] - 1
    ids = segment_ids(cu_seqlens, total_tokens)
    scores = _scores2(q, k, ids, softmax_scale)  # (tokens, heads)
    seg_max = scores.new_full((batch, heads), -math.inf)
    seg_max = seg_max.scatter_reduce(0, ids[:, None].expand_as(scores), scores, "amax", include_self=True)
    nonempty = (cu_seqlens[1:] > cu_seqlens[:-1])[:, None]  # (batch, 1)
    # exp2(score - max); an empty sample has no token, so its -inf max is never subtracted
    p = torch.exp2(scores - seg_max[ids])
    denom = scores.new_zeros((batch, heads)).index_add_(0, ids, p)
    acc = scores.new_zeros((batch, heads, head_dim)).index_add_(0, ids, p[..., None] * v.float())
    out = torch.where(nonempty[..., None], acc / torch.where(nonempty, denom, 1.0)[..., None], 0.0)
    lse2 = torch.where(nonempty, seg_max + torch.log2(torch.where(nonempty, denom, 1.0)), -math.inf)
    return out.to(k.dtype), lse2


def segment_attention_pool_backward_torch(dout, q, k, v, lse2, cu_seqlens, softmax_scale):
    """``(dq, dk, dv)`` shaped like ``q, k, v``."""
    total_tokens = k.shape[0]
    ids = segment_ids(cu_seqlens, total_tokens)
    qf, kf, vf, dof = q.float(), k.float(), v.float(), dout.float()
    p = torch.exp2(_scores2(q, k, ids, softmax_scale) - lse2[ids])  # (tokens, heads)
    dp = (vf * dof[ids]).sum(-1)
    # delta_b = sum_t p_t dp_t = dout_b . out_b (exact form, no rounding of out involved)
    delta = torch.zeros_like(lse2).index_add_(0, ids, p * dp)
    ds = p * (dp - delta[ids])
    dv = p[..., None] * dof[ids]
    dk = (ds * softmax_scale)[..., None] * _per_token_query(q, ids)
    dq_tok = (ds * softmax_scale)[..., None] * kf
    dq = dq_tok.sum(0) if q.dim() == 2 else torch.zeros_like(qf).index_add_(0, ids, dq_tok)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _counts(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Tokens per segment as fp32, at least 1 (an empty segment's mean is 0, not 0/0)."""
    return (cu_seqlens[1:] - cu_seqlens[:-1]).clamp_min(1).to(torch.float32)


def segment_mean_forward_torch(x, cu_seqlens):
    """``x [total_tokens, width]`` -> ``[batch, width]`` in x's dtype (fp32 sums)."""
    batch = cu_seqlens.shape[0] - 1
    ids = segment_ids(cu_seqlens, x.shape[0])
    sums = x.new_zeros((batch, x.shape[1]), dtype=torch.float32).index_add_(0, ids, x.float())
    return (sums / _counts(cu_seqlens)[:, None]).to(x.dtype)


def segment_mean_backward_torch(dout, cu_seqlens, total_tokens):
    """``dout [batch, width]`` -> ``dx [total_tokens, width]``: each token gets ``dout / len``."""
    ids = segment_ids(cu_seqlens, total_tokens)
    return (dout.float() / _counts(cu_seqlens)[:, None])[ids].to(dout.dtype)
