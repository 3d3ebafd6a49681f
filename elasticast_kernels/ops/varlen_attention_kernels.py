"""Triton kernels for varlen self-attention on the packed layout, and their launchers.

Layout: ``q, k, v, out`` are ``[total_tokens, heads, head_dim]`` with a unit stride on
``head_dim``; sample ``b`` owns tokens ``cu_seqlens[b]:cu_seqlens[b + 1]`` and attends only to
itself. The log-sum-exp is ``[heads, total_tokens]`` fp32, kept in the base-2 domain with the
softmax scale folded in (``lse2 = log2(sum_j 2^(scale * log2(e) * q.k_j))``) so that the backward
recomputes probabilities with one ``exp2``. Its rows are padded to a multiple of 16 tokens
(``lse_columns``) so their stride is 16-divisible.

Scheduling without a host sync: a kernel that works on blocks of ``BLOCK`` tokens of each sample
ranks the samples by decreasing length on the device (`ops._common.longest_first`: ``order`` and the
cumulative lengths ``c`` in that order) and gives the sample of rank ``r`` the program slots
``[r + c[r] // BLOCK, r + 1 + c[r + 1] // BLOCK)``. That range holds at least
``ceil(len / BLOCK)`` slots, so ``total_tokens // BLOCK + batch`` slots cover every block of every
sample, whatever the lengths, and waste at most one program per sample (it exits at once). Each
program finds its rank by a binary search over ``c`` (``ceil(log2(batch + 1))`` scalar loads).
The grid is one axis of ``slots * heads`` programs with the head varying fastest
(``GRID_ORDER``): the heaviest programs (longest samples, all heads) start first and the launch
ends on light ones, which keeps a ragged grid of a few waves from idling SMs at its tail. Only
host facts (tensor shapes) size the grid, so neither ``max_seqlen`` nor any ``.item()`` is needed;
outputs do not depend on the order.

Kernels (FlashAttention-2 structure):
- ``_fwd_kernel``: one program per (query block, head); online softmax over the sample's key
  blocks; writes ``out`` and the log-sum-exp.
- ``_bwd_preprocess_kernel``: ``delta = rowsum(dout * out)`` per (token, head), fp32.
- ``_bwd_dkdv_kernel``: one program per (key block, head), loops over the sample's query blocks.
- ``_bwd_dq_kernel``: one program per (query block, head), loops over the sample's key blocks.
Two backward kernels instead of atomics: deterministic, and no fp32 scratch for dq.

Every loop over blocks runs in two parts: blocks entirely inside the sample (and, for causal,
entirely below the diagonal) without any masking, then the few boundary blocks with masks. Causal
skips the blocks above the diagonal and hands query blocks out heaviest first. All
softmax statistics are fp32. Token indices are cast to int64 before multiplying by strides.
Only plain pointers with masks are used (no block pointers): they compile on Triton 3.6 and 3.9.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from elasticast_kernels.ops._common import LOG2E, longest_first, lse_columns, triton_interpret
from elasticast_kernels.ops._triton_common import tile_offsets

# --- autotune configs -------------------------------------------------------------------------
# Candidates come from the static kernel report (``elasticast-bench --suite static``: every
# candidate compiled for sm_80/sm_90 under Triton 3.6 and 3.9, read from SASS) and the AOT tests
# (tests/test_aot_varlen.py). Every candidate below is spill-free for its arch family at
# head_dim 32/64/128, fp16/bf16, causal or not, and issues exactly the minimum tensor-core work
# (MMA ratio 1.0; ``_check_tile`` rejects the tilings that replicate it). A candidate was dropped
# when another one of the same list, under both Triton versions, issues no more SASS
# instructions per 128x64 tile, keeps at least as many warps resident per SM and owns no more rows
# per program: it cannot win on any of the three, so it only lengthens first-call autotuning.
# Under the interpreter several configs fail ("0 active drivers") and small blocks keep the tests
# exercising multi-block samples at tiny sizes: one fixed config each.

# Launch order of every kernel's programs, as the static report's grid simulation models it
# (elasticast_kernels/bench/static/schedule.py).
GRID_ORDER = "heads_fastest_longest_first"


def _config(block_m: int, block_n: int, num_warps: int, num_stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=num_warps, num_stages=num_stages)


# arch family (90: sm_90 and newer, 80: sm_8x) -> kernel -> head_dim -> configs. The first config
# of each list is the default that the AOT test reports on. head_dim 32 uses the 64 list unless
# it has its own.
# fwd/dq: BLOCK_M queries per program, BLOCK_N keys per step; dkdv: BLOCK_N keys per program,
# BLOCK_M queries per step.
GPU_CONFIGS = {
    90: {
        "fwd": {
            64: [_config(128, 64, 8, 3), _config(128, 128, 8, 3), _config(64, 64, 4, 3), _config(128, 64, 4, 3)],
            128: [_config(128, 64, 8, 3)],
        },
        "dkdv": {
            64: [_config(32, 64, 4, 3), _config(64, 64, 4, 3), _config(64, 128, 8, 2)],
            128: [_config(32, 64, 4, 2), _config(32, 128, 8, 2)],
        },
        "dq": {
            64: [_config(64, 32, 4, 3), _config(64, 64, 4, 3)],
            128: [_config(128, 64, 8, 2), _config(64, 32, 4, 2)],
        },
    },
    80: {
        "fwd": {
            # head_dim 32: ptxas caps these tiles at 128 registers: 128x64 w8 spills when causal, and
            # the 64-row tiles spill under one Triton version or the other
            32: [_config(128, 64, 4, 3)],
            64: [_config(128, 64, 8, 3), _config(64, 64, 4, 3)],
            128: [_config(128, 32, 8, 3)],  # s2 issues fewer instructions but spills when causal
        },
        "dkdv": {
            32: [_config(32, 128, 8, 3), _config(32, 64, 4, 1)],
            64: [_config(32, 64, 4, 3), _config(32, 128, 8, 3)],
            # unpipelined: every pipelined tile with minimal MMA work spills here under 3.6 or 3.9
            128: [_config(32, 64, 4, 1)],
        },
        "dq": {
            64: [_config(64, 32, 4, 3), _config(128, 32, 8, 3), _config(128, 64, 8, 2), _config(64, 64, 4, 3)],
            128: [_config(128, 32, 8, 2)],
        },
    },
}
INTERPRETER_CONFIGS = {"fwd": _config(32, 16, 4, 1), "dkdv": _config(16, 32, 4, 1), "dq": _config(32, 16, 4, 1)}


def _check_tiles() -> None:
    """Reject, at import, a candidate that breaks a tiling rule (see ``_check_tile``)."""
    for kernel, config in INTERPRETER_CONFIGS.items():
        _check_tile(kernel, config, gpu=False)
    for family in GPU_CONFIGS.values():
        for kernel, tables in family.items():
            for config in (c for table in tables.values() for c in table):
                _check_tile(kernel, config, gpu=True)


def _check_tile(kernel: str, config: triton.Config, gpu: bool) -> None:
    """Two rules, in the terms of the program's own block (``rows``: BLOCK_M for fwd/dq, BLOCK_N for
    dkdv) and its per-step block (``step``):

    1. ``rows % step == 0``: the loops split blocks into unmasked and masked ranges assuming it.
    2. GPU configs only: ``rows >= 16 * num_warps`` and ``step >= 32``. Triton spreads a program's
       warps over the rows of its MMA tiles (16 rows per warp for mma.sync, 64 per 4-warp group
       for wgmma); when the rows run out it replicates the tensor-core work (measured 1.5-2x in
       the static report), and a 16-wide step replicates dK/dV's MMA on sm_80.

    Raises:
        ValueError: a rule is broken (the message states the rule).
    """
    rows, step = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    if kernel == "dkdv":
        rows, step = step, rows
    if rows % step:
        raise ValueError(f"{kernel} config {config}: the program block ({rows}) must be a multiple of the "
                         f"per-step block ({step}) for the unmasked/masked split")
    if gpu and (rows < 16 * config.num_warps or step < 32):
        raise ValueError(f"{kernel} config {config}: duplicates tensor-core work; a GPU config needs program "
                         f"rows >= 16 * num_warps and a per-step block >= 32 (rows {rows}, num_warps "
                         f"{config.num_warps}, step {step})")


_check_tiles()


def arch_family(capability: tuple[int, int]) -> int:
    """90 for sm_90 and newer (Hopper, Blackwell), 80 for older GPUs."""
    return 90 if capability[0] >= 9 else 80


def gpu_configs(kernel: str, head_dim: int, family: int = 90) -> list[triton.Config]:
    """The autotuning candidates of ``kernel`` ("fwd", "dkdv", "dq") for ``head_dim`` on an arch family."""
    tables = GPU_CONFIGS[family][kernel]
    if head_dim <= 32 and 32 in tables:
        return tables[32]
    return tables[64 if head_dim <= 64 else 128]


@functools.lru_cache(maxsize=None)
def _device_family(device_index: int) -> int:
    return arch_family(torch.cuda.get_device_capability(device_index))


def _autotune_args(kernel: str) -> dict:
    if triton_interpret():
        return {"configs": [INTERPRETER_CONFIGS[kernel]]}

    def prune(configs, named_args, **kwargs):
        head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
        return gpu_configs(kernel, head_dim, _device_family(named_args["Q"].device.index or 0))

    configs = [c for family in GPU_CONFIGS.values() for table in family[kernel].values() for c in table]
    return {"configs": configs, "prune_configs_by": {"early_config_prune": prune}}


_TUNE_KEY = ["HEAD_DIM", "CAUSAL", "SEQ_BUCKET"]
# integers that change from batch to batch: no value specialisation (it would only add compiles)
_VARYING_INTS = ["batch", "n_search", "SEQ_BUCKET"]


# --- shared device helpers ----------------------------------------------------------------------


@triton.jit
def _program(heads):
    """This program's (slot, head): heads vary fastest, so the heads of one block start together."""
    pid = tl.program_id(0)
    return pid // heads, (pid % heads).to(tl.int64)


@triton.jit
def _locate_block(CU_SEQLENS, SCHED_ORDER, SCHED_CU, slot, batch, n_search, BLOCK: tl.constexpr):
    """Program slot -> (first token of its block, sample start, sample end).

    Samples are laid out longest first: ``SCHED_ORDER[r]`` is the sample of rank ``r`` and
    ``SCHED_CU`` the cumulative lengths in rank order. Rank ``r`` owns slots
    ``r + SCHED_CU[r] // BLOCK ...``; find the last rank whose first slot is ``<= slot`` by
    bisection. The block is past the sample's end (``start >= end``) for the one spare slot a
    sample may get, and for empty samples: the caller exits then.
    """
    lo = tl.full([], 0, tl.int32)
    hi = tl.full([], 0, tl.int32) + batch
    for _ in range(n_search):
        mid = (lo + hi) // 2
        first_slot = mid + tl.load(SCHED_CU + mid) // BLOCK
        right = first_slot <= slot
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid)
    rank_start = tl.load(SCHED_CU + lo)
    seq_start = tl.load(CU_SEQLENS + tl.load(SCHED_ORDER + lo))
    seq_end = seq_start + (tl.load(SCHED_CU + lo + 1) - rank_start)
    block_start = seq_start + (slot - lo - rank_start // BLOCK) * BLOCK
    return block_start, seq_start, seq_end


@triton.jit
def _row_tile(BASE, head, stride_h, first_row, stride_t, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Pointers to ``head``'s ``[ROWS, HEAD_DIM]`` tile whose first token is ``first_row`` (int64)."""
    return BASE + head * stride_h + first_row * stride_t + tile_offsets(stride_t, ROWS, HEAD_DIM)


@triton.jit
def _key_ranges(q_start, seq_start, seq_end, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Split a query block's keys into ``[seq_start, full_end)``, which needs no mask, and
    ``[full_end, masked_end)``, which crosses the sample end or (causal) the diagonal."""
    if CAUSAL:
        # keys before the block's first query are visible to all its rows: no mask there
        full_end = q_start
        masked_end = tl.minimum(q_start + BLOCK_M, seq_end)
    else:
        full_end = seq_start + ((seq_end - seq_start) // BLOCK_N) * BLOCK_N
        masked_end = seq_end
    return full_end, masked_end


@triton.jit
def _heaviest_first(block_start, seq_start, seq_end, BLOCK: tl.constexpr):
    """Causal: hand a sample's query blocks out last-first. The last queries see the most keys, so
    the longest programs start first and the grid ends on short ones (a shorter tail)."""
    n_blocks = tl.cdiv(seq_end - seq_start, BLOCK)
    return seq_start + (n_blocks - 1 - (block_start - seq_start) // BLOCK) * BLOCK


# --- forward ------------------------------------------------------------------------------------


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kt, stride_vt, lo, hi, offs_m, seq_end, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
               NEG_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online softmax over key blocks ``[lo, hi)``; MASKED blocks may cross the sample end or the diagonal.

    ``m_i`` is the running row max of the scaled scores (log2 domain). Unmasked blocks take the row
    extreme of the raw scores and fold the scale into the exp2 argument (one FMA per score instead
    of a multiply and a subtract); the extreme is the min when the scale is negative (NEG_SCALE),
    since ``max(c * s) = c * min(s)`` for ``c < 0``.
    """
    k_tile = tile_offsets(stride_kt, BLOCK_N, HEAD_DIM)
    v_tile = tile_offsets(stride_vt, BLOCK_N, HEAD_DIM)
    # unmasked blocks: K/V pointers set once and advanced by a block per step (no int64 rebuild);
    # the few masked blocks rebuild theirs (carrying pointers there too spilled on sm_80 at
    # head_dim 128, causal)
    k_ptrs = K_head + tl.cast(lo, tl.int64) * stride_kt + k_tile
    v_ptrs = V_head + tl.cast(lo, tl.int64) * stride_vt + v_tile
    for start_n in range(lo, hi, BLOCK_N):
        if MASKED:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            key_ok = offs_n < seq_end
            k = tl.load(K_head + tl.cast(start_n, tl.int64) * stride_kt + k_tile, mask=key_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASKED:
            # few boundary blocks: scale first, then -inf masks right for any scale (negative or 0 too)
            s = s * qk_scale
            valid = key_ok[None, :]
            if CAUSAL:
                valid = valid & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # a row with no valid key so far keeps m = -inf: subtract 0 instead (exp2(-inf) = 0, no NaN)
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_sub[:, None])
        else:
            if NEG_SCALE:
                row_extreme = tl.min(s, 1)
            else:
                row_extreme = tl.max(s, 1)
            m_new = tl.maximum(m_i, row_extreme * qk_scale)
            m_sub = m_new
            p = tl.math.exp2(tl.fma(s, qk_scale, -m_new[:, None]))
        # rescale what was accumulated under the old running max
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(V_head + tl.cast(start_n, tl.int64) * stride_vt + v_tile, mask=key_ok[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
            k_ptrs += BLOCK_N * stride_kt
            v_ptrs += BLOCK_N * stride_vt
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(key=_TUNE_KEY, **_autotune_args("fwd"))
@triton.jit(do_not_specialize=_VARYING_INTS)
def _fwd_kernel(Q, K, V, O, LSE, CU_SEQLENS, SCHED_ORDER, SCHED_CU,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                stride_lse_h, heads, batch, n_search, qk_scale, SEQ_BUCKET,
                HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, NEG_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    slot, head = _program(heads)
    q_start, seq_start, seq_end = _locate_block(CU_SEQLENS, SCHED_ORDER, SCHED_CU, slot, batch, n_search, BLOCK_M)
    if q_start >= seq_end:
        return
    if CAUSAL:
        q_start = _heaviest_first(q_start, seq_start, seq_end, BLOCK_M)
    offs_m = q_start + tl.arange(0, BLOCK_M)
    row_ok = offs_m < seq_end
    first_row = q_start.to(tl.int64)
    q = tl.load(_row_tile(Q, head, stride_qh, first_row, stride_qt, BLOCK_M, HEAD_DIM),
                mask=row_ok[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    K_head = K + head * stride_kh
    V_head = V + head * stride_vh
    # the unmasked/masked split ends the unmasked keys on a BLOCK_N boundary of the query block
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "BLOCK_M must be a multiple of BLOCK_N")
    full_end, masked_end = _key_ranges(q_start, seq_start, seq_end, CAUSAL, BLOCK_M, BLOCK_N)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kt, stride_vt, seq_start, full_end,
                               offs_m, seq_end, qk_scale, HEAD_DIM, BLOCK_N, CAUSAL, False, NEG_SCALE, DOT_PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kt, stride_vt, full_end, masked_end,
                               offs_m, seq_end, qk_scale, HEAD_DIM, BLOCK_N, CAUSAL, True, NEG_SCALE, DOT_PRECISION)

    # padding rows (past the sample) saw no key: divide by 1 there. A real row always sees a key
    # (itself when causal), so l = 0 there means every score was -inf (an inf in q or k): 0 / 0 = NaN
    # then, as in any softmax, rather than a silent 0
    l_i = tl.where(row_ok, l_i, 1.0)
    out = acc / l_i[:, None]
    tl.store(_row_tile(O, head, stride_oh, first_row, stride_ot, BLOCK_M, HEAD_DIM),
             out.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + head * stride_lse_h + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)


# --- backward -----------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["total_tokens"])
def _bwd_preprocess_kernel(O, DO, DELTA, stride_ot, stride_oh, stride_dot, stride_doh, stride_delta_h,
                           total_tokens, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """``delta[h, t] = sum_d dout[t, h, d] * out[t, h, d]`` in fp32 (the softmax-Jacobian term)."""
    head = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs < total_tokens
    rows = offs.to(tl.int64)[:, None]
    o = tl.load(O + head * stride_oh + rows * stride_ot + offs_d[None, :], mask=ok[:, None], other=0.0)
    do = tl.load(DO + head * stride_doh + rows * stride_dot + offs_d[None, :], mask=ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + head * stride_delta_h + offs, delta, mask=ok)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qt, stride_dot, lo, hi,
                    offs_n, seq_end, qk_scale,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """Accumulate dK, dV of one key block over query blocks ``[lo, hi)`` (transposed scores [N, M])."""
    q_tile = tile_offsets(stride_qt, BLOCK_M, HEAD_DIM)
    do_tile = tile_offsets(stride_dot, BLOCK_M, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_block = Q_head + tl.cast(start_m, tl.int64) * stride_qt
        do_block = DO_head + tl.cast(start_m, tl.int64) * stride_dot
        if MASKED:
            q_ok = offs_m < seq_end
            q = tl.load(q_block + q_tile, mask=q_ok[:, None], other=0.0)
            do = tl.load(do_block + do_tile, mask=q_ok[:, None], other=0.0)
            # +inf for rows past the sample: their probabilities come out exactly 0
            lse = tl.load(LSE_head + offs_m, mask=q_ok, other=float("inf"))
            delta = tl.load(DELTA_head + offs_m, mask=q_ok, other=0.0)
        else:
            q = tl.load(q_block + q_tile)
            do = tl.load(do_block + do_tile)
            lse = tl.load(LSE_head + offs_m)
            delta = tl.load(DELTA_head + offs_m)
        # P^T recomputed from the saved log-sum-exp (base 2, scale folded in)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        p_t = tl.math.exp2(s_t - lse[None, :])
        if MASKED:
            valid = q_ok[None, :]
            if CAUSAL:
                valid = valid & (offs_m[None, :] >= offs_n[:, None])
            p_t = tl.where(valid, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.autotune(key=_TUNE_KEY, **_autotune_args("dkdv"))
@triton.jit(do_not_specialize=_VARYING_INTS)
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, CU_SEQLENS, SCHED_ORDER, SCHED_CU,
                     stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
                     stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_lse_h,
                     heads, batch, n_search, qk_scale, sm_scale, SEQ_BUCKET,
                     HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    slot, head = _program(heads)
    k_start, seq_start, seq_end = _locate_block(CU_SEQLENS, SCHED_ORDER, SCHED_CU, slot, batch, n_search, BLOCK_N)
    if k_start >= seq_end:
        return
    offs_n = k_start + tl.arange(0, BLOCK_N)
    key_ok = offs_n < seq_end
    first_row = k_start.to(tl.int64)
    k = tl.load(_row_tile(K, head, stride_kh, first_row, stride_kt, BLOCK_N, HEAD_DIM),
                mask=key_ok[:, None], other=0.0)
    v = tl.load(_row_tile(V, head, stride_vh, first_row, stride_vt, BLOCK_N, HEAD_DIM),
                mask=key_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    Q_head = Q + head * stride_qh
    DO_head = DO + head * stride_doh
    LSE_head = LSE + head * stride_lse_h
    DELTA_head = DELTA + head * stride_lse_h
    # the diagonal range [k_start, k_start + BLOCK_N) must hold whole query steps
    tl.static_assert(BLOCK_N % BLOCK_M == 0, "BLOCK_N must be a multiple of BLOCK_M")
    if CAUSAL:
        # queries of the diagonal block see only part of it; later queries see all of it
        diag_end = tl.minimum(k_start + BLOCK_N, seq_end)
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qt, stride_dot,
                                 k_start, diag_end, offs_n, seq_end, qk_scale,
                                 HEAD_DIM, BLOCK_M, CAUSAL, True, DOT_PRECISION)
        full_start = diag_end
    else:
        full_start = seq_start
    full_end = full_start + ((seq_end - full_start) // BLOCK_M) * BLOCK_M
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qt, stride_dot,
                             full_start, full_end, offs_n, seq_end, qk_scale,
                             HEAD_DIM, BLOCK_M, CAUSAL, False, DOT_PRECISION)
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qt, stride_dot,
                             full_end, seq_end, offs_n, seq_end, qk_scale,
                             HEAD_DIM, BLOCK_M, CAUSAL, True, DOT_PRECISION)
    tl.store(_row_tile(DK, head, stride_dkh, first_row, stride_dkt, BLOCK_N, HEAD_DIM),
             (dk * sm_scale).to(DK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(_row_tile(DV, head, stride_dvh, first_row, stride_dvt, BLOCK_N, HEAD_DIM),
             dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


@triton.jit
def _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kt, stride_vt, lo, hi, offs_m, seq_end, qk_scale,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    """Accumulate dQ of one query block over key blocks ``[lo, hi)``."""
    k_tile = tile_offsets(stride_kt, BLOCK_N, HEAD_DIM)
    v_tile = tile_offsets(stride_vt, BLOCK_N, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_block = K_head + tl.cast(start_n, tl.int64) * stride_kt
        v_block = V_head + tl.cast(start_n, tl.int64) * stride_vt
        if MASKED:
            key_ok = offs_n < seq_end
            k = tl.load(k_block + k_tile, mask=key_ok[:, None], other=0.0)
            v = tl.load(v_block + v_tile, mask=key_ok[:, None], other=0.0)
        else:
            k = tl.load(k_block + k_tile)
            v = tl.load(v_block + v_tile)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        if MASKED:
            valid = key_ok[None, :]
            if CAUSAL:
                valid = valid & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(valid, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.autotune(key=_TUNE_KEY, **_autotune_args("dq"))
@triton.jit(do_not_specialize=_VARYING_INTS)
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, CU_SEQLENS, SCHED_ORDER, SCHED_CU,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
                   stride_dqt, stride_dqh, stride_lse_h,
                   heads, batch, n_search, qk_scale, sm_scale, SEQ_BUCKET,
                   HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    slot, head = _program(heads)
    q_start, seq_start, seq_end = _locate_block(CU_SEQLENS, SCHED_ORDER, SCHED_CU, slot, batch, n_search, BLOCK_M)
    if q_start >= seq_end:
        return
    if CAUSAL:
        q_start = _heaviest_first(q_start, seq_start, seq_end, BLOCK_M)
    offs_m = q_start + tl.arange(0, BLOCK_M)
    row_ok = offs_m < seq_end
    first_row = q_start.to(tl.int64)
    q = tl.load(_row_tile(Q, head, stride_qh, first_row, stride_qt, BLOCK_M, HEAD_DIM),
                mask=row_ok[:, None], other=0.0)
    do = tl.load(_row_tile(DO, head, stride_doh, first_row, stride_dot, BLOCK_M, HEAD_DIM),
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + head * stride_lse_h + offs_m, mask=row_ok, other=float("inf"))  # padding rows: p = 0
    delta = tl.load(DELTA + head * stride_lse_h + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    K_head = K + head * stride_kh
    V_head = V + head * stride_vh
    # the unmasked/masked split ends the unmasked keys on a BLOCK_N boundary of the query block
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "BLOCK_M must be a multiple of BLOCK_N")
    full_end, masked_end = _key_ranges(q_start, seq_start, seq_end, CAUSAL, BLOCK_M, BLOCK_N)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kt, stride_vt, seq_start, full_end,
                       offs_m, seq_end, qk_scale, HEAD_DIM, BLOCK_N, CAUSAL, False, DOT_PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kt, stride_vt, full_end, masked_end,
                       offs_m, seq_end, qk_scale, HEAD_DIM, BLOCK_N, CAUSAL, True, DOT_PRECISION)
    tl.store(_row_tile(DQ, head, stride_dqh, first_row, stride_dqt, BLOCK_M, HEAD_DIM),
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


# --- launchers ----------------------------------------------------------------------------------

_PREPROCESS_BLOCK = 64


def seqlen_bucket(max_seqlen: int) -> int:
    """Autotune bucket: next power of two of the longest (or mean) sample, clamped to [128, 8192]."""
    return min(max(triton.next_power_of_2(max(max_seqlen, 1)), 128), 8192)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 products (the GPU would otherwise use TF32); 16-bit: tensor cores
    return "ieee" if dtype == torch.float32 else "tf32"


def _schedule(cu_seqlens: torch.Tensor) -> tuple[int, int]:
    """(batch, bisection steps) from host facts only."""
    batch = cu_seqlens.numel() - 1
    return batch, max(1, batch.bit_length())


def _stride2(t: torch.Tensor) -> tuple[int, int]:
    """(token stride, head stride) of a [total, heads, head_dim] tensor."""
    return t.stride(0), t.stride(1)


def varlen_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             seq_hint: int, softmax_scale: float, causal: bool
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: returns ``out`` [total, heads, head_dim] and ``lse2`` [heads, lse_columns(total)] fp32.

    Inputs are validated by the caller (unit stride on head_dim, head_dim 32, 64 or 128).
    ``seq_hint`` (max or mean sample length) only picks the autotune bucket.
    """
    total, heads, head_dim = q.shape
    out = torch.empty((total, heads, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((heads, lse_columns(total)), dtype=torch.float32, device=q.device)
    batch, n_search = _schedule(cu_seqlens)
    if total == 0 or batch == 0 or heads == 0:
        return out.zero_(), lse  # no sample owns a token (invalid unless total == 0): never garbage
    grid = lambda meta: ((total // meta["BLOCK_M"] + batch) * heads,)  # noqa: E731
    _fwd_kernel[grid](
        q, k, v, out, lse, cu_seqlens, *longest_first(cu_seqlens),
        *_stride2(q), *_stride2(k), *_stride2(v), *_stride2(out), lse.stride(0),
        heads, batch, n_search, softmax_scale * LOG2E, seqlen_bucket(seq_hint),
        HEAD_DIM=head_dim, CAUSAL=causal, NEG_SCALE=softmax_scale < 0, DOT_PRECISION=_dot_precision(q.dtype),
    )
    return out, lse


def varlen_attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              out: torch.Tensor, lse: torch.Tensor, cu_seqlens: torch.Tensor, seq_hint: int,
                              softmax_scale: float, causal: bool
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the three backward kernels: returns ``dq, dk, dv`` shaped and typed like ``q, k, v``."""
    total, heads, head_dim = q.shape
    dq = torch.empty((total, heads, head_dim), dtype=q.dtype, device=q.device)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    batch, n_search = _schedule(cu_seqlens)
    if total == 0 or heads == 0:
        return dq, dk, dv
    if batch == 0:  # tokens outside every sample get no gradient
        return dq.zero_(), dk.zero_(), dv.zero_()
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    delta = torch.empty_like(lse)
    _bwd_preprocess_kernel[(triton.cdiv(total, _PREPROCESS_BLOCK), heads)](
        out, dout, delta, *_stride2(out), *_stride2(dout), delta.stride(0), total,
        HEAD_DIM=head_dim, BLOCK=_PREPROCESS_BLOCK,
    )
    qk_scale = softmax_scale * LOG2E
    bucket = seqlen_bucket(seq_hint)
    precision = _dot_precision(q.dtype)
    order = longest_first(cu_seqlens)
    dkdv_grid = lambda meta: ((total // meta["BLOCK_N"] + batch) * heads,)  # noqa: E731
    _bwd_dkdv_kernel[dkdv_grid](
        q, k, v, dout, dk, dv, lse, delta, cu_seqlens, *order,
        *_stride2(q), *_stride2(k), *_stride2(v), *_stride2(dout), *_stride2(dk), *_stride2(dv), lse.stride(0),
        heads, batch, n_search, qk_scale, softmax_scale, bucket,
        HEAD_DIM=head_dim, CAUSAL=causal, DOT_PRECISION=precision,
    )
    dq_grid = lambda meta: ((total // meta["BLOCK_M"] + batch) * heads,)  # noqa: E731
    _bwd_dq_kernel[dq_grid](
        q, k, v, dout, dq, lse, delta, cu_seqlens, *order,
        *_stride2(q), *_stride2(k), *_stride2(v), *_stride2(dout), *_stride2(dq), lse.stride(0),
        heads, batch, n_search, qk_scale, softmax_scale, bucket,
        HEAD_DIM=head_dim, CAUSAL=causal, DOT_PRECISION=precision,
    )
    return dq, dk, dv


__all__ = ["varlen_attention_forward", "varlen_attention_backward", "seqlen_bucket"]
