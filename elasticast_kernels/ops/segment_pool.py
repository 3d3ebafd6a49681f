"""Pooling over packed segments: attention pooling (ElasticAST's head) and mean pooling.

Public functions:

- ``segment_attention_pool(q, k, v, cu_seqlens, max_seqlen=None, softmax_scale=None)``: for
  every sample ``b`` and head ``h``, ``softmax(scale * k_b q) @ v_b`` over that sample's tokens.
- ``segment_mean(x, cu_seqlens, max_seqlen=None)``: the mean of each sample's tokens.

Same shape as ``varlen_attention.py``: this module holds the public API and the
``torch.library`` custom ops (forward and backward ops, autograd registered on the forward op), so
autograd and ``torch.compile(fullgraph=True)`` see each op as a single node. Where the Triton
kernels run (``ops._common.use_triton``) the ops call the launchers of ``segment_pool_kernels``;
elsewhere the torch path of ``segment_pool_torch`` (it reads ``cu_seqlens``, free on the CPU).

Non-finite inputs: a NaN/inf among a sample's tokens (or in its query) makes that sample's output
non-finite, on every path, and never reaches another sample.
"""
from __future__ import annotations

import math
from types import ModuleType

import torch

from elasticast_kernels.ops._common import MAX_ROW_STRIDE, on_device, use_triton
from elasticast_kernels.ops._validation import (
    check_cu_seqlens,
    check_float_tensor,
    check_max_seqlen,
    check_same,
    resolve_softmax_scale,
)
from elasticast_kernels.ops.segment_pool_torch import (
    segment_attention_pool_backward_torch,
    segment_attention_pool_forward_torch,
    segment_mean_backward_torch,
    segment_mean_forward_torch,
)

__all__ = ["segment_attention_pool", "segment_mean", "POOL_MAX_HEAD_DIM"]

POOL_MAX_HEAD_DIM = 256  # the kernels hold a [BLOCK_N, head_dim] tile in registers

# --- public API ---------------------------------------------------------------------------------


def segment_attention_pool(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Attention pooling of each packed sample: one query attends over that sample's tokens only.

    Args:
        q: ``(heads, head_dim)``, one query shared by every sample (ElasticAST), or
            ``(batch, heads, head_dim)``, one query per sample. Same dtype and device as ``k``.
        k, v: ``(total_tokens, heads, head_dim)``, float16, bfloat16 or float32, samples packed
            one after another. Strided views are fine as long as the last dim is contiguous
            (e.g. the halves of a fused ``to_kv`` projection).
        cu_seqlens: int32 ``(batch + 1,)`` on the device of ``k``: sample ``b`` owns tokens
            ``cu_seqlens[b]:cu_seqlens[b + 1]``. A sample may be empty: its output is zeros.
        max_seqlen: the longest sample, or None. The kernels do not need it (their grid comes from
            shapes), so leaving it out costs no device->host sync. The values of ``cu_seqlens``
            are checked on the CPU only (reading them on CUDA would be a sync).
        softmax_scale: multiplies the scores; None means ``1 / sqrt(head_dim)``. ElasticAST uses
            1.0 (unscaled scores); the softmax is computed in fp32 either way.

    Returns:
        ``(batch, heads, head_dim)`` in the order of ``cu_seqlens``, dtype of ``k``. Differentiable
        in ``q``, ``k`` and ``v`` (a shared query gets its gradient summed over samples).

    Raises:
        TypeError: an argument is not a tensor.
        ValueError: wrong dtype, shape or device, ``head_dim > 256``, a bad ``cu_seqlens`` or
            ``max_seqlen``, or a non-finite ``softmax_scale``; the message names the argument.
    """
    k = check_float_tensor("k", k, 3)
    v = check_float_tensor("v", v, 3)
    check_same("v", v, "k", k)
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    total_tokens, heads, head_dim = k.shape
    if not 1 <= head_dim <= POOL_MAX_HEAD_DIM:
        raise ValueError(f"k's head_dim must be in [1, {POOL_MAX_HEAD_DIM}], got {head_dim}")
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.dim() not in (2, 3):
        raise ValueError(
            f"q must be (heads, head_dim)={(heads, head_dim)} (one query for all samples) or "
            f"(batch, heads, head_dim) (one per sample), got shape {tuple(q.shape)}"
        )
    q = check_float_tensor("q", q, q.dim())
    check_same("q", q, "k", k)
    max_seqlen = check_max_seqlen(max_seqlen)
    cu_seqlens = check_cu_seqlens(cu_seqlens, total_tokens, k.device).contiguous()
    batch = cu_seqlens.shape[0] - 1
    expected = (heads, head_dim) if q.dim() == 2 else (batch, heads, head_dim)
    if tuple(q.shape) != expected:
        raise ValueError(
            f"q must have shape (heads, head_dim)={(heads, head_dim)} or "
            f"(batch, heads, head_dim)={(batch, heads, head_dim)}, got {tuple(q.shape)}"
        )
    scale = resolve_softmax_scale(softmax_scale, head_dim)
    # The kernels need a unit stride along head_dim only.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out, _ = _pool_forward_op(q, k, v, cu_seqlens, scale)
    return out


def segment_mean(x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int | None = None) -> torch.Tensor:
    """Mean of each packed sample's tokens.

    Args:
        x: ``(total_tokens, *features)``, float16, bfloat16 or float32.
        cu_seqlens: int32 ``(batch + 1,)`` on the device of ``x``. An empty sample's mean is zeros.
        max_seqlen: the longest sample, or None; accepted for API symmetry (not needed, no sync).

    Returns:
        ``(batch, *features)``, dtype of ``x`` (accumulated in fp32). Differentiable in ``x``.

    Raises:
        TypeError / ValueError: as ``segment_attention_pool``, naming the argument.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dimension (tokens), got a 0-d tensor")
    x = check_float_tensor("x", x, x.dim())
    max_seqlen = check_max_seqlen(max_seqlen)
    cu_seqlens = check_cu_seqlens(cu_seqlens, x.shape[0], x.device).contiguous()
    features = x.shape[1:]
    flat = x.reshape(x.shape[0], math.prod(features))
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    return _segment_mean_op(flat, cu_seqlens).reshape(cu_seqlens.shape[0] - 1, *features)


def _kernels(*tensors: torch.Tensor) -> ModuleType | None:
    """The Triton launchers when they run for these tensors (``use_triton``), else None (torch path).

    Rows of ``MAX_ROW_STRIDE`` elements or more (a huge ``segment_mean`` row, far beyond any
    attention layout; a copy cannot shrink them) would overflow the kernels' int32 tile offsets:
    they take the torch path.
    """
    if not use_triton(tensors[0]) or any(t.dim() > 0 and t.stride(0) >= MAX_ROW_STRIDE for t in tensors):
        return None
    from elasticast_kernels.ops import segment_pool_kernels

    return segment_pool_kernels


# --- custom ops: attention pooling --------------------------------------------------------------


@torch.library.custom_op("elasticast_kernels::segment_attention_pool_fwd", mutates_args=())
def _pool_forward_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, softmax_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(out (batch, heads, head_dim) in k's dtype, lse2 (batch, heads) fp32)``.

    ``lse2`` is the base-2 log-sum-exp with the scale folded in (-inf for an empty sample), the
    layout ``segment_pool_kernels`` defines.
    """
    kernels = _kernels(k, v)
    if kernels is not None:
        with on_device(k):
            return kernels.segment_attention_pool_forward(q, k, v, cu_seqlens, softmax_scale)
    return segment_attention_pool_forward_torch(q, k, v, cu_seqlens, softmax_scale)


@_pool_forward_op.register_fake
def _(q, k, v, cu_seqlens, softmax_scale):
    batch = cu_seqlens.shape[0] - 1
    _, heads, head_dim = k.shape
    return k.new_empty((batch, heads, head_dim)), k.new_empty((batch, heads), dtype=torch.float32)


@torch.library.custom_op("elasticast_kernels::segment_attention_pool_bwd", mutates_args=())
def _pool_backward_op(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(dq, dk, dv)`` shaped and typed like ``q``, ``k``, ``v`` (contiguous)."""
    kernels = _kernels(k, v)  # dk and dv are dense: their rows are no wider than k's
    if kernels is not None:
        with on_device(k):
            return kernels.segment_attention_pool_backward(dout, q, k, v, out, lse, cu_seqlens, softmax_scale)
    return segment_attention_pool_backward_torch(dout, q, k, v, lse, cu_seqlens, softmax_scale)


@_pool_backward_op.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens, softmax_scale):
    # Contiguous, like the real op (k and v are often strided views of a fused projection).
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _pool_setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, softmax_scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.mark_non_differentiable(lse)  # internal output: no zero gradient is allocated for it
    ctx.softmax_scale = softmax_scale


def _pool_backward(ctx, dout, _dlse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    # dout may be an expanded/strided view from the caller's graph; the kernel wants dense rows.
    dq, dk, dv = _pool_backward_op(dout.contiguous(), q, k, v, out, lse, cu_seqlens, ctx.softmax_scale)
    return dq, dk, dv, None, None


_pool_forward_op.register_autograd(_pool_backward, setup_context=_pool_setup_context)


# --- custom ops: mean ---------------------------------------------------------------------------


@torch.library.custom_op("elasticast_kernels::segment_mean_fwd", mutates_args=())
def _segment_mean_op(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``x`` ``(total_tokens, width)`` -> ``(batch, width)`` in x's dtype."""
    kernels = _kernels(x)
    if kernels is not None:
        with on_device(x):
            return kernels.segment_mean_forward(x, cu_seqlens)
    return segment_mean_forward_torch(x, cu_seqlens)


@_segment_mean_op.register_fake
def _(x, cu_seqlens):
    return x.new_empty((cu_seqlens.shape[0] - 1, x.shape[1]))


@torch.library.custom_op("elasticast_kernels::segment_mean_bwd", mutates_args=())
def _segment_mean_backward_op(dout: torch.Tensor, cu_seqlens: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """``dout`` ``(batch, width)`` -> ``dx`` ``(total_tokens, width)``: each token gets dout / len."""
    kernels = _kernels(dout)  # dx rows are as wide as dout's (both dense)
    if kernels is not None:
        with on_device(dout):
            return kernels.segment_mean_backward(dout, cu_seqlens, total_tokens)
    return segment_mean_backward_torch(dout, cu_seqlens, total_tokens)


@_segment_mean_backward_op.register_fake
def _(dout, cu_seqlens, total_tokens):
    return dout.new_empty((total_tokens, dout.shape[1]))


def _mean_setup_context(ctx, inputs, output):
    x, cu_seqlens = inputs
    ctx.save_for_backward(cu_seqlens)
    ctx.total_tokens = x.shape[0]


def _mean_backward(ctx, dout):
    (cu_seqlens,) = ctx.saved_tensors
    return _segment_mean_backward_op(dout.contiguous(), cu_seqlens, ctx.total_tokens), None


_segment_mean_op.register_autograd(_mean_backward, setup_context=_mean_setup_context)
