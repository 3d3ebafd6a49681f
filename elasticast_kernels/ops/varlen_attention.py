"""Varlen self-attention on the packed layout: public API, torch.library ops and autograd.

``varlen_attention`` attends within each sample of a packed sequence (``cu_seqlens`` marks the
samples) without padding or a mask tensor; ``flash_attn_varlen_func`` is the same op behind
flash-attn's signature. CUDA tensors run the Triton kernels (``varlen_attention_kernels.py``);
CPU tensors run a plain torch implementation (``varlen_attention_torch.py``), except under
``TRITON_INTERPRET=1``, where they run the Triton kernels in the interpreter (how the kernels are
tested without a GPU; bf16 CPU tensors take the torch path even then, see ``ops._common``).

Both directions are ``torch.library.custom_op``s with fake implementations, so
``torch.compile(fullgraph=True)`` traces them as single opaque nodes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from elasticast_kernels.ops._common import longest_first, lse_columns, on_device, use_triton
from elasticast_kernels.ops._validation import (
    check_cu_seqlens,
    check_float_tensor,
    check_max_seqlen,
    check_same,
    resolve_softmax_scale,
)
from elasticast_kernels.ops.varlen_attention_torch import (
    varlen_attention_backward_torch,
    varlen_attention_forward_torch,
)

# head_dim values the kernels are compiled for; smaller ones are zero-padded to the next of these
ATTENTION_HEAD_DIMS = (32, 64, 128)
ATTENTION_MAX_HEAD_DIM = ATTENTION_HEAD_DIMS[-1]

__all__ = ["varlen_attention", "flash_attn_varlen_func", "ATTENTION_HEAD_DIMS", "ATTENTION_MAX_HEAD_DIM"]


# --- torch.library ops --------------------------------------------------------------------------


@torch.library.custom_op("elasticast_kernels::varlen_attention_fwd", mutates_args=())
def _varlen_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                          seq_hint: int, softmax_scale: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (out [total, heads, head_dim] dtype of q, lse2 [heads, lse_columns(total)] fp32). Inputs validated."""
    if use_triton(q):
        from elasticast_kernels.ops.varlen_attention_kernels import varlen_attention_forward

        with on_device(q):
            schedule = longest_first(cu_seqlens)
            return varlen_attention_forward(q, k, v, cu_seqlens, cu_seqlens, schedule, seq_hint, softmax_scale, causal,
                                            (-1, 0 if causal else -1), 0.0)
    return varlen_attention_forward_torch(q, k, v, cu_seqlens, softmax_scale, causal)


@_varlen_attention_fwd.register_fake
def _(q, k, v, cu_seqlens, seq_hint, softmax_scale, causal):
    total, heads, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((heads, lse_columns(total)), dtype=torch.float32)


@torch.library.custom_op("elasticast_kernels::varlen_attention_bwd", mutates_args=())
def _varlen_attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          out: torch.Tensor, lse: torch.Tensor, cu_seqlens: torch.Tensor, seq_hint: int,
                          softmax_scale: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dq, dk, dv), shaped and typed like q, k, v."""
    if use_triton(q):
        from elasticast_kernels.ops.varlen_attention_kernels import varlen_attention_backward

        with on_device(q):
            schedule = longest_first(cu_seqlens)
            return varlen_attention_backward(dout, q, k, v, out, lse, cu_seqlens, cu_seqlens, schedule, schedule,
                                             seq_hint, softmax_scale, causal, (-1, 0 if causal else -1), 0.0)
    return varlen_attention_backward_torch(dout, q, k, v, out, lse, cu_seqlens, softmax_scale, causal)


@_varlen_attention_bwd.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens, seq_hint, softmax_scale, causal):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, seq_hint, softmax_scale, causal = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.mark_non_differentiable(lse)  # internal output: no zero gradient is allocated for it
    ctx.seq_hint, ctx.softmax_scale, ctx.causal = seq_hint, softmax_scale, causal


def _backward(ctx, dout, dlse):
    # the log-sum-exp is an internal output (never returned to users): its gradient is ignored
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = _varlen_attention_bwd(dout, q, k, v, out, lse, cu_seqlens, ctx.seq_hint, ctx.softmax_scale,
                                       ctx.causal)
    return dq, dk, dv, None, None, None, None


_varlen_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# --- public API ---------------------------------------------------------------------------------


def _validate_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: object) -> tuple[int | None, torch.Tensor]:
    """Check the inputs once, at the public boundary; returns ``(max_seqlen, cu_seqlens)``, the latter contiguous."""
    check_float_tensor("q", q, 3)
    check_float_tensor("k", k, 3)
    check_float_tensor("v", v, 3)
    check_same("k", k, "q", q)
    check_same("v", v, "q", q)
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            "q, k and v must have the same shape [total_tokens, heads, head_dim] (no cross-attention or "
            f"grouped heads), got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    head_dim = q.shape[-1]
    if not 1 <= head_dim <= ATTENTION_MAX_HEAD_DIM:
        raise ValueError(f"head_dim (q.shape[-1]) must be between 1 and {ATTENTION_MAX_HEAD_DIM}, got {head_dim}")
    max_seqlen = check_max_seqlen(max_seqlen)
    # The kernels never need max_seqlen (the grid comes from tensor shapes), so a missing one costs
    # no sync; cu_seqlens values are checked where that is free (CPU) and never on CUDA.
    # the kernels read cu_seqlens with unit stride
    return max_seqlen, check_cu_seqlens(cu_seqlens, q.shape[0], q.device).contiguous()


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int | None = None, softmax_scale: float | None = None,
                     causal: bool = False) -> torch.Tensor:
    """Self-attention within each sample of a packed sequence.

    Args:
        q, k, v: ``(total_tokens, heads, head_dim)``, float16/bfloat16/float32, same dtype and
            device. ``head_dim`` <= 128: 32, 64 and 128 run as they are, other sizes are
            zero-padded to the next of them (a copy; results are exact).
        cu_seqlens: int32 ``(batch + 1,)`` on the same device: sample ``b`` is tokens
            ``cu_seqlens[b]:cu_seqlens[b + 1]``; starts at 0, non-decreasing, ends at
            ``total_tokens``. Empty samples are allowed.
        max_seqlen: longest sample (Python int), optional. The kernels do not need it (they
            never sync with the host); it only picks the autotuning bucket, which otherwise
            comes from the mean length ``total_tokens // batch``.
        softmax_scale: multiplies ``q @ k^T`` before the softmax; ``None`` means
            ``1 / sqrt(head_dim)`` (of the unpadded head_dim). ElasticAST uses 1.0.
        causal: mask keys after the query, within each sample.

    Returns:
        ``(total_tokens, heads, head_dim)`` in the dtype of ``q``. Differentiable in q, k, v.

    Raises:
        TypeError: a tensor argument is not a tensor.
        ValueError: bad dtype, shape, device or head_dim (the message names the argument);
            ``cu_seqlens`` not int32 / not 1-D / on another device; on CPU also when its
            values are not a valid partition of ``total_tokens``. On CUDA the values are not
            checked (that needs a device sync): invalid values give undefined results.
    """
    max_seqlen, cu_seqlens = _validate_varlen(q, k, v, cu_seqlens, max_seqlen)
    scale = resolve_softmax_scale(softmax_scale, q.shape[-1])
    total_tokens, batch = q.shape[0], cu_seqlens.shape[0] - 1
    seq_hint = max_seqlen if max_seqlen is not None else total_tokens // max(batch, 1)

    # the kernels read rows with unit stride on head_dim (any token/head strides are fine) and
    # exist for a few head_dims; both adjustments are no-ops in the common case and also harmless
    # on the torch path, which keeps device checks out of the traced part of the op
    # (tile offsets are int32: a token stride past 2^24 elements is copied to a compact layout)
    q, k, v = (x if x.stride(-1) == 1 and x.stride(0) < 2**24 else x.contiguous() for x in (q, k, v))
    head_dim = q.shape[-1]
    kernel_head_dim = next(d for d in ATTENTION_HEAD_DIMS if d >= head_dim)
    if kernel_head_dim != head_dim:
        # zero columns add nothing to q.k and give zero output columns, sliced off below
        q, k, v = (F.pad(x, (0, kernel_head_dim - head_dim)) for x in (q, k, v))
    out, _ = _varlen_attention_fwd(q, k, v, cu_seqlens, seq_hint, scale, bool(causal))
    if kernel_head_dim != head_dim:
        out = out[..., :head_dim]
    return out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """Drop-in for ``flash_attn.flash_attn_varlen_func`` (self-attention subset).

    Args:
        q, k, v: ``(total, nheads, headdim)``; k/v with the same number of tokens and heads as
            q (no grouped-query attention), headdim <= 128.
        cu_seqlens_q, cu_seqlens_k: int32 ``(batch + 1,)``; they must be equal (self-attention
            within each sample). Pass the same tensor for both: that is free. Two different CUDA
            tensors are compared on the device, which costs one host sync per call (skipped
            under torch.compile).
        max_seqlen_q, max_seqlen_k: ints, equal (used only to pick an autotuning bucket).
        dropout_p: must be 0.0 (no dropout inside attention).
        softmax_scale: default ``1 / sqrt(headdim)``.
        causal: causal mask within each sample.
        window_size, softcap, alibi_slopes, return_attn_probs, block_table: only their defaults
            (``(-1, -1)``, 0.0, None, False, None) are supported.
        deterministic: accepted; the kernels are always deterministic (no atomics).

    Returns:
        ``(total, nheads, headdim)``, dtype of q.

    Raises:
        NotImplementedError: an unsupported feature was asked for (dropout, sliding window,
            softcap, ALiBi, attention probabilities, paged KV).
        ValueError: unequal q/k lengths or bad inputs (see ``varlen_attention``).
    """
    if dropout_p != 0.0:
        raise NotImplementedError(f"dropout_p={dropout_p}: dropout inside attention is not supported (use 0.0)")
    if tuple(window_size) != (-1, -1):
        raise NotImplementedError(f"window_size={window_size}: sliding-window attention is not supported")
    if softcap != 0.0:
        raise NotImplementedError(f"softcap={softcap}: logit soft-capping is not supported")
    if alibi_slopes is not None:
        raise NotImplementedError("alibi_slopes: ALiBi biases are not supported")
    if return_attn_probs:
        raise NotImplementedError("return_attn_probs=True is not supported")
    if block_table is not None:
        raise NotImplementedError("block_table: paged KV caches are not supported")
    if isinstance(max_seqlen_q, int) and isinstance(max_seqlen_k, int) and max_seqlen_q != max_seqlen_k:
        raise ValueError(f"max_seqlen_q={max_seqlen_q} and max_seqlen_k={max_seqlen_k} must be equal "
                         "(self-attention within each sample)")
    _check_same_cu_seqlens(cu_seqlens_q, cu_seqlens_k)
    return varlen_attention(q, k, v, cu_seqlens_q, max_seqlen=max_seqlen_q, softmax_scale=softmax_scale,
                            causal=causal)


def _check_same_cu_seqlens(cu_seqlens_q: object, cu_seqlens_k: object) -> None:
    if cu_seqlens_q is cu_seqlens_k:
        return
    if not isinstance(cu_seqlens_q, torch.Tensor) or not isinstance(cu_seqlens_k, torch.Tensor):
        raise TypeError("cu_seqlens_q and cu_seqlens_k must be torch.Tensors")
    if cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.device != cu_seqlens_k.device:
        raise ValueError(
            f"cu_seqlens_k (shape {tuple(cu_seqlens_k.shape)}, {cu_seqlens_k.device}) must equal cu_seqlens_q "
            f"(shape {tuple(cu_seqlens_q.shape)}, {cu_seqlens_q.device}): only self-attention is supported"
        )
    if torch.compiler.is_compiling():
        return
    if not torch.equal(cu_seqlens_q, cu_seqlens_k):  # one host sync on CUDA; free on CPU
        raise ValueError("cu_seqlens_k must equal cu_seqlens_q: only self-attention (equal q/k lengths) is supported")
