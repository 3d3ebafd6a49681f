"""Triton kernels for pooling over packed segments (attention pooling and mean).

Layout: tokens ``[total_tokens, ...]`` packed sample after sample, ``cu_seqlens`` (int32,
``[batch + 1]``) gives each sample's token range.

Work split ("chunk slots"). A sample may hold thousands of tokens while its neighbour holds eight,
and an ElasticAST batch has only ~12 samples x 12 heads, far fewer than an H100's 132 SMs can
use. So every sample is cut into chunks of ``chunk`` tokens and each chunk gets its own program
(split-K). Chunk ``c`` of sample ``b`` lives in slot

    slot(b, c) = cu_seqlens[b] // chunk + b + c,       0 <= c < cdiv(len_b, chunk)

which is strictly increasing in (b, c), needs no prefix sum over the batch, and stays below
``total_tokens // chunk + batch`` -- a bound known from shapes alone, so the grid needs no
device->host sync. A few slots between samples belong to no chunk; their programs find an empty
token range and write neutral partials (the combine step never reads them).

Programs over slots write fp32 partials ``[num_slots, ...]``; a second, small kernel combines
the slots of each sample (``_pool_combine_kernel``, ``_slot_sum_kernel``).

Saved log-sum-exp (the contract between forward and backward, shared with the torch path in
``segment_pool_torch.py``): fp32 ``[batch, heads]`` in the base-2 domain with the softmax scale
folded in, ``lse2 = log2(sum_t 2^(scale * log2(e) * q.k_t))``, as the varlen attention kernels
keep theirs; -inf for an empty sample.

Non-finite inputs: whether a sample is empty is decided from its length, never from its softmax
denominator, so a NaN/inf among a sample's tokens gives that sample a non-finite output (and
gradients) instead of a silent zero; other samples never read its tokens.

The launchers at the end (``segment_attention_pool_forward`` / ``_backward``,
``segment_mean_forward`` / ``_backward``) are what the custom ops in ``segment_pool.py`` call.

Only plain pointers and masks are used (no block pointers): the kernels compile with Triton 3.6
and 3.9 alike. Row offsets are int64 when a tensor needs it (see ``_row_offset``).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from elasticast_kernels.ops._common import LOG2E
from elasticast_kernels.ops._triton_common import cdiv, needs_int64, next_pow2, tile_offsets

__all__ = [
    "segment_attention_pool_forward", "segment_attention_pool_backward", "segment_mean_forward",
    "segment_mean_backward", "pool_config", "mean_config",
]


@triton.jit
def _locate_chunk(slot, CU, batch, chunk, BLOCK_B: tl.constexpr):
    """Sample and token range ``[lo, hi)`` of chunk ``slot`` (``lo >= hi`` when the slot is a gap).

    The sample is the last ``b`` whose first slot ``cu[b] // chunk + b`` is <= ``slot``; first
    slots are strictly increasing, so counting them finds it (one vector load per BLOCK_B samples).
    """
    hits = tl.zeros([BLOCK_B], dtype=tl.int32)
    for b0 in range(0, batch, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        in_batch = offs_b < batch
        starts = tl.load(CU + offs_b, mask=in_batch, other=0)
        first_slot = starts // chunk + offs_b
        hits += (in_batch & (first_slot <= slot)).to(tl.int32)
    sample = tl.sum(hits, axis=0) - 1
    seq_start = tl.load(CU + sample).to(tl.int64)
    seq_end = tl.load(CU + sample + 1).to(tl.int64)
    index_in_sample = slot - (seq_start // chunk + sample)
    # Clamp before narrowing: a gap slot's lo can run past the sample's end.
    lo = tl.minimum(seq_start + index_in_sample.to(tl.int64) * chunk, seq_end)
    hi = tl.minimum(lo + chunk, seq_end)
    return sample, lo.to(tl.int32), hi.to(tl.int32)


@triton.jit
def _row_offset(row, stride, INT64_INDEX: tl.constexpr):
    """``row * stride``: offset of a chunk's first row, in int64 only when the tensor needs it.

    Why not always int64: Triton 3.9 loses the 16-divisibility of ``stride`` through an int64
    product (and through a loop index times a stride) and then loads element by element instead
    of 16 bytes at a time. So the kernels compute the first row's pointer once and advance it by
    ``BLOCK_N * stride`` per tile; the launcher sets INT64_INDEX when a tensor spans 2^31 elements.
    """
    if INT64_INDEX:
        offset = row.to(tl.int64) * stride
    else:
        offset = row * stride
    return offset


@triton.jit
def _pool_fwd_partial_kernel(
    Q, K, V, CU, M_PART, L_PART, ACC_PART,
    batch, heads, chunk, qk_scale_log2,
    stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_B: tl.constexpr,
    INT64_INDEX: tl.constexpr,
):
    """One program per (chunk slot, head): online softmax over the chunk's tokens.

    Writes the chunk's running max ``m`` (log2 units), sum ``l`` and unnormalised output ``acc``
    (all fp32) to slot ``program_id(0)``. ``stride_qb`` is 0 when one query serves all samples.
    """
    slot = tl.program_id(0)
    head = tl.program_id(1)
    sample, lo, hi = _locate_chunk(slot, CU, batch, chunk, BLOCK_B)

    tl.static_assert(BLOCK_D >= HEAD_DIM, "one [BLOCK_N, BLOCK_D] tile must hold a whole head")
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM  # compile-time: folded away when head_dim is a power of two
    q = tl.load(Q + sample.to(tl.int64) * stride_qb + head * stride_qh + offs_d, mask=d_mask, other=0.0)
    # Fold scale and log2(e) into q once: scores come out ready for exp2.
    q = q.to(tl.float32) * qk_scale_log2

    # Online softmax over the chunk, one running (max, sum, output) per program. The per-tile
    # max/sum cross warps, but a program holds twice the bytes in flight per register that a
    # per-row-lane variant does (measured by AOT compiles), and bandwidth is what this kernel needs.
    m_i = tl.full([], float("-inf"), tl.float32)
    l_i = tl.zeros([], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    k_tile = tile_offsets(stride_kt, BLOCK_N, BLOCK_D)
    v_tile = tile_offsets(stride_vt, BLOCK_N, BLOCK_D)
    k_ptr = K + (_row_offset(lo, stride_kt, INT64_INDEX) + _row_offset(head, stride_kh, INT64_INDEX)) + k_tile
    v_ptr = V + (_row_offset(lo, stride_vt, INT64_INDEX) + _row_offset(head, stride_vh, INT64_INDEX)) + v_tile
    for start in range(lo, hi, BLOCK_N):
        n_mask = start + tl.arange(0, BLOCK_N) < hi
        tile_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr, mask=tile_mask, other=0.0)
        v = tl.load(v_ptr, mask=tile_mask, other=0.0)
        # One query per program: the score is a dot product per row (no tensor-core tile to fill).
        s = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
        s = tl.where(n_mask, s, float("-inf"))
        # The loop runs only over non-empty tiles, so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        alpha = tl.math.exp2(m_i - m_new)  # rescale what was accumulated under the old max (0 at first)
        p = tl.math.exp2(s - m_new)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        m_i = m_new
        k_ptr += BLOCK_N * stride_kt
        v_ptr += BLOCK_N * stride_vt

    # A gap slot (no token) stores m = -inf, l = 0, acc = 0; the combine never reads it.
    part = slot.to(tl.int64) * heads + head
    tl.store(M_PART + part, m_i)
    tl.store(L_PART + part, l_i)
    tl.store(ACC_PART + part * HEAD_DIM + offs_d, acc, mask=d_mask)


@triton.jit
def _pool_combine_kernel(
    M_PART, L_PART, ACC_PART, CU, OUT, LSE,
    heads, chunk,
    stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (sample, head): merge the sample's chunk partials.

    Writes ``out = acc / l`` in OUT's dtype and ``lse2`` (base 2, scale folded in, fp32). An empty
    sample has no chunks: its output is 0 and its lse2 -inf. Emptiness comes from the length, not
    from ``l > 0`` (false for NaN): a sample with a non-finite score gets a non-finite output.
    """
    sample = tl.program_id(0)
    head = tl.program_id(1)
    seq_start = tl.load(CU + sample)
    seq_end = tl.load(CU + sample + 1)
    first_slot = seq_start // chunk + sample
    num_chunks = tl.cdiv(seq_end - seq_start, chunk)

    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    m_run = tl.full([], float("-inf"), tl.float32)
    l_run = tl.zeros([], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for c0 in range(0, num_chunks, BLOCK_S):
        offs_c = c0 + tl.arange(0, BLOCK_S)
        c_mask = offs_c < num_chunks
        part = (first_slot + offs_c).to(tl.int64) * heads + head
        m_p = tl.load(M_PART + part, mask=c_mask, other=float("-inf"))
        l_p = tl.load(L_PART + part, mask=c_mask, other=0.0)
        a_p = tl.load(ACC_PART + part[:, None] * HEAD_DIM + offs_d[None, :],
                      mask=c_mask[:, None] & d_mask[None, :], other=0.0)
        # Every real chunk has >= 1 token, so m_new is finite and masked lanes weigh exp2(-inf) = 0.
        m_new = tl.maximum(m_run, tl.max(m_p, axis=0))
        alpha = tl.math.exp2(m_run - m_new)
        w = tl.math.exp2(m_p - m_new)
        acc = acc * alpha + tl.sum(w[:, None] * a_p, axis=0)
        l_run = l_run * alpha + tl.sum(w * l_p, axis=0)
        m_run = m_new

    nonempty = seq_end > seq_start
    out = tl.where(nonempty, acc / tl.where(nonempty, l_run, 1.0), 0.0)
    o_ptr = OUT + sample.to(tl.int64) * stride_ob + head * stride_oh + offs_d
    tl.store(o_ptr, out.to(OUT.dtype.element_ty), mask=d_mask)
    lse2 = tl.where(nonempty, m_run + tl.math.log2(tl.where(nonempty, l_run, 1.0)), float("-inf"))
    tl.store(LSE + sample.to(tl.int64) * heads + head, lse2)


@triton.jit
def _pool_bwd_kernel(
    Q, K, V, OUT, DOUT, LSE, CU, DK, DV, DQ_PART,
    batch, heads, chunk, softmax_scale, qk_scale_log2,
    stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_ob, stride_oh, stride_dob, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_B: tl.constexpr,
    INT64_INDEX: tl.constexpr,
):
    """One program per (chunk slot, head): gradients for the chunk's tokens.

    Recomputes ``p = exp2(s2 - lse2)`` from the saved base-2 log-sum-exp, then per token
    ``dv = p * dout``, ``ds = p * (dout . v - delta)`` with ``delta = dout . out``,
    ``dk = scale * ds * q``; and ``dq`` for the chunk, ``scale * sum(ds * k)``, into DQ_PART
    (fp32, zeros for gap slots) to be summed per sample (or over all slots for a shared query).
    """
    slot = tl.program_id(0)
    head = tl.program_id(1)
    sample, lo, hi = _locate_chunk(slot, CU, batch, chunk, BLOCK_B)
    sample64 = sample.to(tl.int64)

    tl.static_assert(BLOCK_D >= HEAD_DIM, "one [BLOCK_N, BLOCK_D] tile must hold a whole head")
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(Q + sample64 * stride_qb + head * stride_qh + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    do = tl.load(DOUT + sample64 * stride_dob + head * stride_doh + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    o = tl.load(OUT + sample64 * stride_ob + head * stride_oh + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    delta = tl.sum(do * o, axis=0)
    lse2 = tl.load(LSE + sample64 * heads + head)
    q2 = q * qk_scale_log2

    # dq summed per row lane inside the loop, across lanes once after it (no per-tile barrier).
    dq_rows = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    k_tile = tile_offsets(stride_kt, BLOCK_N, BLOCK_D)
    v_tile = tile_offsets(stride_vt, BLOCK_N, BLOCK_D)
    dk_tile = tile_offsets(stride_dkt, BLOCK_N, BLOCK_D)
    dv_tile = tile_offsets(stride_dvt, BLOCK_N, BLOCK_D)
    k_ptr = K + (_row_offset(lo, stride_kt, INT64_INDEX) + _row_offset(head, stride_kh, INT64_INDEX)) + k_tile
    v_ptr = V + (_row_offset(lo, stride_vt, INT64_INDEX) + _row_offset(head, stride_vh, INT64_INDEX)) + v_tile
    dk_ptr = DK + (_row_offset(lo, stride_dkt, INT64_INDEX) + _row_offset(head, stride_dkh, INT64_INDEX)) + dk_tile
    dv_ptr = DV + (_row_offset(lo, stride_dvt, INT64_INDEX) + _row_offset(head, stride_dvh, INT64_INDEX)) + dv_tile
    for start in range(lo, hi, BLOCK_N):
        n_mask = start + tl.arange(0, BLOCK_N) < hi
        tile_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr, mask=tile_mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr, mask=tile_mask, other=0.0)
        s2 = tl.sum(k * q2[None, :], axis=1)
        p = tl.where(n_mask, tl.math.exp2(s2 - lse2), 0.0)
        dp = tl.sum(v.to(tl.float32) * do[None, :], axis=1)
        ds = p * (dp - delta)
        dv = p[:, None] * do[None, :]
        dk = (ds * softmax_scale)[:, None] * q[None, :]
        tl.store(dv_ptr, dv.to(DV.dtype.element_ty), mask=tile_mask)
        tl.store(dk_ptr, dk.to(DK.dtype.element_ty), mask=tile_mask)
        dq_rows += ds[:, None] * k
        k_ptr += BLOCK_N * stride_kt
        v_ptr += BLOCK_N * stride_vt
        dk_ptr += BLOCK_N * stride_dkt
        dv_ptr += BLOCK_N * stride_dvt

    dq = tl.sum(dq_rows, axis=0)
    part = slot.to(tl.int64) * heads + head
    tl.store(DQ_PART + part * HEAD_DIM + offs_d, dq * softmax_scale, mask=d_mask)


@triton.jit
def _slot_sum_kernel(
    PART, OUT, CU, width, chunk, stride_ob,
    MEAN: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """One program per (sample, block of columns): sum the sample's chunk partials.

    ``PART`` is fp32 ``[num_slots, width]``; ``OUT[sample, :width]`` gets the sum, divided by the
    sample's token count when MEAN (0 for an empty sample), cast to OUT's dtype.
    """
    sample = tl.program_id(0)
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    w_mask = offs_w < width
    seq_start = tl.load(CU + sample)
    seq_end = tl.load(CU + sample + 1)
    first_slot = seq_start // chunk + sample
    num_chunks = tl.cdiv(seq_end - seq_start, chunk)

    acc = tl.zeros([BLOCK_W], dtype=tl.float32)
    for c0 in range(0, num_chunks, BLOCK_S):
        offs_c = c0 + tl.arange(0, BLOCK_S)
        rows = (first_slot + offs_c).to(tl.int64)
        mask = (offs_c < num_chunks)[:, None] & w_mask[None, :]
        acc += tl.sum(tl.load(PART + rows[:, None] * width + offs_w[None, :], mask=mask, other=0.0), axis=0)
    if MEAN:
        acc = acc / tl.maximum(seq_end - seq_start, 1).to(tl.float32)
    tl.store(OUT + sample.to(tl.int64) * stride_ob + offs_w, acc.to(OUT.dtype.element_ty), mask=w_mask)


@triton.jit
def _segment_sum_partial_kernel(
    X, PART, CU, batch, width, chunk, stride_xt,
    BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_B: tl.constexpr, INT64_INDEX: tl.constexpr,
):
    """One program per (chunk slot, block of columns): fp32 column sums of the chunk's tokens."""
    slot = tl.program_id(0)
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    w_mask = offs_w < width
    sample, lo, hi = _locate_chunk(slot, CU, batch, chunk, BLOCK_B)

    acc = tl.zeros([BLOCK_W], dtype=tl.float32)
    x_ptr = X + (_row_offset(lo, stride_xt, INT64_INDEX) + tl.program_id(1) * BLOCK_W) + tile_offsets(
        stride_xt, BLOCK_N, BLOCK_W)
    for start in range(lo, hi, BLOCK_N):
        mask = (start + tl.arange(0, BLOCK_N) < hi)[:, None] & w_mask[None, :]
        acc += tl.sum(tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32), axis=0)
        x_ptr += BLOCK_N * stride_xt
    tl.store(PART + slot.to(tl.int64) * width + offs_w, acc, mask=w_mask)


@triton.jit
def _segment_mean_bwd_kernel(
    DOUT, DX, CU, batch, width, chunk, stride_dob, stride_dxt,
    BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_B: tl.constexpr, INT64_INDEX: tl.constexpr,
):
    """One program per (chunk slot, block of columns): ``dx[t] = dout[sample(t)] / len(sample)``."""
    slot = tl.program_id(0)
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    w_mask = offs_w < width
    sample, lo, hi = _locate_chunk(slot, CU, batch, chunk, BLOCK_B)
    count = tl.maximum(tl.load(CU + sample + 1) - tl.load(CU + sample), 1)
    g = tl.load(DOUT + sample.to(tl.int64) * stride_dob + offs_w, mask=w_mask, other=0.0).to(tl.float32)
    g = (g / count.to(tl.float32)).to(DX.dtype.element_ty)
    dx_ptr = DX + (_row_offset(lo, stride_dxt, INT64_INDEX) + tl.program_id(1) * BLOCK_W) + tile_offsets(
        stride_dxt, BLOCK_N, BLOCK_W)
    g_tile = tl.broadcast_to(g[None, :], (BLOCK_N, BLOCK_W))
    for start in range(lo, hi, BLOCK_N):
        mask = (start + tl.arange(0, BLOCK_N) < hi)[:, None] & w_mask[None, :]
        tl.store(dx_ptr, g_tile, mask=mask)
        dx_ptr += BLOCK_N * stride_dxt


# --- launchers ----------------------------------------------------------------------------------

_BLOCK_B = 64  # samples scanned per step when a program looks up its chunk


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


def pool_config(head_dim: int, device: torch.device, backward: bool) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_D, num_warps) for the pooling kernels.

    Sized by elements of a [BLOCK_N, BLOCK_D] tile per thread: 16 in the forward with 4 warps
    (48-72 registers), 8 in the backward, which keeps four tiles live (64-80 registers with 8
    warps). Spill-free on sm_90, and on sm_80 except the bf16 head_dim-128 forward under Triton 3.9
    (8 bytes of stack in a loop that calls a conversion routine): its alternatives, 8x128 w4 and
    16x128 w8, issue 1.9x and 2.5x the warp-instructions per token (static report), a worse trade
    for a bandwidth-bound kernel. tests/test_aot_pool.py checks the rest. Under the interpreter,
    small tiles.
    """
    block_d = max(16, next_pow2(head_dim))
    if device.type != "cuda":
        return 32, block_d, 4
    if backward:
        num_warps = 8 if block_d >= 64 else 4
        return min(128, 8 * 32 * num_warps // block_d), block_d, num_warps
    return min(128, 16 * 32 * 4 // block_d), block_d, 4


def segment_attention_pool_forward(q, k, v, cu_seqlens, softmax_scale):
    """``(out [batch, heads, head_dim] in k's dtype, lse2 [batch, heads] fp32)``; inputs validated."""
    total_tokens, heads, head_dim = k.shape
    batch = cu_seqlens.shape[0] - 1
    out = k.new_empty((batch, heads, head_dim))
    lse = k.new_empty((batch, heads), dtype=torch.float32)
    if batch == 0 or heads == 0:
        return out, lse
    block_n, block_d, num_warps = pool_config(head_dim, k.device, backward=False)
    chunk = _pick_chunk(total_tokens, heads, block_n, k.device)
    num_slots = total_tokens // chunk + batch
    m_part = torch.empty((num_slots, heads), device=k.device, dtype=torch.float32)
    l_part = torch.empty_like(m_part)
    acc_part = torch.empty((num_slots, heads, head_dim), device=k.device, dtype=torch.float32)
    stride_qb = q.stride(0) if q.dim() == 3 else 0
    qk_scale_log2 = softmax_scale * LOG2E
    _pool_fwd_partial_kernel[(num_slots, heads)](
        q, k, v, cu_seqlens, m_part, l_part, acc_part,
        batch, heads, chunk, qk_scale_log2,
        stride_qb, q.stride(-2), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        HEAD_DIM=head_dim, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_B=_BLOCK_B, INT64_INDEX=needs_int64(k, v),
        num_warps=num_warps,
    )
    _pool_combine_kernel[(batch, heads)](
        m_part, l_part, acc_part, cu_seqlens, out, lse,
        heads, chunk, out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_S=_merge_block(k.device), BLOCK_D=block_d, num_warps=4,
    )
    return out, lse


def segment_attention_pool_backward(dout, q, k, v, out, lse, cu_seqlens, softmax_scale):
    """``(dq, dk, dv)`` shaped like ``q, k, v``; ``lse`` is the forward's ``lse2``."""
    total_tokens, heads, head_dim = k.shape
    batch = cu_seqlens.shape[0] - 1
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    if batch == 0 or heads == 0 or total_tokens == 0:
        dk.zero_()
        dv.zero_()
        return torch.zeros(q.shape, device=q.device, dtype=q.dtype), dk, dv
    block_n, block_d, num_warps = pool_config(head_dim, k.device, backward=True)
    chunk = _pick_chunk(total_tokens, heads, block_n, k.device)
    num_slots = total_tokens // chunk + batch
    dq_part = torch.empty((num_slots, heads, head_dim), device=k.device, dtype=torch.float32)
    shared_query = q.dim() == 2
    _pool_bwd_kernel[(num_slots, heads)](
        q, k, v, out, dout, lse, cu_seqlens, dk, dv, dq_part,
        batch, heads, chunk, softmax_scale, softmax_scale * LOG2E,
        0 if shared_query else q.stride(0), q.stride(-2), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), dout.stride(0), dout.stride(1),
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        HEAD_DIM=head_dim, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_B=_BLOCK_B, INT64_INDEX=needs_int64(k, v, dk, dv),
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
    batch, width = out.shape
    block_w = _slot_sum_block(width, part.device)
    _slot_sum_kernel[(batch, cdiv(width, block_w))](
        part, out, cu_seqlens, width, chunk, out.stride(0),
        MEAN=mean, BLOCK_S=_merge_block(part.device), BLOCK_W=block_w, num_warps=4,
    )


def _slot_sum_block(width: int, device: torch.device) -> int:
    """Columns per program of ``_slot_sum_kernel`` (a [BLOCK_S, BLOCK_W] fp32 tile, 4 warps)."""
    return min(256 if device.type == "cuda" else 64, max(16, next_pow2(width)))


def mean_config(width: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_W, num_warps) for the segment-mean kernels."""
    if device.type != "cuda":
        return 32, min(64, max(16, next_pow2(width))), 4
    return 32, min(256, max(16, next_pow2(width))), 4


def segment_mean_forward(x, cu_seqlens):
    """``x [total_tokens, width]`` -> ``[batch, width]`` in x's dtype (fp32 sums)."""
    total_tokens, width = x.shape
    batch = cu_seqlens.shape[0] - 1
    out = x.new_empty((batch, width))
    if batch == 0 or width == 0:
        return out
    block_n, block_w, num_warps = mean_config(width, x.device)
    chunk = _pick_chunk(total_tokens, cdiv(width, block_w), block_n, x.device)
    num_slots = total_tokens // chunk + batch
    part = torch.empty((num_slots, width), device=x.device, dtype=torch.float32)
    _segment_sum_partial_kernel[(num_slots, cdiv(width, block_w))](
        x, part, cu_seqlens, batch, width, chunk, x.stride(0),
        BLOCK_N=block_n, BLOCK_W=block_w, BLOCK_B=_BLOCK_B, INT64_INDEX=needs_int64(x), num_warps=num_warps,
    )
    _slot_sum(part, out, cu_seqlens, chunk, mean=True)
    return out


def segment_mean_backward(dout, cu_seqlens, total_tokens):
    """``dout [batch, width]`` -> ``dx [total_tokens, width]``: each token gets ``dout / len``."""
    batch, width = dout.shape
    dx = dout.new_empty((total_tokens, width))
    if batch == 0 or width == 0 or total_tokens == 0:
        return dx.zero_()
    block_n, block_w, num_warps = mean_config(width, dout.device)
    chunk = _pick_chunk(total_tokens, cdiv(width, block_w), block_n, dout.device)
    num_slots = total_tokens // chunk + batch
    _segment_mean_bwd_kernel[(num_slots, cdiv(width, block_w))](
        dout, dx, cu_seqlens, batch, width, chunk, dout.stride(0), dx.stride(0),
        BLOCK_N=block_n, BLOCK_W=block_w, BLOCK_B=_BLOCK_B, INT64_INDEX=needs_int64(dx), num_warps=num_warps,
    )
    return dx
