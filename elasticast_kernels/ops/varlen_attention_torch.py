"""Plain-torch varlen self-attention: the CPU path when the Triton kernels do not run.

Same contract as the kernels in ``varlen_attention_kernels.py`` (so the autograd glue is shared):
``forward`` returns ``out`` [total, heads, head_dim] in the input dtype and the log-sum-exp
``lse2`` [heads, lse_columns(total)] fp32 in the base-2 domain with the softmax scale folded in
(the row length is padded to a multiple of 16 so the kernels' row loads stay aligned);
``backward`` recomputes the probabilities from it. Work runs per sample (``cu_seqlens`` is on the
CPU, so reading it is free) in fp32, in chunks of query rows so memory stays
``O(heads * CHUNK * len)`` rather than quadratic in the longest sample.
"""
from __future__ import annotations

import torch

from elasticast_kernels.ops._common import LOG2E, lse_columns

_QUERY_CHUNK = 512


def _samples(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    bounds = cu_seqlens.tolist()
    return [(start, end) for start, end in zip(bounds[:-1], bounds[1:]) if end > start]


def _scores(q_chunk: torch.Tensor, k_seq: torch.Tensor, softmax_scale: float, causal: bool, row0: int) -> torch.Tensor:
    """Scaled scores [heads, chunk, len] (fp32) with future keys at -inf when causal."""
    scores = torch.matmul(q_chunk, k_seq.transpose(1, 2)) * softmax_scale
    if causal:
        rows = torch.arange(row0, row0 + q_chunk.shape[1], device=scores.device)[:, None]
        cols = torch.arange(k_seq.shape[1], device=scores.device)[None, :]
        scores = scores.masked_fill(cols > rows, float("-inf"))
    return scores


def _heads_first(x: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Tokens ``start:end`` of a [total, heads, dim] tensor as fp32 [heads, len, dim]."""
    return x[start:end].transpose(0, 1).float()


def varlen_attention_forward_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                                   softmax_scale: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference-quality forward: ``out`` [total, heads, head_dim] (dtype of q), ``lse2`` [heads, lse_columns(total)] fp32."""
    total, heads, head_dim = q.shape
    out = torch.zeros((total, heads, head_dim), dtype=q.dtype, device=q.device)
    lse2 = torch.zeros((heads, lse_columns(total)), dtype=torch.float32, device=q.device)
    for start, end in _samples(cu_seqlens):
        q_seq, k_seq, v_seq = (_heads_first(x, start, end) for x in (q, k, v))
        for row0 in range(0, end - start, _QUERY_CHUNK):
            row1 = min(row0 + _QUERY_CHUNK, end - start)
            scores = _scores(q_seq[:, row0:row1], k_seq, softmax_scale, causal, row0)
            lse = torch.logsumexp(scores, dim=-1)
            probs = torch.exp(scores - lse[..., None])
            out[start + row0:start + row1] = torch.matmul(probs, v_seq).transpose(0, 1).to(q.dtype)
            lse2[:, start + row0:start + row1] = lse * LOG2E
    return out, lse2


def varlen_attention_backward_torch(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                    out: torch.Tensor, lse2: torch.Tensor, cu_seqlens: torch.Tensor,
                                    softmax_scale: float, causal: bool
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``dq, dk, dv`` (dtypes of q, k, v) from the saved ``out`` and ``lse2``."""
    dq = torch.zeros_like(q, memory_format=torch.contiguous_format)
    dk = torch.zeros_like(k, memory_format=torch.contiguous_format)
    dv = torch.zeros_like(v, memory_format=torch.contiguous_format)
    # delta = rowsum(dout * out): the term the softmax Jacobian subtracts, [heads, total]
    delta = (dout.float() * out.float()).sum(-1).transpose(0, 1)
    lse = lse2 / LOG2E
    for start, end in _samples(cu_seqlens):
        q_seq, k_seq, v_seq, do_seq = (_heads_first(x, start, end) for x in (q, k, v, dout))
        dk_seq = torch.zeros_like(k_seq)
        dv_seq = torch.zeros_like(v_seq)
        for row0 in range(0, end - start, _QUERY_CHUNK):
            row1 = min(row0 + _QUERY_CHUNK, end - start)
            rows = slice(start + row0, start + row1)
            scores = _scores(q_seq[:, row0:row1], k_seq, softmax_scale, causal, row0)
            probs = torch.exp(scores - lse[:, rows, None])
            dprobs = torch.matmul(do_seq[:, row0:row1], v_seq.transpose(1, 2))
            dscores = probs * (dprobs - delta[:, rows, None])
            dq[rows] = (torch.matmul(dscores, k_seq) * softmax_scale).transpose(0, 1).to(dq.dtype)
            dk_seq += torch.matmul(dscores.transpose(1, 2), q_seq[:, row0:row1]) * softmax_scale
            dv_seq += torch.matmul(probs.transpose(1, 2), do_seq[:, row0:row1])
        dk[start:end] = dk_seq.transpose(0, 1).to(dk.dtype)
        dv[start:end] = dv_seq.transpose(0, 1).to(dv.dtype)
    return dq, dk, dv
