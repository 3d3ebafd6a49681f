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

Only plain pointers and masks are used (no block pointers): the kernels compile with Triton 3.6
and 3.9 alike. Row offsets are int64 when a tensor needs it (see ``_row_offset``).
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): scores are scaled by scale * log2(e) so exp2 can be used


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
def _tile_offsets(stride, ROWS: tl.constexpr, COLS: tl.constexpr):
    """int32 offsets of a [ROWS, COLS] tile from its first row (small enough for int32)."""
    return tl.arange(0, ROWS)[:, None] * stride + tl.arange(0, COLS)[None, :]


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
    k_tile = _tile_offsets(stride_kt, BLOCK_N, BLOCK_D)
    v_tile = _tile_offsets(stride_vt, BLOCK_N, BLOCK_D)
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

    Writes ``out = acc / l`` in OUT's dtype and ``lse`` (natural log, fp32). An empty sample has no
    chunks: its output is 0 and its lse -inf.
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

    nonempty = l_run > 0.0
    out = tl.where(nonempty, acc / tl.where(nonempty, l_run, 1.0), 0.0)
    o_ptr = OUT + sample.to(tl.int64) * stride_ob + head * stride_oh + offs_d
    tl.store(o_ptr, out.to(OUT.dtype.element_ty), mask=d_mask)
    lse = tl.where(nonempty, (m_run + tl.math.log2(tl.where(nonempty, l_run, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    tl.store(LSE + sample.to(tl.int64) * heads + head, lse)


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

    Recomputes ``p = exp(s - lse)`` from the saved log-sum-exp, then per token
    ``dv = p * dout``, ``ds = p * (dout . v - delta)`` with ``delta = dout . out``,
    ``dk = scale * ds * q``; and ``dq`` for the chunk, ``scale * sum(ds * k)``, into DQ_PART
    (fp32, zeros for gap slots) to be summed per sample (or over all slots for a shared query).
    """
    slot = tl.program_id(0)
    head = tl.program_id(1)
    sample, lo, hi = _locate_chunk(slot, CU, batch, chunk, BLOCK_B)
    sample64 = sample.to(tl.int64)

    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(Q + sample64 * stride_qb + head * stride_qh + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    do = tl.load(DOUT + sample64 * stride_dob + head * stride_doh + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    o = tl.load(OUT + sample64 * stride_ob + head * stride_oh + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    delta = tl.sum(do * o, axis=0)
    lse2 = tl.load(LSE + sample64 * heads + head) * 1.4426950408889634
    q2 = q * qk_scale_log2

    # dq summed per row lane inside the loop, across lanes once after it (no per-tile barrier).
    dq_rows = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    k_tile = _tile_offsets(stride_kt, BLOCK_N, BLOCK_D)
    v_tile = _tile_offsets(stride_vt, BLOCK_N, BLOCK_D)
    dk_tile = _tile_offsets(stride_dkt, BLOCK_N, BLOCK_D)
    dv_tile = _tile_offsets(stride_dvt, BLOCK_N, BLOCK_D)
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
    x_ptr = X + (_row_offset(lo, stride_xt, INT64_INDEX) + tl.program_id(1) * BLOCK_W) + _tile_offsets(
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
    dx_ptr = DX + (_row_offset(lo, stride_dxt, INT64_INDEX) + tl.program_id(1) * BLOCK_W) + _tile_offsets(
        stride_dxt, BLOCK_N, BLOCK_W)
    g_tile = tl.broadcast_to(g[None, :], (BLOCK_N, BLOCK_W))
    for start in range(lo, hi, BLOCK_N):
        mask = (start + tl.arange(0, BLOCK_N) < hi)[:, None] & w_mask[None, :]
        tl.store(dx_ptr, g_tile, mask=mask)
        dx_ptr += BLOCK_N * stride_dxt
