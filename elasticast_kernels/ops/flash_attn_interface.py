"""flash-attn's Python interface on top of `varlen_attention`: ``flash_attn_func`` (dense
``[batch, seqlen, heads, head_dim]``) and ``flash_attn_varlen_func`` (packed), with flash-attn's
signatures and semantics.

A module exposing both names is what Hugging Face's hub-kernel path (and code written against
flash-attn) expects; transformers reads the signatures to decide which arguments to pass, so every
argument declared here is honoured or refused with ``NotImplementedError`` naming the feature
(dropout, ALiBi, ``return_attn_probs``, paged KV). Windows follow flash-attn exactly: a side at
least as long as the keys (``seqlen_k``; ``max_seqlen_k`` for varlen) is unbounded, and causal
sets the right side to 0.
"""
from __future__ import annotations

import operator

import torch

from elasticast_kernels.ops._validation import check_float_tensor
from elasticast_kernels.ops.varlen_attention import varlen_attention

__all__ = ["flash_attn_func", "flash_attn_varlen_func"]


def _refuse_unsupported(dropout_p: object, alibi_slopes: object, return_attn_probs: object,
                        block_table: object = None) -> None:
    if dropout_p != 0.0:
        raise NotImplementedError(f"dropout_p={dropout_p}: dropout inside attention is not supported (use 0.0)")
    if alibi_slopes is not None:
        raise NotImplementedError("alibi_slopes: ALiBi biases are not supported")
    if return_attn_probs:
        raise NotImplementedError("return_attn_probs=True is not supported")
    if block_table is not None:
        raise NotImplementedError("block_table: paged KV caches are not supported")


def _flash_window(window_size: object, seqlen_k: int | None) -> object:
    """flash-attn's rule: a window side of ``seqlen_k`` or more is unbounded (-1). Sides may be
    integer tensors, as flash-attn accepts (read on the host). Anything that is not a pair of
    integers is passed on for `varlen_attention` to reject with a clear message."""
    try:
        left, right = window_size  # type: ignore[misc]
        left, right = (side if isinstance(side, bool) else operator.index(side) for side in (left, right))
    except (TypeError, ValueError):
        return window_size
    if seqlen_k is None or isinstance(left, bool) or isinstance(right, bool):
        return (left, right)
    return tuple(-1 if side >= seqlen_k else side for side in (left, right))


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """Drop-in for ``flash_attn.flash_attn_varlen_func``.

    Args:
        q: ``(total_q, nheads, headdim)``; k, v: ``(total_k, nheads_k, headdim)`` with
            ``nheads % nheads_k == 0`` (MQA/GQA); headdim <= 256; float16/bfloat16/float32.
        cu_seqlens_q, cu_seqlens_k: int32 ``(batch + 1,)`` query and key offsets (cross-attention
            when they differ; pass the same tensor for self-attention).
        max_seqlen_q, max_seqlen_k: ints (upper bounds; hints for the kernels) or None.
            ``max_seqlen_k`` also bounds the window as in flash-attn (a side >= it is unbounded).
        dropout_p: must be 0.0 (no dropout inside attention).
        softmax_scale: default ``1 / sqrt(headdim)``.
        causal: causal mask aligned bottom-right within each sample.
        window_size: ``(left, right)`` sliding window; ``(-1, -1)`` is unbounded.
        softcap: tanh soft-capping of the scaled scores; 0.0 is off.
        alibi_slopes, return_attn_probs, block_table: only their defaults (None, False, None).
        deterministic: accepted; the kernels are always deterministic (no atomics).

    Returns:
        ``(total_q, nheads, headdim)``, dtype of q.

    Raises:
        NotImplementedError: dropout, ALiBi, attention probabilities or paged KV was asked for.
        TypeError / ValueError: bad inputs (see `varlen_attention`).
    """
    _refuse_unsupported(dropout_p, alibi_slopes, return_attn_probs, block_table)
    return varlen_attention(q, k, v, cu_seqlens_q, max_seqlen_q, softmax_scale, causal, cu_seqlens_k=cu_seqlens_k,
                            max_seqlen_k=max_seqlen_k, window_size=_flash_window(window_size, max_seqlen_k),
                            softcap=softcap)


def _dense_offsets(batch: int, seqlen: int, device: torch.device) -> torch.Tensor:
    """int32 ``[batch + 1]``: ``0, seqlen, 2 * seqlen, ...`` built on the device (no host copy, no sync)."""
    return torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device) if seqlen else \
        torch.zeros(batch + 1, dtype=torch.int32, device=device)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """Drop-in for ``flash_attn.flash_attn_func``: attention over equal-length sequences.

    Args:
        q: ``(batch, seqlen_q, nheads, headdim)``; k, v: ``(batch, seqlen_k, nheads_k, headdim)``
            with ``nheads % nheads_k == 0``; headdim <= 256; float16/bfloat16/float32.
        dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
            return_attn_probs: as `flash_attn_varlen_func` (a window side >= seqlen_k is unbounded).

    Returns:
        ``(batch, seqlen_q, nheads, headdim)``, dtype of q.

    The batch runs as one packed varlen call of ``batch`` equal-length samples (the offsets are
    built on the device, so there is no host sync).
    """
    _refuse_unsupported(dropout_p, alibi_slopes, return_attn_probs)
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(name, tensor, 4)
    batch, seqlen_q = q.shape[:2]
    seqlen_k = k.shape[1]
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(f"q, k and v must have the same batch size, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    cu_seqlens_q = _dense_offsets(batch, seqlen_q, q.device)
    cu_seqlens_k = cu_seqlens_q if seqlen_k == seqlen_q else _dense_offsets(batch, seqlen_k, q.device)
    out = varlen_attention(q.reshape(batch * seqlen_q, *q.shape[2:]), k.reshape(batch * seqlen_k, *k.shape[2:]),
                           v.reshape(batch * seqlen_k, *v.shape[2:]), cu_seqlens_q, seqlen_q, softmax_scale, causal,
                           cu_seqlens_k=cu_seqlens_k, max_seqlen_k=seqlen_k,
                           window_size=_flash_window(window_size, seqlen_k), softcap=softcap)
    return out.view(batch, seqlen_q, *out.shape[1:])
