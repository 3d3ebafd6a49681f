"""Pooling over packed segments: attention pooling (ElasticAST's head) and mean pooling.

Public functions:

- ``segment_attention_pool(q, k, v, cu_seqlens, max_seqlen=None, softmax_scale=None)``: for
  every sample ``b`` and head ``h``, ``softmax(scale * k_b q) @ v_b`` over that sample's tokens.
- ``segment_mean(x, cu_seqlens, max_seqlen=None)``: the mean of each sample's tokens.

Both are ``torch.library`` custom ops with explicit backward ops, so autograd and
``torch.compile(fullgraph=True)`` see them as single nodes. CUDA tensors (and CPU tensors under
``TRITON_INTERPRET=1``, bf16 excepted) run the Triton kernels of ``segment_pool_kernels``; other
CPU tensors run a vectorised torch path here (it reads ``cu_seqlens``, which is free on the CPU).
"""
from __future__ import annotations

import functools
import math

import torch

from elasticast_kernels.ops._common import on_device, use_triton
from elasticast_kernels.ops._validation import (
    check_cu_seqlens,
    check_float_tensor,
    check_max_seqlen,
    check_same,
    resolve_softmax_scale,
)

__all__ = ["segment_attention_pool", "segment_mean"]

MAX_HEAD_DIM = 256  # the kernels hold a [BLOCK_N, head_dim] tile in registers

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
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"k's head_dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    q = check_float_tensor("q", q, 2 if q.dim() == 2 else 3)
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


_MAX_ROW_STRIDE = 2**23  # tile offsets are int32: BLOCK_N (<= 128) rows of this stride must fit


def _use_triton(tensor: torch.Tensor, *row_tensors: torch.Tensor) -> bool:
    """``use_triton``, except (1) bf16 CPU tensors: the interpreter computes bf16 through numpy,
    which has no bfloat16, and returns garbage, so they take the torch path even under the
    interpreter; (2) rows wider than 2^23 elements (``row_tensors``), whose tile offsets would
    overflow int32 (far beyond any attention layout; possible for a huge ``segment_mean`` row)."""
    if any(t.dim() > 0 and t.stride(0) >= _MAX_ROW_STRIDE for t in row_tensors):
        return False
    return use_triton(tensor) and not (tensor.device.type == "cpu" and tensor.dtype == torch.bfloat16)


# --- custom ops: attention pooling --------------------------------------------------------------


@torch.library.custom_op("elasticast_kernels::segment_attention_pool_fwd", mutates_args=())
def _pool_forward_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, softmax_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(out (batch, heads, head_dim) in k's dtype, lse (batch, heads) fp32)``.

    ``lse`` is the natural log-sum-exp of the scaled scores (-inf for an empty sample).
    """
    if _use_triton(k, k, v):
        with on_device(k):
            return _pool_forward_triton(q, k, v, cu_seqlens, softmax_scale)
    return _pool_forward_torch(q, k, v, cu_seqlens, softmax_scale)


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
    if _use_triton(k, k, v):  # dk and dv are dense: their rows are no wider than k's
        with on_device(k):
            return _pool_backward_triton(dout, q, k, v, out, lse, cu_seqlens, softmax_scale)
    return _pool_backward_torch(dout, q, k, v, lse, cu_seqlens, softmax_scale)


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


torch.library.register_autograd(
    "elasticast_kernels::segment_attention_pool_fwd", _pool_backward, setup_context=_pool_setup_context
)


# --- custom ops: mean ---------------------------------------------------------------------------


@torch.library.custom_op("elasticast_kernels::segment_mean_fwd", mutates_args=())
def _segment_mean_op(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``x`` ``(total_tokens, width)`` -> ``(batch, width)`` in x's dtype."""
    if _use_triton(x, x):
        with on_device(x):
            return _segment_mean_triton(x, cu_seqlens)
    return _segment_mean_torch(x, cu_seqlens)


@_segment_mean_op.register_fake
def _(x, cu_seqlens):
    return x.new_empty((cu_seqlens.shape[0] - 1, x.shape[1]))


@torch.library.custom_op("elasticast_kernels::segment_mean_bwd", mutates_args=())
def _segment_mean_backward_op(dout: torch.Tensor, cu_seqlens: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """``dout`` ``(batch, width)`` -> ``dx`` ``(total_tokens, width)``: each token gets dout / len."""
    if _use_triton(dout, dout):  # dx rows are as wide as dout's (both dense)
        with on_device(dout):
            return _segment_mean_backward_triton(dout, cu_seqlens, total_tokens)
    return _segment_mean_backward_torch(dout, cu_seqlens, total_tokens)


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


torch.library.register_autograd(
    "elasticast_kernels::segment_mean_fwd", _mean_backward, setup_context=_mean_setup_context
)


# --- Triton launchers ---------------------------------------------------------------------------

_BLOCK_B = 64  # samples scanned per step when a program looks up its chunk


def _needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether element offsets into any of ``tensors`` (plus a tile of overhang) can pass int32."""
    for t in tensors:
        if t.numel() == 0:
            continue
        span = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
        if span + 256 * max(t.stride()) >= 2**31:
            return True
    return False


def _merge_block(device: torch.device) -> int:
    """Chunk partials merged per step (small under the interpreter so tests cover several steps)."""
    return 16 if device.type == "cuda" else 4


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _pick_chunk(total_tokens: int, programs_per_chunk: int, block_n: int, device: torch.device) -> int:
    """Tokens per program (a power of two >= ``2 * block_n``): aim for ~8 programs per SM.

    Longer chunks mean fewer partials to merge; shorter ones keep every SM busy when the batch
    has few samples. Under the interpreter, 2 tiles per chunk keep tests quick yet split samples.
    """
    if device.type != "cuda":
        return 2 * block_n
    target_programs = 8 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    chunks_wanted = max(1, target_programs // max(1, programs_per_chunk))
    tokens = max(1, total_tokens // chunks_wanted)
    chunk = 1 << (tokens.bit_length() - 1)  # round down to a power of two
    return max(2 * block_n, min(chunk, 4096))


def _pool_config(head_dim: int, device: torch.device, backward: bool) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_D, num_warps) for the pooling kernels.

    Sized by elements of a [BLOCK_N, BLOCK_D] tile per thread: 16 in the forward with 4 warps
    (48-72 registers; an 8-warp variant spilled on sm_80), 8 in the backward, which keeps four
    tiles live (64-80 registers with 8 warps). Spill-free for head_dim 32..256 on sm_80/sm_90 under
    Triton 3.6 and 3.9 (tests/test_aot_pool.py). Under the interpreter, small tiles.
    """
    block_d = max(16, _next_pow2(head_dim))
    if device.type != "cuda":
        return 32, block_d, 4
    if backward:
        num_warps = 8 if block_d >= 64 else 4
        return min(128, 8 * 32 * num_warps // block_d), block_d, num_warps
    return min(128, 16 * 32 * 4 // block_d), block_d, 4


def _pool_forward_triton(q, k, v, cu_seqlens, softmax_scale):
    from elasticast_kernels.ops import segment_pool_kernels as kernels

    total_tokens, heads, head_dim = k.shape
    batch = cu_seqlens.shape[0] - 1
    out = k.new_empty((batch, heads, head_dim))
    lse = k.new_empty((batch, heads), dtype=torch.float32)
    if batch == 0 or heads == 0:
        return out, lse
    block_n, block_d, num_warps = _pool_config(head_dim, k.device, backward=False)
    chunk = _pick_chunk(total_tokens, heads, block_n, k.device)
    num_slots = total_tokens // chunk + batch
    m_part = torch.empty((num_slots, heads), device=k.device, dtype=torch.float32)
    l_part = torch.empty_like(m_part)
    acc_part = torch.empty((num_slots, heads, head_dim), device=k.device, dtype=torch.float32)
    stride_qb = q.stride(0) if q.dim() == 3 else 0
    qk_scale_log2 = softmax_scale * kernels.LOG2E
    kernels._pool_fwd_partial_kernel[(num_slots, heads)](
        q, k, v, cu_seqlens, m_part, l_part, acc_part,
        batch, heads, chunk, qk_scale_log2,
        stride_qb, q.stride(-2), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        HEAD_DIM=head_dim, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_B=_BLOCK_B, INT64_INDEX=_needs_int64(k, v),
        num_warps=num_warps,
    )
    kernels._pool_combine_kernel[(batch, heads)](
        m_part, l_part, acc_part, cu_seqlens, out, lse,
        heads, chunk, out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_S=_merge_block(k.device), BLOCK_D=block_d, num_warps=4,
    )
    return out, lse


def _pool_backward_triton(dout, q, k, v, out, lse, cu_seqlens, softmax_scale):
    from elasticast_kernels.ops import segment_pool_kernels as kernels

    total_tokens, heads, head_dim = k.shape
    batch = cu_seqlens.shape[0] - 1
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    if batch == 0 or heads == 0 or total_tokens == 0:
        dk.zero_()
        dv.zero_()
        return torch.zeros(q.shape, device=q.device, dtype=q.dtype), dk, dv
    block_n, block_d, num_warps = _pool_config(head_dim, k.device, backward=True)
    chunk = _pick_chunk(total_tokens, heads, block_n, k.device)
    num_slots = total_tokens // chunk + batch
    dq_part = torch.empty((num_slots, heads, head_dim), device=k.device, dtype=torch.float32)
    shared_query = q.dim() == 2
    kernels._pool_bwd_kernel[(num_slots, heads)](
        q, k, v, out, dout, lse, cu_seqlens, dk, dv, dq_part,
        batch, heads, chunk, softmax_scale, softmax_scale * kernels.LOG2E,
        0 if shared_query else q.stride(0), q.stride(-2), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), dout.stride(0), dout.stride(1),
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        HEAD_DIM=head_dim, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_B=_BLOCK_B, INT64_INDEX=_needs_int64(k, v, dk, dv),
        num_warps=num_warps,
    )
    if shared_query:
        # Gap slots hold zeros, so the shared query's gradient is the sum over all slots.
        return dq_part.sum(dim=0).to(q.dtype), dk, dv
    dq = torch.empty((batch, heads, head_dim), device=q.device, dtype=q.dtype)
    _slot_sum(dq_part.view(num_slots, heads * head_dim), dq.view(batch, heads * head_dim), cu_seqlens, chunk,
              mean=False)
    return dq, dk, dv


def _slot_sum(part: torch.Tensor, out: torch.Tensor, cu_seqlens: torch.Tensor, chunk: int, mean: bool) -> None:
    """``out[b] = sum of part over sample b's chunk slots`` (divided by its length when ``mean``)."""
    from elasticast_kernels.ops import segment_pool_kernels as kernels

    batch, width = out.shape
    block_w = _slot_sum_block(width, part.device)
    kernels._slot_sum_kernel[(batch, _cdiv(width, block_w))](
        part, out, cu_seqlens, width, chunk, out.stride(0),
        MEAN=mean, BLOCK_S=_merge_block(part.device), BLOCK_W=block_w, num_warps=4,
    )


def _slot_sum_block(width: int, device: torch.device) -> int:
    """Columns per program of ``_slot_sum_kernel`` (a [BLOCK_S, BLOCK_W] fp32 tile, 4 warps)."""
    return min(256 if device.type == "cuda" else 64, max(16, _next_pow2(width)))


def _mean_config(width: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_W, num_warps) for the segment-mean kernels."""
    if device.type != "cuda":
        return 32, min(64, max(16, _next_pow2(width))), 4
    return 32, min(256, max(16, _next_pow2(width))), 4


def _segment_mean_triton(x, cu_seqlens):
    from elasticast_kernels.ops import segment_pool_kernels as kernels

    total_tokens, width = x.shape
    batch = cu_seqlens.shape[0] - 1
    out = x.new_empty((batch, width))
    if batch == 0 or width == 0:
        return out
    block_n, block_w, num_warps = _mean_config(width, x.device)
    chunk = _pick_chunk(total_tokens, _cdiv(width, block_w), block_n, x.device)
    num_slots = total_tokens // chunk + batch
    part = torch.empty((num_slots, width), device=x.device, dtype=torch.float32)
    kernels._segment_sum_partial_kernel[(num_slots, _cdiv(width, block_w))](
        x, part, cu_seqlens, batch, width, chunk, x.stride(0),
        BLOCK_N=block_n, BLOCK_W=block_w, BLOCK_B=_BLOCK_B, INT64_INDEX=_needs_int64(x), num_warps=num_warps,
    )
    _slot_sum(part, out, cu_seqlens, chunk, mean=True)
    return out


def _segment_mean_backward_triton(dout, cu_seqlens, total_tokens):
    from elasticast_kernels.ops import segment_pool_kernels as kernels

    batch, width = dout.shape
    dx = dout.new_empty((total_tokens, width))
    if batch == 0 or width == 0 or total_tokens == 0:
        return dx.zero_()
    block_n, block_w, num_warps = _mean_config(width, dout.device)
    chunk = _pick_chunk(total_tokens, _cdiv(width, block_w), block_n, dout.device)
    num_slots = total_tokens // chunk + batch
    kernels._segment_mean_bwd_kernel[(num_slots, _cdiv(width, block_w))](
        dout, dx, cu_seqlens, batch, width, chunk, dout.stride(0), dx.stride(0),
        BLOCK_N=block_n, BLOCK_W=block_w, BLOCK_B=_BLOCK_B, INT64_INDEX=_needs_int64(dx), num_warps=num_warps,
    )
    return dx


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --- torch path (CPU without the interpreter) ---------------------------------------------------
# Vectorised over the packed tokens: segment ids from cu_seqlens, then scatter reductions.


def _segment_ids(cu_seqlens: torch.Tensor, total_tokens: int) -> torch.Tensor:
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    ids = torch.arange(lengths.numel(), device=cu_seqlens.device)
    return torch.repeat_interleave(ids, lengths.long(), output_size=total_tokens)


def _per_token_query(q: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(heads, d) or (batch, heads, d) -> (total_tokens, heads, d), fp32."""
    q = q.float()
    return q.unsqueeze(0).expand(ids.numel(), *q.shape) if q.dim() == 2 else q[ids]


def _pool_forward_torch(q, k, v, cu_seqlens, softmax_scale):
    total_tokens, heads, head_dim = k.shape
    batch = cu_seqlens.shape[0] - 1
    ids = _segment_ids(cu_seqlens, total_tokens)
    scores = (k.float() * _per_token_query(q, ids)).sum(-1) * softmax_scale  # (tokens, heads)
    seg_max = scores.new_full((batch, heads), -math.inf)
    seg_max = seg_max.scatter_reduce(0, ids[:, None].expand_as(scores), scores, "amax", include_self=True)
    p = torch.exp(scores - seg_max[ids])
    denom = scores.new_zeros((batch, heads)).index_add_(0, ids, p)
    acc = scores.new_zeros((batch, heads, head_dim)).index_add_(0, ids, p[..., None] * v.float())
    nonempty = denom > 0
    out = torch.where(nonempty[..., None], acc / denom.clamp_min(1e-30)[..., None], 0.0)
    lse = torch.where(nonempty, seg_max + torch.log(denom.clamp_min(1e-30)), -math.inf)
    return out.to(k.dtype), lse


def _pool_backward_torch(dout, q, k, v, lse, cu_seqlens, softmax_scale):
    total_tokens = k.shape[0]
    ids = _segment_ids(cu_seqlens, total_tokens)
    qf, kf, vf, dof = q.float(), k.float(), v.float(), dout.float()
    q_tok = _per_token_query(q, ids)
    p = torch.exp((kf * q_tok).sum(-1) * softmax_scale - lse[ids])  # (tokens, heads)
    dp = (vf * dof[ids]).sum(-1)
    # delta_b = sum_t p_t dp_t = dout_b . out_b (exact form, no rounding of out involved)
    delta = torch.zeros_like(lse).index_add_(0, ids, p * dp)
    ds = p * (dp - delta[ids])
    dv = p[..., None] * dof[ids]
    dk = (ds * softmax_scale)[..., None] * q_tok
    dq_tok = (ds * softmax_scale)[..., None] * kf
    if q.dim() == 2:
        dq = dq_tok.sum(0)
    else:
        dq = torch.zeros_like(qf).index_add_(0, ids, dq_tok)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _segment_mean_torch(x, cu_seqlens):
    batch = cu_seqlens.shape[0] - 1
    ids = _segment_ids(cu_seqlens, x.shape[0])
    sums = x.new_zeros((batch, x.shape[1]), dtype=torch.float32).index_add_(0, ids, x.float())
    counts = (cu_seqlens[1:] - cu_seqlens[:-1]).clamp_min(1).to(torch.float32)
    return (sums / counts[:, None]).to(x.dtype)


def _segment_mean_backward_torch(dout, cu_seqlens, total_tokens):
    ids = _segment_ids(cu_seqlens, total_tokens)
    counts = (cu_seqlens[1:] - cu_seqlens[:-1]).clamp_min(1).to(torch.float32)
    return (dout.float() / counts[:, None])[ids].to(dout.dtype)
