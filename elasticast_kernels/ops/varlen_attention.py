"""Varlen attention on the packed layout: public API, torch.library ops and autograd.

``varlen_attention`` attends within each sample of a packed sequence (``cu_seqlens`` marks the
samples) without padding or a mask tensor, with flash-attn's features: grouped-query attention,
cross-attention (other key lengths), causal masks, sliding windows and soft-capping.
flash-attn's own signatures live in ``flash_attn_interface.py``. CUDA tensors run the Triton
kernels (``varlen_attention_kernels.py``); CPU tensors run the torch path
(``varlen_attention_torch.py``), except under ``TRITON_INTERPRET=1``, where they run the Triton
kernels in the interpreter (how the kernels are tested without a GPU; bf16 CPU tensors take the
torch path even then, see ``ops._common``).

Both directions are ``torch.library.custom_op``s with fake implementations, so
``torch.compile(fullgraph=True)`` traces them as single opaque nodes.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from elasticast_kernels.ops._common import MAX_ROW_STRIDE, longest_first, lse_columns, on_device, use_triton
from elasticast_kernels.ops._validation import (
    check_cu_seqlens,
    check_float_tensor,
    check_max_seqlen,
    check_same,
    check_softcap,
    check_window,
    resolve_softmax_scale,
)
from elasticast_kernels.ops.varlen_attention_torch import (
    varlen_attention_backward_torch,
    varlen_attention_forward_torch,
)

# head_dim values the kernels are compiled for; other sizes are zero-padded to the next of these
ATTENTION_HEAD_DIMS = (32, 64, 128, 256)
ATTENTION_MAX_HEAD_DIM = ATTENTION_HEAD_DIMS[-1]

__all__ = ["varlen_attention", "LaunchSchedule", "launch_schedule", "ATTENTION_HEAD_DIMS", "ATTENTION_MAX_HEAD_DIM"]


class LaunchSchedule(NamedTuple):
    """The kernels' launch order (`ops._common.longest_first`) for the queries and the keys:
    ``(order, order_cu)`` each, int32, on the data's device. ``k`` is ``q`` for self-attention.

    It depends on ``cu_seqlens`` only, so one schedule serves every layer of a model and the
    backward: build it once per batch with `launch_schedule` (the ``triton`` backend caches it on
    the `SeqLayout`).
    """

    q: tuple[torch.Tensor, torch.Tensor]
    k: tuple[torch.Tensor, torch.Tensor]


def launch_schedule(cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor | None = None) -> LaunchSchedule:
    """The launch order of a batch, computed on the device without a host sync (a few tiny ops).

    Args:
        cu_seqlens_q: int32 ``[batch + 1]`` query offsets.
        cu_seqlens_k: int32 ``[batch + 1]`` key offsets; ``None`` or the same tensor for self-attention.
    """
    schedule_q = longest_first(cu_seqlens_q)
    if cu_seqlens_k is None or cu_seqlens_k is cu_seqlens_q:
        return LaunchSchedule(schedule_q, schedule_q)
    return LaunchSchedule(schedule_q, longest_first(cu_seqlens_k))


# --- public API ---------------------------------------------------------------------------------


def _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k) -> tuple[torch.Tensor, torch.Tensor]:
    """Structural checks of the tensors (and, on the CPU, the offsets' values); returns the
    offsets contiguous (the kernels read them with unit stride), ``cu_seqlens_k`` being
    ``cu_seqlens_q`` itself for self-attention."""
    check_float_tensor("q", q, 3)
    check_float_tensor("k", k, 3)
    check_float_tensor("v", v, 3)
    check_same("k", k, "q", q)
    check_same("v", v, "q", q)
    total_q, heads, head_dim = q.shape
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k [total_k, heads_k, head_dim], got v {tuple(v.shape)}, "
                         f"k {tuple(k.shape)}")
    if k.shape[2] != head_dim:
        raise ValueError(f"k and v must have q's head_dim {head_dim}, got k {tuple(k.shape)}")
    heads_k = k.shape[1]
    if heads_k == 0 or heads % heads_k:
        raise ValueError(f"the heads of q ({heads}) must be a multiple of the heads of k and v ({heads_k}) "
                         "(grouped-query attention)")
    if not 1 <= head_dim <= ATTENTION_MAX_HEAD_DIM:
        raise ValueError(f"head_dim (q.shape[-1]) must be between 1 and {ATTENTION_MAX_HEAD_DIM}, got {head_dim}")
    self_attention = cu_seqlens_k is None or cu_seqlens_k is cu_seqlens_q
    names = ("cu_seqlens", "total_tokens") if self_attention else ("cu_seqlens_q", "total_q")
    cu_seqlens_q = check_cu_seqlens(cu_seqlens_q, total_q, q.device, *names).contiguous()
    if self_attention:
        if k.shape[0] != total_q:
            raise ValueError(f"k has {k.shape[0]} tokens but q has {total_q}: pass cu_seqlens_k for "
                             "cross-attention (other key lengths)")
        return cu_seqlens_q, cu_seqlens_q
    cu_seqlens_k = check_cu_seqlens(cu_seqlens_k, k.shape[0], k.device, "cu_seqlens_k", "total_k").contiguous()
    if cu_seqlens_k.shape != cu_seqlens_q.shape:
        raise ValueError(f"cu_seqlens_k must have one entry per cu_seqlens_q entry (batch + 1 = "
                         f"{cu_seqlens_q.shape[0]}), got {cu_seqlens_k.shape[0]}")
    return cu_seqlens_q, cu_seqlens_k


def _check_schedule(schedule: object, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                    used: bool) -> LaunchSchedule:
    """A schedule handed in must be a `LaunchSchedule` of int32 tensors sized for this batch; when
    the kernels will ``use`` it on the CPU (the interpreter, where reading it is free) it must also
    equal the one `launch_schedule` builds (the torch path ignores it)."""
    if not isinstance(schedule, LaunchSchedule):
        raise TypeError(f"schedule must be a LaunchSchedule (from launch_schedule), got {type(schedule).__name__}")
    batch = cu_seqlens_q.shape[0] - 1
    for side, (order, order_cu) in zip("qk", schedule):
        for name, tensor, size in (("order", order, batch), ("order_cu", order_cu, batch + 1)):
            if (not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int32 or tensor.shape != (size,)
                    or tensor.device != cu_seqlens_q.device):
                raise ValueError(f"schedule.{side} {name} must be int32 of shape ({size},) on {cu_seqlens_q.device}; "
                                 "build it with launch_schedule(cu_seqlens_q, cu_seqlens_k)")
    if used and cu_seqlens_q.device.type == "cpu" and not torch.compiler.is_compiling():
        expected = launch_schedule(cu_seqlens_q, cu_seqlens_k)
        if not all(torch.equal(a, b) for pair, ref in zip(schedule, expected) for a, b in zip(pair, ref)):
            raise ValueError("schedule does not belong to these cu_seqlens: build it with "
                             "launch_schedule(cu_seqlens_q, cu_seqlens_k)")
    return schedule


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int | None = None, softmax_scale: float | None = None, causal: bool = False, *,
                     cu_seqlens_k: torch.Tensor | None = None, max_seqlen_k: int | None = None,
                     window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                     schedule: LaunchSchedule | None = None) -> torch.Tensor:
    """Softmax attention within each sample of a packed sequence, with flash-attn's semantics.

    Args:
        q: ``(total_q, heads, head_dim)``, float16/bfloat16/float32. ``head_dim`` <= 256: 32, 64,
            128 and 256 run as they are on the kernels, other sizes are zero-padded to the next
            of them there (a copy; results are exact).
        k, v: ``(total_k, heads_k, head_dim)``, the dtype and device of q. ``heads`` must be a
            multiple of ``heads_k`` (grouped-query / multi-query attention): query head ``h``
            reads key head ``h // (heads // heads_k)``.
        cu_seqlens: int32 ``(batch + 1,)`` on the same device: sample ``b`` has queries
            ``cu_seqlens[b]:cu_seqlens[b + 1]``; starts at 0, non-decreasing, ends at ``total_q``.
            Empty samples are allowed.
        max_seqlen: longest query sample (Python int), optional: only a hint (the kernels never
            need it and never sync with the host); it picks the autotuning bucket, which
            otherwise comes from the mean length.
        softmax_scale: multiplies ``q @ k^T`` before the softmax; ``None`` means
            ``1 / sqrt(head_dim)`` (of the unpadded head_dim). ElasticAST uses 1.0.
        causal: query ``i`` of a sample sees keys up to ``i + Lk - Lq`` (aligned bottom-right, as
            flash-attn; ``Lq == Lk`` is the usual causal mask).
        cu_seqlens_k: int32 ``(batch + 1,)`` key offsets for cross-attention (sample ``b`` has
            keys ``cu_seqlens_k[b]:cu_seqlens_k[b + 1]``, ending at ``total_k``). ``None`` (or
            the same tensor) means the keys share the queries' offsets.
        max_seqlen_k: longest key sample, a hint like ``max_seqlen``.
        window_size: ``(left, right)``: query ``i`` sees keys ``[i + Lk - Lq - left,
            i + Lk - Lq + right]``; ``-1`` leaves a side unbounded, and a side as long as the
            keys excludes nothing. Causal sets ``right`` to 0. A query that sees no key (a
            window or causal mask past its sample's keys, or a sample without keys) gives 0.
        softcap: ``> 0`` replaces the scaled scores ``s`` by ``softcap * tanh(s / softcap)``
            (Gemma-2 style); 0.0 is off.
        schedule: the kernels' launch order from `launch_schedule` (computed here when not
            given); pass one to share it between layers. The torch path does not use it.

    Returns:
        ``(total_q, heads, head_dim)`` in the dtype of ``q``. Differentiable in q, k, v.

    Raises:
        TypeError: a tensor argument is not a tensor; ``window_size``, ``softcap``,
            ``softmax_scale`` or ``schedule`` of the wrong type.
        ValueError: bad dtype, shape, device or head_dim, heads not a multiple of heads_k, a
            window side below -1, a negative or non-finite softcap (the message names the
            argument); ``cu_seqlens``/``cu_seqlens_k`` not int32 / not 1-D / on another device /
            of different lengths; on CPU also when their values are not a valid partition of
            the tokens. On CUDA the values are not checked (that needs a device sync): invalid
            values give undefined results.
    """
    cu_seqlens_q, cu_seqlens_k = _check_inputs(q, k, v, cu_seqlens, cu_seqlens_k)
    max_seqlen_q = check_max_seqlen(max_seqlen)
    max_seqlen_k = check_max_seqlen(max_seqlen_k, "max_seqlen_k")
    scale = resolve_softmax_scale(softmax_scale, q.shape[-1])
    window = check_window(window_size, bool(causal), max(q.shape[0], k.shape[0]))
    causal = window[1] == 0  # the same mask whichever way it was spelled (causal, or a window's right side 0)
    softcap = check_softcap(softcap)
    triton = use_triton(q)
    if schedule is not None:
        schedule = _check_schedule(schedule, cu_seqlens_q, cu_seqlens_k, used=triton)
    elif triton:
        schedule = launch_schedule(cu_seqlens_q, cu_seqlens_k)
    hints = [h for h in (max_seqlen_q, max_seqlen_k) if h is not None]
    seq_hint = max(hints) if hints else max(q.shape[0], k.shape[0]) // max(cu_seqlens_q.shape[0] - 1, 1)

    # the kernels read rows with unit stride on head_dim (any token/head strides below
    # MAX_ROW_STRIDE are fine; wider ones are copied compact) and exist for a few head_dims; the
    # torch path needs neither adjustment
    q, k, v = (x if x.stride(-1) == 1 and x.stride(0) < MAX_ROW_STRIDE else x.contiguous() for x in (q, k, v))
    head_dim = q.shape[-1]
    kernel_head_dim = next(d for d in ATTENTION_HEAD_DIMS if d >= head_dim) if triton else head_dim
    if kernel_head_dim != head_dim:
        # zero columns add nothing to q.k and give zero output columns, sliced off below
        q, k, v = (F.pad(x, (0, kernel_head_dim - head_dim)) for x in (q, k, v))
    schedule_args = (None,) * 4 if schedule is None else (*schedule.q, *schedule.k)
    out, _ = _varlen_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, *schedule_args, seq_hint, scale, causal,
                                   window[0], window[1], softcap)
    if kernel_head_dim != head_dim:
        out = out[..., :head_dim]
    return out


# --- torch.library ops --------------------------------------------------------------------------
# The schedule travels as four optional tensors (order and cumulative lengths, for q and k): None
# on the torch path, which does not use it.


def _schedule_pair(order: torch.Tensor | None, order_cu: torch.Tensor | None,
                   cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return longest_first(cu_seqlens) if order is None or order_cu is None else (order, order_cu)


@torch.library.custom_op("elasticast_kernels::varlen_attention_fwd", mutates_args=())
def _varlen_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                          cu_seqlens_k: torch.Tensor, order_q: torch.Tensor | None, order_cu_q: torch.Tensor | None,
                          order_k: torch.Tensor | None, order_cu_k: torch.Tensor | None, seq_hint: int,
                          softmax_scale: float, causal: bool, window_left: int, window_right: int, softcap: float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (out [total_q, heads, head_dim] dtype of q, lse2 [heads, lse_columns(total_q)] fp32). Inputs validated."""
    window = (window_left, window_right)
    if use_triton(q):
        from elasticast_kernels.ops.varlen_attention_kernels import varlen_attention_forward

        with on_device(q):
            return varlen_attention_forward(q, k, v, cu_seqlens_q, cu_seqlens_k,
                                            _schedule_pair(order_q, order_cu_q, cu_seqlens_q), seq_hint,
                                            softmax_scale, causal, window, softcap)
    return varlen_attention_forward_torch(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal, window, softcap)


@_varlen_attention_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, order_q, order_cu_q, order_k, order_cu_k, seq_hint, softmax_scale,
      causal, window_left, window_right, softcap):
    total, heads, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((heads, lse_columns(total)), dtype=torch.float32)


@torch.library.custom_op("elasticast_kernels::varlen_attention_bwd", mutates_args=())
def _varlen_attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          out: torch.Tensor, lse: torch.Tensor, cu_seqlens_q: torch.Tensor,
                          cu_seqlens_k: torch.Tensor, order_q: torch.Tensor | None, order_cu_q: torch.Tensor | None,
                          order_k: torch.Tensor | None, order_cu_k: torch.Tensor | None, seq_hint: int,
                          softmax_scale: float, causal: bool, window_left: int, window_right: int, softcap: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dq, dk, dv), shaped and typed like q, k, v."""
    window = (window_left, window_right)
    if use_triton(q):
        from elasticast_kernels.ops.varlen_attention_kernels import varlen_attention_backward

        schedule_q = _schedule_pair(order_q, order_cu_q, cu_seqlens_q)
        schedule_k = schedule_q if cu_seqlens_k is cu_seqlens_q else _schedule_pair(order_k, order_cu_k, cu_seqlens_k)
        with on_device(q):
            return varlen_attention_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, schedule_q,
                                             schedule_k, seq_hint, softmax_scale, causal, window, softcap)
    return varlen_attention_backward_torch(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                                           causal, window, softcap)


@_varlen_attention_bwd.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, order_q, order_cu_q, order_k, order_cu_k, seq_hint,
      softmax_scale, causal, window_left, window_right, softcap):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens_q, cu_seqlens_k, order_q, order_cu_q, order_k, order_cu_k, *scalars = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, order_q, order_cu_q, order_k, order_cu_k)
    ctx.mark_non_differentiable(lse)  # internal output: no zero gradient is allocated for it
    ctx.self_attention = cu_seqlens_k is cu_seqlens_q
    ctx.scalars = scalars


def _backward(ctx, dout, dlse):
    # the log-sum-exp is an internal output (never returned to users): its gradient is ignored
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, *schedule = ctx.saved_tensors
    if ctx.self_attention:  # saving unpacks to a new tensor object: keep "the same tensor" visible
        cu_seqlens_k = cu_seqlens_q
    dq, dk, dv = _varlen_attention_bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, *schedule,
                                       *ctx.scalars)
    return (dq, dk, dv) + (None,) * (len(ctx.scalars) + 6)


_varlen_attention_fwd.register_autograd(_backward, setup_context=_setup_context)
