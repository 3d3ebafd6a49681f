"""Triton kernels for varlen attention on the packed layout, and their launchers.

Layout: ``q, out`` are ``[total_q, heads, head_dim]`` and ``k, v`` ``[total_k, heads_k, head_dim]``
with a unit stride on ``head_dim``; sample ``b`` owns queries ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]``
and keys ``cu_seqlens_k[b]:cu_seqlens_k[b + 1]`` and attends only within itself. flash-attn's
semantics throughout:

- grouped heads (GQA/MQA): query head ``h`` reads key head ``h // (heads // heads_k)``;
- cross-attention: the two offsets may differ; query ``i`` of a sample is aligned with key
  ``i + len_k - len_q`` (bottom-right), in packed tokens key ``t + diag`` for query token ``t``
  with ``diag = k_end - q_end``;
- a window ``(left, right)`` (``-1``: unbounded; causal is ``(left, 0)``) lets query token ``t``
  see keys ``[t + diag - left, t + diag + right]`` of its sample;
- ``softcap > 0`` replaces the scaled score ``s`` by ``softcap * tanh(s / softcap)``;
- a query that sees no key at all (the window, the causal alignment or an empty key range) gives
  output 0 and log-sum-exp ``+inf``. A query whose scores are all ``-inf`` because of its data
  (an inf in q or k) gives NaN, as any softmax would.

The log-sum-exp is ``[heads, lse_columns(total_q)]`` fp32, kept in the base-2 domain with the
softmax scale folded in (``lse2 = log2(sum_j 2^(scale * log2(e) * q.k_j))``, capped scores when
``softcap > 0``) so that the backward recomputes probabilities with one ``exp2``. Its rows are
padded to a multiple of 16 tokens (``lse_columns``) so their stride is 16-divisible.

Scheduling without a host sync: a kernel that works on blocks of ``BLOCK`` tokens of each sample
(query blocks for the forward and dQ, key blocks for dK/dV) takes the samples ranked by decreasing
length on that side (`ops._common.longest_first`: ``order`` and the cumulative lengths ``c`` in
that order, computed once per layout by the caller) and gives the sample of rank ``r`` the program
slots ``[r + c[r] // BLOCK, r + 1 + c[r + 1] // BLOCK)``. That range holds at least
``ceil(len / BLOCK)`` slots, so ``total // BLOCK + batch`` slots cover every block of every
sample, whatever the lengths, and waste at most one program per sample (it exits at once). Each
program finds its rank by a binary search over ``c`` (``ceil(log2(batch + 1))`` scalar loads).
The grid is one axis of ``slots * heads`` programs with the head varying fastest
(``GRID_ORDER``): the heaviest programs (longest samples, all heads) start first and the launch
ends on light ones, which keeps a ragged grid of a few waves from idling SMs at its tail. Only
host facts (tensor shapes) size the grid, so neither ``max_seqlen`` nor any ``.item()`` is needed;
outputs do not depend on the order.

Kernels (FlashAttention-2 structure):
- ``_fwd_kernel``: one program per (query block, head); online softmax over the key blocks the
  block can see; writes ``out`` and the log-sum-exp.
- ``_bwd_preprocess_kernel``: ``delta = rowsum(dout * out)`` per (token, head), fp32.
- ``_bwd_dkdv_kernel``: one program per (key block, key head); loops over the query heads of its
  group and, for each, over the query blocks that can see the key block. The group's sum stays in
  registers: deterministic, no atomics.
- ``_bwd_dq_kernel``: one program per (query block, head), loops over the visible key blocks.
Two backward kernels instead of atomics: deterministic, and no fp32 scratch for dq.

Loop bounds, not masks, skip what a block cannot see (`_spans`): a program visits only the blocks
between the first and the last visible one, so a fixed window costs time linear in the length.
Those blocks run in three ranges: the leading boundary (a window's left edge) and the trailing one
(the causal/right edge and the sample end) with masks, the blocks in between, visible to every
row of the program, without any. `program_trips` is the same arithmetic in Python (the static
report's trip counts; a test checks it against the kernels' own counts). Features a launch does
not use are constexpr-disabled, so self-attention without a window or softcap compiles to the
same code as before they existed. All softmax statistics are fp32. Token indices are cast to
int64 before multiplying by strides. Only plain pointers with masks are used (no block pointers):
they compile on Triton 3.6 and 3.9.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Mapping

import torch
import triton
import triton.language as tl

from elasticast_kernels._checks import check_int
from elasticast_kernels.ops._common import LOG2E, lse_columns, triton_interpret
from elasticast_kernels.ops._triton_common import cdiv, tile_offsets

# head_dims the kernels are compiled for; the op pads other sizes with zeros to the next of these
KERNEL_HEAD_DIMS = (32, 64, 128, 256)

# --- autotune configs -------------------------------------------------------------------------
# Candidates come from the static kernel report (tools/static_report: every candidate compiled
# for sm_80/sm_90 under Triton 3.6 and 3.9 and every feature variant, read from SASS) and the AOT
# tests (tests/test_aot_varlen.py). Every candidate below is spill-free for its arch family at
# its head_dim, fp16/bf16, with or without causal/window/softcap/grouped heads/cross-attention,
# unless a comment says otherwise, and issues exactly the minimum tensor-core work (MMA ratio 1.0;
# ``_check_tile`` rejects the tilings that replicate it). A candidate was dropped when another one
# of the same list, under both Triton versions, issues no more SASS instructions per 128x64 tile,
# keeps at least as many warps resident per SM and owns no more rows per program: it cannot win
# on any of the three, so it only lengthens first-call autotuning.
# Under the interpreter several configs fail ("0 active drivers") and small blocks keep the tests
# exercising multi-block samples at tiny sizes: one fixed config each (tests swap in the GPU
# tiles with `fixed_launch`).

# Launch order of every kernel's programs, as the static report's grid simulation models it
# (tools/static_report/schedule.py).
GRID_ORDER = "heads_fastest_longest_first"


def _config(block_m: int, block_n: int, num_warps: int, num_stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=num_warps, num_stages=num_stages)


# arch family (90: sm_90 and newer, 80: sm_8x) -> kernel -> head_dim -> configs. The first config
# of each list is the default that the AOT test reports on. A head_dim without its own list uses
# the next larger list that exists. Launches with "heavy" features (softcap, a left window bound or
# grouped heads: `heavy_features`) take HEAVY_CONFIGS where it has a list: their extra live tiles spill in some
# of the plain tiles. At head_dim 256 the fp32 accumulator alone is 128 registers per thread (16
# rows per warp, or 64 per wgmma warpgroup, x 256 columns / 32 lanes): every tile with minimal
# tensor-core work runs at ptxas' 255-register cap and some spill a few loop-invariant values;
# the static report lists each one's bytes and its local-memory accesses per main-loop iteration.
# fwd/dq: BLOCK_M queries per program, BLOCK_N keys per step; dkdv: BLOCK_N keys per program,
# BLOCK_M queries per step.
GPU_CONFIGS = {
    90: {
        "fwd": {
            64: [_config(128, 64, 8, 3), _config(128, 128, 8, 3), _config(64, 64, 4, 3), _config(128, 64, 4, 3)],
            128: [_config(128, 64, 8, 3)],
            # 128x64 keeps 16-112 B of loop-invariant values in local memory, touched only outside the
            # main loop; 128x32 s1 spills nothing but issues 1.5x the instructions and is unpipelined
            256: [_config(128, 64, 8, 2), _config(128, 32, 8, 1)],
        },
        "dkdv": {
            64: [_config(32, 64, 4, 3), _config(64, 64, 4, 3), _config(64, 128, 8, 2)],
            128: [_config(32, 64, 4, 2), _config(32, 128, 8, 2)],
            # each of the two passes (dV, then dK): 64 keys per warpgroup; 4 warps spill at 256
            256: [_config(32, 128, 8, 2)],
        },
        "dq": {
            64: [_config(64, 32, 4, 3), _config(64, 64, 4, 3)],
            128: [_config(128, 64, 8, 2), _config(64, 32, 4, 2)],
            256: [_config(128, 32, 8, 2)],
        },
    },
    80: {
        "fwd": {
            # head_dim 32: ptxas caps these tiles at 128 registers: 128x64 w8 spills when causal, and
            # the 64-row tiles spill under one Triton version or the other
            32: [_config(128, 64, 4, 3)],
            64: [_config(128, 64, 8, 3), _config(64, 64, 4, 3)],
            128: [_config(128, 32, 8, 3)],  # s2 issues fewer instructions but spills when causal
            # both keep 40-48 B in local memory (s2: 2 accesses per main-loop iteration, s1: none)
            256: [_config(64, 32, 4, 2), _config(64, 32, 4, 1)],
        },
        "dkdv": {
            32: [_config(32, 128, 8, 3), _config(32, 64, 4, 1)],
            64: [_config(32, 64, 4, 3), _config(32, 128, 8, 3)],
            # unpipelined: every pipelined tile with minimal MMA work spills here under 3.6 or 3.9
            128: [_config(32, 64, 4, 1)],
            256: [_config(32, 64, 4, 1)],
        },
        "dq": {
            # head_dim 32 has the 64 list, as its own entry so that HEAVY_CONFIGS can narrow it
            32: [_config(64, 32, 4, 3), _config(128, 32, 8, 3), _config(128, 64, 8, 2), _config(64, 64, 4, 3)],
            64: [_config(64, 32, 4, 3), _config(128, 32, 8, 3), _config(128, 64, 8, 2), _config(64, 64, 4, 3)],
            128: [_config(128, 32, 8, 2)],
            256: [_config(64, 32, 4, 1)],
        },
    },
}
HEAVY_CONFIGS = {
    90: {
        "fwd": {64: [_config(128, 64, 8, 3), _config(128, 128, 8, 3), _config(64, 64, 4, 3)]},  # 128x64 w4 spills
        "dkdv": {128: [_config(32, 64, 4, 1)]},  # pipelined, a window, softcap or grouped heads spill
    },
    80: {
        "fwd": {
            128: [_config(64, 32, 4, 3)],  # 128x32 w8 keeps 8-16 B of stack with a window
            256: [_config(64, 32, 4, 2)],  # s1 spills inside its main loop with a window
        },
        # 64x64 w4 at head_dim 32: ptxas holds it to 128 registers and it spills 16 B with softcap
        "dq": {32: [_config(64, 32, 4, 3), _config(128, 32, 8, 3), _config(128, 64, 8, 2)]},
    },
}
INTERPRETER_CONFIGS = {"fwd": _config(32, 16, 4, 1), "dkdv": _config(16, 32, 4, 1), "dq": _config(32, 16, 4, 1)}


def _check_tiles() -> None:
    """Reject, at import, a candidate that breaks a tiling rule (see ``_check_tile``)."""
    for kernel, config in INTERPRETER_CONFIGS.items():
        _check_tile(kernel, config, gpu=False)
    for family in (*GPU_CONFIGS.values(), *HEAVY_CONFIGS.values()):
        for kernel, tables in family.items():
            for config in (c for table in tables.values() for c in table):
                _check_tile(kernel, config, gpu=True)


def _check_tile(kernel: str, config: triton.Config, gpu: bool) -> None:
    """Two rules, in the terms of the program's own block (``rows``: BLOCK_M for fwd/dq, BLOCK_N for
    dkdv) and its per-step block (``step``):

    1. ``rows % step == 0``: causal self-attention then splits a program's blocks exactly at the
       diagonal (the blocks before it unmasked, the diagonal block in whole masked steps).
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


def heavy_features(window_left: bool, softcap: bool, grouped: bool) -> bool:
    """Whether a launch takes `HEAVY_CONFIGS`: softcap (the tanh tile stays live), a left window
    bound (a second masked range) or grouped heads (dK/dV's loop over the group)."""
    return bool(window_left or softcap or grouped)


def gpu_configs(kernel: str, head_dim: int, family: int = 90, heavy: bool = False) -> list[triton.Config]:
    """The autotuning candidates of ``kernel`` ("fwd", "dkdv", "dq") for ``head_dim`` on an arch family
    (``heavy``: for a launch with `heavy_features`)."""
    tables = GPU_CONFIGS[family][kernel]
    head_dim = min(d for d in tables if d >= head_dim)
    if heavy:
        return HEAVY_CONFIGS[family].get(kernel, {}).get(head_dim, tables[head_dim])
    return tables[head_dim]


@functools.lru_cache(maxsize=None)
def _device_family(device_index: int) -> int:
    return arch_family(torch.cuda.get_device_capability(device_index))


def _autotune_args(kernel: str) -> dict:
    if triton_interpret():
        return {"configs": [INTERPRETER_CONFIGS[kernel]]}

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        heavy = heavy_features(args["WINDOW_LEFT"], args["SOFTCAP"], args["group"] > 1)
        return gpu_configs(kernel, args["HEAD_DIM"], _device_family(named_args["Q"].device.index or 0), heavy)

    configs = [c for family in (*GPU_CONFIGS.values(), *HEAVY_CONFIGS.values())
               for table in family.get(kernel, {}).values() for c in table]
    return {"configs": configs, "prune_configs_by": {"early_config_prune": prune}}


# every input of `gpu_configs` (``group`` for the feature class), and the length bucket
_TUNE_KEY = ["HEAD_DIM", "WINDOW_LEFT", "WINDOW_RIGHT", "SOFTCAP", "group", "SEQ_BUCKET"]
# integers that change from batch to batch: no value specialisation (it would only add compiles).
# ``group`` is left specialised: group == 1 (no grouped heads) then compiles as a constant.
_VARYING_INTS = ["batch", "n_search", "window_left", "window_right", "SEQ_BUCKET"]


# --- test hook ----------------------------------------------------------------------------------


class _Probe:
    """What `fixed_launch` sets: fixed tiles per kernel, and where to put trip counts."""

    configs: Mapping[str, triton.Config] = {}
    trips: dict[str, torch.Tensor] | None = None


@contextlib.contextmanager
def fixed_launch(configs: Mapping[str, triton.Config] | None = None,
                 count_trips: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Test hook, not API: launch "fwd"/"dkdv"/"dq" with the given tiles instead of the autotuner's
    (e.g. a GPU candidate under the interpreter), and with ``count_trips`` record how many blocks
    each program's loops visit (int32 per program id, ``-1`` for a program past its sample's end)
    into the yielded dict, by kernel name. Only kernels with a fixed config can count trips."""
    previous = (_Probe.configs, _Probe.trips)
    _Probe.configs = dict(configs or {})
    _Probe.trips = {} if count_trips else None
    try:
        yield _Probe.trips if _Probe.trips is not None else {}
    finally:
        _Probe.configs, _Probe.trips = previous


def _launch(name: str, kernel, programs, device: torch.device, *args, **constexprs) -> None:
    """Launch ``kernel`` on ``programs(meta)`` programs (one grid axis), autotuned unless `fixed_launch` fixed it."""
    config = _Probe.configs.get(name)
    if config is None:
        kernel[lambda meta: (programs(meta),)](*args, TRIPS=None, **constexprs)
        return
    count = programs(config.kwargs)
    trips = None
    if _Probe.trips is not None:
        trips = _Probe.trips[name] = torch.full((count,), -1, dtype=torch.int32, device=device)
    kernel.fn[(count,)](*args, TRIPS=trips, **constexprs, **config.kwargs, num_warps=config.num_warps,
                        num_stages=config.num_stages)


# --- shared device helpers ----------------------------------------------------------------------


@triton.jit
def _program(heads):
    """This program's (slot, head): heads vary fastest, so the heads of one block start together."""
    pid = tl.program_id(0)
    return pid // heads, (pid % heads).to(tl.int64)


@triton.jit
def _locate_block(CU_SEQLENS, SCHED_ORDER, SCHED_CU, slot, batch, n_search, BLOCK: tl.constexpr):
    """Program slot -> (first token of its block, sample start, sample end, sample index).

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
    sample = tl.load(SCHED_ORDER + lo)
    seq_start = tl.load(CU_SEQLENS + sample)
    seq_end = seq_start + (tl.load(SCHED_CU + lo + 1) - rank_start)
    block_start = seq_start + (slot - lo - rank_start // BLOCK) * BLOCK
    return block_start, seq_start, seq_end, sample


@triton.jit
def _other_range(CU_OTHER, sample, seq_start, seq_end, CROSS: tl.constexpr):
    """The sample's tokens on the other side (keys of a query block, queries of a key block);
    self-attention (not CROSS) shares the offsets."""
    if CROSS:
        other_start = tl.load(CU_OTHER + sample)
        other_end = tl.load(CU_OTHER + sample + 1)
    else:
        other_start = seq_start
        other_end = seq_end
    return other_start, other_end


@triton.jit
def _spans(r0, r_last, o_start, o_end, lo_off, hi_off, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr,
           STEP: tl.constexpr):
    """Loop bounds of a program whose rows ``[r0, r_last]`` see, each, the other side's tokens
    ``[r + lo_off, r + hi_off]`` within ``[o_start, o_end)`` (bounds absent unless HAS_LO/HAS_HI).

    Returns ``(span_lo, lead_end, full_end, span_hi)``: the program visits ``[span_lo, span_hi)``,
    the union of its rows' ranges, in STEP blocks counted from ``span_lo``: ``[span_lo, lead_end)``
    crosses the lower edge (masked), ``[lead_end, full_end)`` is visible to every row (unmasked),
    ``[full_end, span_hi)`` crosses the upper edge or the end (masked). Empty ranges have
    ``hi <= lo``. Python twin: `span_blocks`.
    """
    if HAS_HI:
        span_hi = tl.minimum(o_end, r_last + hi_off + 1)
        full_hi = tl.minimum(o_end, r0 + hi_off + 1)  # past the last token visible to the first row
    else:
        span_hi = o_end
        full_hi = o_end
    if HAS_LO:
        span_lo = tl.maximum(o_start, r0 + lo_off)
        # the first token visible to the last row, hence to every row
        full_lo = tl.maximum(o_start, r_last + lo_off)
        lead_end = tl.minimum(span_lo + tl.cdiv(full_lo - span_lo, STEP) * STEP, span_hi)
    else:
        span_lo = o_start
        lead_end = o_start
    # the unmasked blocks end on the last block boundary (counted from lead_end) at or before full_hi.
    # (Written with % rather than // STEP * STEP: the same value, and 10 fewer registers on sm_90.)
    full_end = tl.maximum(full_hi - (full_hi - lead_end) % STEP, lead_end)
    return span_lo, lead_end, full_end, span_hi


@triton.jit
def _trips(span_lo, lead_end, full_end, span_hi, STEP: tl.constexpr):
    """Blocks the three loops over `_spans`' ranges visit (a loop over ``[lo, hi)`` runs
    ``cdiv(max(hi - lo, 0), STEP)`` times)."""
    lead = tl.cdiv(tl.maximum(lead_end - span_lo, 0), STEP)
    full = tl.maximum(full_end - lead_end, 0) // STEP
    return lead + full + tl.cdiv(tl.maximum(span_hi - full_end, 0), STEP)


@triton.jit
def _sees_any(offs, o_start, o_end, lo_off, hi_off, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr):
    """Per row: whether its visible range ``[offs + lo_off, offs + hi_off] & [o_start, o_end)`` is non-empty."""
    lo = tl.zeros_like(offs) + o_start
    hi = tl.zeros_like(offs) + o_end
    if HAS_LO:
        lo = tl.maximum(lo, offs + lo_off)
    if HAS_HI:
        hi = tl.minimum(hi, offs + hi_off + 1)
    return lo < hi


@triton.jit
def _visible(rows, cols, col_end, lo_off, hi_off, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr):
    """Mask of a masked block: ``cols`` (1-D, the other side) inside its range and the window of ``rows``
    (``[len(rows), len(cols)]``)."""
    valid = (cols < col_end)[None, :]
    if HAS_LO:
        valid = valid & (cols[None, :] >= rows[:, None] + lo_off)
    if HAS_HI:
        valid = valid & (cols[None, :] <= rows[:, None] + hi_off)
    return valid


@triton.jit
def _row_tile(BASE, head, stride_h, first_row, stride_t, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Pointers to ``head``'s ``[ROWS, HEAD_DIM]`` tile whose first token is ``first_row`` (int64)."""
    return BASE + head * stride_h + first_row * stride_t + tile_offsets(stride_t, ROWS, HEAD_DIM)


@triton.jit
def _heaviest_first(block_start, seq_start, seq_end, BLOCK: tl.constexpr):
    """Right-bounded windows (causal): hand a sample's query blocks out last-first. The last queries
    see the most keys, so the longest programs start first and the grid ends on short ones."""
    n_blocks = tl.cdiv(seq_end - seq_start, BLOCK)
    return seq_start + (n_blocks - 1 - (block_start - seq_start) // BLOCK) * BLOCK


@triton.jit
def _capped(s, cap_scale, cap_log2):
    """Soft-capped scores in the log2 domain, ``softcap * log2(e) * tanh(scale * s / softcap)``,
    and the tanh (the backward's ``1 - tanh^2``). ``cap_scale = 2 * log2(e) * scale / softcap``.

    tanh(x) = 1 - 2 / y with y = 2^(2 x log2(e)) + 1 >= 1, and 1 / y taken as rsqrt(y * y): one
    MUFU.RSQ (relative error ~2^-22) where a division costs a full-precision sequence. For large x,
    y * y overflows to inf and t = 1 exactly; nothing here can give NaN.
    """
    y = tl.math.exp2(s * cap_scale) + 1.0
    t = 1.0 - 2.0 * tl.math.rsqrt(y * y)
    return t * cap_log2, t


@triton.jit
def _probs(s, lse, qk_scale, cap_scale, cap_log2, SOFTCAP: tl.constexpr):
    """The backward's probabilities from raw scores ``s`` and the saved log-sum-exp (base 2, scale
    folded in; broadcast to ``s``'s shape), and with SOFTCAP the derivative of the cap, ``1 - tanh^2``
    (otherwise 1.0)."""
    if SOFTCAP:
        capped, t = _capped(s, cap_scale, cap_log2)
        p = tl.math.exp2(capped - lse)
        dtanh = 1.0 - t * t
    else:
        p = tl.math.exp2(s * qk_scale - lse)
        dtanh = 1.0
    return p, dtanh


@triton.jit
def _key_plan(q_start, seq_start, seq_end, sample, CU_K, TRIPS, window_left, window_right, WINDOW_LEFT: tl.constexpr,
              WINDOW_RIGHT: tl.constexpr, CROSS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The keys a query block (forward, dQ) visits: ``(q_start, k_start, k_end, lo_off, hi_off)`` and
    `_spans`' four bounds. The block is reordered last-first under a right bound; query token ``t``
    sees keys ``[t + lo_off, t + hi_off]`` of ``[k_start, k_end)``. Records the trips into TRIPS."""
    if WINDOW_RIGHT:
        q_start = _heaviest_first(q_start, seq_start, seq_end, BLOCK_M)
    k_start, k_end = _other_range(CU_K, sample, seq_start, seq_end, CROSS)
    diag = k_end - seq_end  # query token t is aligned with key token t + diag
    lo_off = diag - window_left
    hi_off = diag + window_right
    span_lo, lead_end, full_end, span_hi = _spans(q_start, tl.minimum(q_start + BLOCK_M, seq_end) - 1, k_start,
                                                  k_end, lo_off, hi_off, WINDOW_LEFT, WINDOW_RIGHT, BLOCK_N)
    if TRIPS is not None:
        tl.store(TRIPS + tl.program_id(0), _trips(span_lo, lead_end, full_end, span_hi, BLOCK_N))
    return q_start, k_start, k_end, lo_off, hi_off, span_lo, lead_end, full_end, span_hi


@triton.jit
def _query_block(Q, stride_qt, stride_qh, head, q_start, seq_start, seq_end, sample, CU_K, TRIPS, window_left,
                 window_right, HEAD_DIM: tl.constexpr, WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
                 CROSS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """A query block of the forward or dQ: its ``q`` tile (rows past the sample 0), row offsets,
    in-sample mask and first row, then `_key_plan`'s key range, offsets and loop bounds."""
    q_start, k_start, k_end, lo_off, hi_off, span_lo, lead_end, full_end, span_hi = _key_plan(
        q_start, seq_start, seq_end, sample, CU_K, TRIPS, window_left, window_right, WINDOW_LEFT, WINDOW_RIGHT, CROSS,
        BLOCK_M, BLOCK_N)
    offs_m = q_start + tl.arange(0, BLOCK_M)
    row_ok = offs_m < seq_end
    first_row = q_start.to(tl.int64)
    q = tl.load(_row_tile(Q, head, stride_qh, first_row, stride_qt, BLOCK_M, HEAD_DIM),
                mask=row_ok[:, None], other=0.0)
    return q, offs_m, row_ok, first_row, k_start, k_end, lo_off, hi_off, span_lo, lead_end, full_end, span_hi


# --- forward ------------------------------------------------------------------------------------


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kt, stride_vt, lo, hi, offs_m, k_end, lo_off, hi_off,
               qk_scale, cap_scale, cap_log2, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
               WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, MASKED: tl.constexpr,
               NEG_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online softmax over key blocks ``[lo, hi)``; MASKED blocks may cross the window or the sample end.

    ``m_i`` is the running row max of the scaled scores (log2 domain). Unmasked blocks without
    softcap take the row extreme of the raw scores and fold the scale into the exp2 argument (one
    FMA per score instead of a multiply and a subtract); the extreme is the min when the scale is
    negative (NEG_SCALE), since ``max(c * s) = c * min(s)`` for ``c < 0``.
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
            key_ok = offs_n < k_end
            k = tl.load(K_head + tl.cast(start_n, tl.int64) * stride_kt + k_tile, mask=key_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if SOFTCAP:
            s, _ = _capped(s, cap_scale, cap_log2)
        if MASKED:
            # few boundary blocks: scale first, then -inf masks right for any scale (negative or 0 too)
            if not SOFTCAP:
                s = s * qk_scale
            s = tl.where(_visible(offs_m, offs_n, k_end, lo_off, hi_off, WINDOW_LEFT, WINDOW_RIGHT), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # a row with no valid key so far keeps m = -inf: subtract 0 instead (exp2(-inf) = 0, no NaN)
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_sub[:, None])
        elif SOFTCAP:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_sub = m_new
            p = tl.math.exp2(s - m_new[:, None])
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
def _fwd_kernel(Q, K, V, O, LSE, CU_Q, CU_K, SCHED_ORDER, SCHED_CU,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                stride_lse_h, heads, group, batch, n_search, window_left, window_right, qk_scale, cap_scale, cap_log2,
                SEQ_BUCKET, TRIPS, HEAD_DIM: tl.constexpr, WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
                CROSS: tl.constexpr, SOFTCAP: tl.constexpr, NEG_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    slot, head = _program(heads)
    q_start, seq_start, seq_end, sample = _locate_block(CU_Q, SCHED_ORDER, SCHED_CU, slot, batch, n_search, BLOCK_M)
    if q_start >= seq_end:
        return
    q, offs_m, row_ok, first_row, k_start, k_end, lo_off, hi_off, span_lo, lead_end, full_end, span_hi = _query_block(
        Q, stride_qt, stride_qh, head, q_start, seq_start, seq_end, sample, CU_K, TRIPS, window_left, window_right,
        HEAD_DIM, WINDOW_LEFT, WINDOW_RIGHT, CROSS, BLOCK_M, BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    kv_head = head // group
    K_head = K + kv_head * stride_kh
    V_head = V + kv_head * stride_vh
    if WINDOW_LEFT:
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kt, stride_vt, span_lo, lead_end, offs_m,
                                   k_end, lo_off, hi_off, qk_scale, cap_scale, cap_log2, HEAD_DIM, BLOCK_N,
                                   WINDOW_LEFT, WINDOW_RIGHT, SOFTCAP, True, NEG_SCALE, DOT_PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kt, stride_vt, lead_end, full_end, offs_m,
                               k_end, lo_off, hi_off, qk_scale, cap_scale, cap_log2, HEAD_DIM, BLOCK_N,
                               WINDOW_LEFT, WINDOW_RIGHT, SOFTCAP, False, NEG_SCALE, DOT_PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, stride_kt, stride_vt, full_end, span_hi, offs_m,
                               k_end, lo_off, hi_off, qk_scale, cap_scale, cap_log2, HEAD_DIM, BLOCK_N,
                               WINDOW_LEFT, WINDOW_RIGHT, SOFTCAP, True, NEG_SCALE, DOT_PRECISION)

    # A row that sees no key (padding rows past the sample, and rows the window or the alignment
    # leave without keys) has l = 0 and acc = 0: divide by 1 (output 0) and give it lse = +inf, so
    # the backward recomputes p = 0 for it. A row that does see keys has l = 0 only when every
    # score was -inf (an inf in q or k): 0 / 0 = NaN then, as in any softmax, not a silent 0
    sees = row_ok & _sees_any(offs_m, k_start, k_end, lo_off, hi_off, WINDOW_LEFT, WINDOW_RIGHT)
    out = acc / tl.where(sees, l_i, 1.0)[:, None]
    tl.store(_row_tile(O, head, stride_oh, first_row, stride_ot, BLOCK_M, HEAD_DIM),
             out.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + head * stride_lse_h + offs_m, tl.where(sees, m_i + tl.math.log2(l_i), float("inf")), mask=row_ok)


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
def _bwd_dkdv_step(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qt, stride_dot, start_m,
                   offs_n, q_end, lo_off, hi_off, qk_scale, cap_scale, cap_log2,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, WINDOW_LEFT: tl.constexpr,
                   WINDOW_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, MASKED: tl.constexpr,
                   OUTPUTS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Add query block ``start_m`` of one head to dK, dV of one key block (transposed scores [N, M]);
    OUTPUTS: 3 both, 1 dV only, 2 dK only (see `_DKDV_SPLIT_HEAD_DIM`).

    ``lo_off``/``hi_off`` are the key-side window: key ``u`` is visible to query ``t`` iff
    ``u + lo_off <= t <= u + hi_off`` (a lower bound from the right edge, an upper from the left).
    """
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q_block = Q_head + tl.cast(start_m, tl.int64) * stride_qt + tile_offsets(stride_qt, BLOCK_M, HEAD_DIM)
    do_block = DO_head + tl.cast(start_m, tl.int64) * stride_dot + tile_offsets(stride_dot, BLOCK_M, HEAD_DIM)
    if MASKED:
        q_ok = offs_m < q_end
        q = tl.load(q_block, mask=q_ok[:, None], other=0.0)
        do = tl.load(do_block, mask=q_ok[:, None], other=0.0)
        # +inf for rows past the sample: their probabilities come out exactly 0
        lse = tl.load(LSE_head + offs_m, mask=q_ok, other=float("inf"))
        delta = tl.load(DELTA_head + offs_m, mask=q_ok, other=0.0)
    else:
        q = tl.load(q_block)
        do = tl.load(do_block)
        lse = tl.load(LSE_head + offs_m)
        delta = tl.load(DELTA_head + offs_m)
    p_t, dtanh_t = _probs(tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION), lse[None, :], qk_scale, cap_scale,
                          cap_log2, SOFTCAP)
    if MASKED:
        p_t = tl.where(_visible(offs_n, offs_m, q_end, lo_off, hi_off, WINDOW_RIGHT, WINDOW_LEFT), p_t, 0.0)
    if SOFTCAP:
        pd_t = p_t * dtanh_t  # taken now, so that the tanh is dead before the dP product
    else:
        pd_t = p_t
    if OUTPUTS & 1:
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    if OUTPUTS & 2:
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = pd_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qt, stride_qh, stride_dot, stride_doh, stride_lse_h,
                    first_head, group, lo, hi, offs_n, q_end, lo_off, hi_off, qk_scale, cap_scale, cap_log2,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, WINDOW_LEFT: tl.constexpr,
                    WINDOW_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, MASKED: tl.constexpr,
                    GROUPED: tl.constexpr, OUTPUTS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate dK, dV of one key block over query blocks ``[lo, hi)`` of the query heads
    ``first_head ... first_head + group - 1`` (one head unless GROUPED).

    Grouped heads run as one flat loop over (head, block) pairs rather than a loop over heads
    around the loop over blocks: the nested loops kept ~40 more registers live (spills at
    head_dim 128), the flat one only a head counter.
    """
    if GROUPED:
        start_m = lo
        member = first_head
        for _ in range(0, group * tl.cdiv(tl.maximum(hi - lo, 0), BLOCK_M)):
            dk, dv = _bwd_dkdv_step(dk, dv, k, v, Q + member * stride_qh, DO + member * stride_doh,
                                    LSE + member * stride_lse_h, DELTA + member * stride_lse_h, stride_qt, stride_dot,
                                    start_m, offs_n, q_end, lo_off, hi_off, qk_scale, cap_scale, cap_log2,
                                    HEAD_DIM, BLOCK_M, WINDOW_LEFT, WINDOW_RIGHT, SOFTCAP, MASKED, OUTPUTS,
                                    DOT_PRECISION)
            start_m += BLOCK_M
            next_head = start_m >= hi
            start_m = tl.where(next_head, lo, start_m)
            member = tl.where(next_head, member + 1, member)
    else:
        Q_head = Q + first_head * stride_qh
        DO_head = DO + first_head * stride_doh
        LSE_head = LSE + first_head * stride_lse_h
        DELTA_head = DELTA + first_head * stride_lse_h
        for start_m in range(lo, hi, BLOCK_M):
            dk, dv = _bwd_dkdv_step(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qt, stride_dot,
                                    start_m, offs_n, q_end, lo_off, hi_off, qk_scale, cap_scale, cap_log2,
                                    HEAD_DIM, BLOCK_M, WINDOW_LEFT, WINDOW_RIGHT, SOFTCAP, MASKED, OUTPUTS,
                                    DOT_PRECISION)
    return dk, dv


@triton.autotune(key=_TUNE_KEY, **_autotune_args("dkdv"))
@triton.jit(do_not_specialize=_VARYING_INTS)
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, CU_Q, CU_K, SCHED_ORDER, SCHED_CU,
                     stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
                     stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_lse_h,
                     heads_k, group, batch, n_search, window_left, window_right, qk_scale, sm_scale, cap_scale,
                     cap_log2, SEQ_BUCKET, TRIPS, HEAD_DIM: tl.constexpr, WINDOW_LEFT: tl.constexpr,
                     WINDOW_RIGHT: tl.constexpr, CROSS: tl.constexpr, SOFTCAP: tl.constexpr, GROUPED: tl.constexpr,
                     OUTPUTS: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    slot, kv_head = _program(heads_k)
    k_start, seq_start, seq_end, sample = _locate_block(CU_K, SCHED_ORDER, SCHED_CU, slot, batch, n_search, BLOCK_N)
    if k_start >= seq_end:
        return
    q_start, q_end = _other_range(CU_Q, sample, seq_start, seq_end, CROSS)
    diag = seq_end - q_end
    # query t sees key u iff u - diag - right <= t <= u - diag + left
    lo_off = -diag - window_right
    hi_off = window_left - diag
    span_lo, lead_end, full_end, span_hi = _spans(k_start, tl.minimum(k_start + BLOCK_N, seq_end) - 1, q_start,
                                                  q_end, lo_off, hi_off, WINDOW_RIGHT, WINDOW_LEFT, BLOCK_M)
    if TRIPS is not None:
        tl.store(TRIPS + tl.program_id(0), group * _trips(span_lo, lead_end, full_end, span_hi, BLOCK_M))
    offs_n = k_start + tl.arange(0, BLOCK_N)
    key_ok = offs_n < seq_end
    first_row = k_start.to(tl.int64)
    k = tl.load(_row_tile(K, kv_head, stride_kh, first_row, stride_kt, BLOCK_N, HEAD_DIM),
                mask=key_ok[:, None], other=0.0)
    v = tl.load(_row_tile(V, kv_head, stride_vh, first_row, stride_vt, BLOCK_N, HEAD_DIM),
                mask=key_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    # the query heads of the group, summed in registers
    first_head = kv_head * group
    if WINDOW_RIGHT:
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qt, stride_qh, stride_dot, stride_doh,
                                 stride_lse_h, first_head, group, span_lo, lead_end, offs_n, q_end, lo_off, hi_off,
                                 qk_scale, cap_scale, cap_log2, HEAD_DIM, BLOCK_M, WINDOW_LEFT, WINDOW_RIGHT, SOFTCAP,
                                 True, GROUPED, OUTPUTS, DOT_PRECISION)
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qt, stride_qh, stride_dot, stride_doh,
                             stride_lse_h, first_head, group, lead_end, full_end, offs_n, q_end, lo_off, hi_off,
                             qk_scale, cap_scale, cap_log2, HEAD_DIM, BLOCK_M, WINDOW_LEFT, WINDOW_RIGHT, SOFTCAP,
                             False, GROUPED, OUTPUTS, DOT_PRECISION)
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qt, stride_qh, stride_dot, stride_doh,
                             stride_lse_h, first_head, group, full_end, span_hi, offs_n, q_end, lo_off, hi_off,
                             qk_scale, cap_scale, cap_log2, HEAD_DIM, BLOCK_M, WINDOW_LEFT, WINDOW_RIGHT, SOFTCAP,
                             True, GROUPED, OUTPUTS, DOT_PRECISION)
    if OUTPUTS & 2:
        tl.store(_row_tile(DK, kv_head, stride_dkh, first_row, stride_dkt, BLOCK_N, HEAD_DIM),
                 (dk * sm_scale).to(DK.dtype.element_ty), mask=key_ok[:, None])
    if OUTPUTS & 1:
        tl.store(_row_tile(DV, kv_head, stride_dvh, first_row, stride_dvt, BLOCK_N, HEAD_DIM),
                 dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


@triton.jit
def _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kt, stride_vt, lo, hi, offs_m, k_end, lo_off, hi_off,
                  qk_scale, cap_scale, cap_log2, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                  WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, MASKED: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    """Accumulate dQ of one query block over key blocks ``[lo, hi)``."""
    k_tile = tile_offsets(stride_kt, BLOCK_N, HEAD_DIM)
    v_tile = tile_offsets(stride_vt, BLOCK_N, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_block = K_head + tl.cast(start_n, tl.int64) * stride_kt
        v_block = V_head + tl.cast(start_n, tl.int64) * stride_vt
        if MASKED:
            key_ok = offs_n < k_end
            k = tl.load(k_block + k_tile, mask=key_ok[:, None], other=0.0)
            v = tl.load(v_block + v_tile, mask=key_ok[:, None], other=0.0)
        else:
            k = tl.load(k_block + k_tile)
            v = tl.load(v_block + v_tile)
        p, dtanh = _probs(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION), lse[:, None], qk_scale, cap_scale,
                          cap_log2, SOFTCAP)
        if MASKED:
            p = tl.where(_visible(offs_m, offs_n, k_end, lo_off, hi_off, WINDOW_LEFT, WINDOW_RIGHT), p, 0.0)
        if SOFTCAP:
            p = p * dtanh
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.autotune(key=_TUNE_KEY, **_autotune_args("dq"))
@triton.jit(do_not_specialize=_VARYING_INTS)
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, CU_Q, CU_K, SCHED_ORDER, SCHED_CU,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
                   stride_dqt, stride_dqh, stride_lse_h,
                   heads, group, batch, n_search, window_left, window_right, qk_scale, sm_scale, cap_scale, cap_log2,
                   SEQ_BUCKET, TRIPS, HEAD_DIM: tl.constexpr, WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr,
                   CROSS: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    slot, head = _program(heads)
    q_start, seq_start, seq_end, sample = _locate_block(CU_Q, SCHED_ORDER, SCHED_CU, slot, batch, n_search, BLOCK_M)
    if q_start >= seq_end:
        return
    q, offs_m, row_ok, first_row, k_start, k_end, lo_off, hi_off, span_lo, lead_end, full_end, span_hi = _query_block(
        Q, stride_qt, stride_qh, head, q_start, seq_start, seq_end, sample, CU_K, TRIPS, window_left, window_right,
        HEAD_DIM, WINDOW_LEFT, WINDOW_RIGHT, CROSS, BLOCK_M, BLOCK_N)
    do = tl.load(_row_tile(DO, head, stride_doh, first_row, stride_dot, BLOCK_M, HEAD_DIM),
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + head * stride_lse_h + offs_m, mask=row_ok, other=float("inf"))  # padding rows: p = 0
    delta = tl.load(DELTA + head * stride_lse_h + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    kv_head = head // group
    K_head = K + kv_head * stride_kh
    V_head = V + kv_head * stride_vh
    if WINDOW_LEFT:
        dq = _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kt, stride_vt, span_lo, lead_end, offs_m,
                           k_end, lo_off, hi_off, qk_scale, cap_scale, cap_log2, HEAD_DIM, BLOCK_N,
                           WINDOW_LEFT, WINDOW_RIGHT, SOFTCAP, True, DOT_PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kt, stride_vt, lead_end, full_end, offs_m,
                       k_end, lo_off, hi_off, qk_scale, cap_scale, cap_log2, HEAD_DIM, BLOCK_N,
                       WINDOW_LEFT, WINDOW_RIGHT, SOFTCAP, False, DOT_PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, K_head, V_head, stride_kt, stride_vt, full_end, span_hi, offs_m,
                       k_end, lo_off, hi_off, qk_scale, cap_scale, cap_log2, HEAD_DIM, BLOCK_N,
                       WINDOW_LEFT, WINDOW_RIGHT, SOFTCAP, True, DOT_PRECISION)
    tl.store(_row_tile(DQ, head, stride_dqh, first_row, stride_dqt, BLOCK_M, HEAD_DIM),
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


# --- the loop bounds in Python (static report, tests) --------------------------------------------


def span_blocks(r0: int, r_last: int, o_start: int, o_end: int, lo_off: int | None, hi_off: int | None,
                step: int) -> tuple[int, int, int]:
    """Python twin of `_spans` + `_trips`: (leading masked, unmasked, trailing masked) blocks a program
    visits; ``lo_off``/``hi_off`` None for an absent bound."""
    span_hi, full_hi = o_end, o_end
    if hi_off is not None:
        span_hi = min(o_end, r_last + hi_off + 1)
        full_hi = min(o_end, r0 + hi_off + 1)
    if lo_off is not None:
        span_lo = max(o_start, r0 + lo_off)
        lead_end = min(span_lo + cdiv(max(o_start, r_last + lo_off) - span_lo, step) * step, span_hi)
    else:
        span_lo = lead_end = o_start
    full_end = lead_end + max(full_hi - lead_end, 0) // step * step
    return (cdiv(max(lead_end - span_lo, 0), step), max(full_end - lead_end, 0) // step,
            cdiv(max(span_hi - full_end, 0), step))


def program_trips(kernel: str, len_q: int, len_k: int, block: int, block_m: int, block_n: int,
                  window: tuple[int, int] = (-1, -1)) -> int:
    """Blocks the loops of one program visit (the kernels' ``TRIPS``, per head of its group for dkdv):
    ``kernel`` "fwd"/"dq" own query block ``block`` (in launch order: last-first under a right
    bound) of a sample of ``len_q`` queries and ``len_k`` keys, "dkdv" key block ``block``.
    ``window`` as the launchers take it (causal = ``(left, 0)``)."""
    left, right = window
    diag = len_k - len_q
    if kernel in ("fwd", "dq"):
        n_blocks = cdiv(len_q, block_m)
        if not 0 <= block < n_blocks:
            raise ValueError(f"block {block} out of range for {len_q} queries in blocks of {block_m}")
        if right >= 0:
            block = n_blocks - 1 - block
        r0 = block * block_m
        r_last = min(r0 + block_m, len_q) - 1
        spans = span_blocks(r0, r_last, 0, len_k, None if left < 0 else diag - left,
                            None if right < 0 else diag + right, block_n)
    elif kernel == "dkdv":
        if not 0 <= block < cdiv(len_k, block_n):
            raise ValueError(f"block {block} out of range for {len_k} keys in blocks of {block_n}")
        r0 = block * block_n
        r_last = min(r0 + block_n, len_k) - 1
        spans = span_blocks(r0, r_last, 0, len_q, None if right < 0 else -diag - right,
                            None if left < 0 else left - diag, block_m)
    else:
        raise ValueError(f"kernel must be 'fwd', 'dq' or 'dkdv', got {kernel!r}")
    return sum(spans)


# --- launchers ----------------------------------------------------------------------------------

_PREPROCESS_BLOCK = 64
# Above this head_dim dV and dK come from two launches of the dK/dV kernel (OUTPUTS 1, then 2): one
# program holding both fp32 accumulators needs 2 x 16 x head_dim / 32 = 256 registers per thread
# for them alone at 256 (16 rows per warp, or 64 per wgmma warpgroup), so it spills heavily; apart,
# each pass holds one. The price is recomputing P in the dK pass: 5 GEMMs per tile instead of 4.
_DKDV_SPLIT_HEAD_DIM = 128


def seqlen_bucket(max_seqlen: int) -> int:
    """Autotune bucket: next power of two of the longest (or mean) sample, clamped to [128, 8192]."""
    return min(max(triton.next_power_of_2(max(max_seqlen, 1)), 128), 8192)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 products (the GPU would otherwise use TF32); 16-bit: tensor cores
    return "ieee" if dtype == torch.float32 else "tf32"


def _stride2(t: torch.Tensor) -> tuple[int, int]:
    """(token stride, head stride) of a [total, heads, head_dim] tensor."""
    return t.stride(0), t.stride(1)


def _features(q: torch.Tensor, k: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
              softmax_scale: float, causal: bool, window: tuple[int, int], softcap: float) -> tuple[tuple, dict]:
    """Runtime scalars ``(group, batch, n_search, left, right, qk_scale, cap_scale, cap_log2)`` and
    the feature constexprs shared by every attention kernel. Host facts only."""
    heads, heads_k = q.shape[1], k.shape[1]
    if heads_k == 0 and heads == 0:
        heads_k = 1
    elif heads_k == 0 or heads % heads_k:
        raise ValueError(f"q's heads ({heads}) must be a multiple of k's heads ({heads_k})")
    left, right = window
    if causal:
        right = 0
    check_int("window[0]", left, -1)
    check_int("window[1]", right, -1)
    # a bound past every distance inside a sample changes nothing; keep it in int32
    reach = q.shape[0] + k.shape[0]
    left, right = min(left, reach), min(right, reach)
    batch = cu_seqlens_q.numel() - 1
    cap = softcap > 0
    qk_scale = softmax_scale * LOG2E
    scalars = (heads // heads_k, batch, max(1, batch.bit_length()), left, right, qk_scale,
               2 * qk_scale / softcap if cap else 0.0, softcap * LOG2E if cap else 0.0)
    constexprs = dict(HEAD_DIM=q.shape[2], WINDOW_LEFT=left >= 0, WINDOW_RIGHT=right >= 0,
                      CROSS=cu_seqlens_k is not cu_seqlens_q, SOFTCAP=cap, DOT_PRECISION=_dot_precision(q.dtype))
    return scalars, constexprs


def varlen_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                             cu_seqlens_k: torch.Tensor, schedule_q: tuple[torch.Tensor, torch.Tensor],
                             seq_hint: int, softmax_scale: float, causal: bool, window: tuple[int, int],
                             softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel.

    Args:
        q: ``[total_q, heads, d]``; k, v: ``[total_k, heads_k, d]`` (``heads % heads_k == 0``), unit
            stride on ``d``, ``d`` in `KERNEL_HEAD_DIMS`, same dtype and device.
        cu_seqlens_q, cu_seqlens_k: int32 ``[batch + 1]`` contiguous offsets (the same tensor
            object for self-attention, which skips the key offsets' loads).
        schedule_q: ``ops._common.longest_first(cu_seqlens_q)``.
        seq_hint: max or mean sample length; only picks the autotune bucket.
        softmax_scale: multiplies ``q.k``.
        causal, window: ``(left, right)``, each -1 (unbounded) or >= 0; causal forces ``right = 0``.
        softcap: 0.0 = off; else scores ``s`` become ``softcap * tanh(s / softcap)``.

    Returns:
        ``out`` ``[total_q, heads, d]`` (q's dtype) and ``lse2`` ``[heads, lse_columns(total_q)]``
        fp32 (base 2, scale folded in, ``+inf`` for rows that see no key).

    Raises:
        ValueError: heads not a multiple of heads_k, or a malformed window (other inputs are the
            caller's to validate).
    """
    total_q, heads, head_dim = q.shape
    scalars, constexprs = _features(q, k, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal, window, softcap)
    group, batch = scalars[:2]
    out = torch.empty((total_q, heads, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((heads, lse_columns(total_q)), dtype=torch.float32, device=q.device)
    if total_q == 0 or batch == 0 or heads == 0 or k.shape[0] == 0:
        # no query sees a key (or no sample owns a query, invalid unless total_q == 0): never garbage
        return out.zero_(), lse.fill_(float("inf"))
    _launch("fwd", _fwd_kernel, lambda meta: (total_q // meta["BLOCK_M"] + batch) * heads, q.device,
            q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, *schedule_q,
            *_stride2(q), *_stride2(k), *_stride2(v), *_stride2(out), lse.stride(0), heads, *scalars,
            seqlen_bucket(seq_hint), NEG_SCALE=softmax_scale < 0 and softcap <= 0, **constexprs)
    return out, lse


def varlen_attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              out: torch.Tensor, lse: torch.Tensor, cu_seqlens_q: torch.Tensor,
                              cu_seqlens_k: torch.Tensor, schedule_q: tuple[torch.Tensor, torch.Tensor],
                              schedule_k: tuple[torch.Tensor, torch.Tensor], seq_hint: int, softmax_scale: float,
                              causal: bool, window: tuple[int, int], softcap: float
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the three backward kernels (arguments as `varlen_attention_forward`, plus ``dout`` like
    ``out``, the forward's ``out`` and ``lse``, and ``schedule_k = longest_first(cu_seqlens_k)``).

    Returns:
        ``dq`` ``[total_q, heads, d]``, ``dk`` and ``dv`` ``[total_k, heads_k, d]``, typed like q, k, v.
    """
    total_q, heads, head_dim = q.shape
    total_k, heads_k = k.shape[:2]
    scalars, constexprs = _features(q, k, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal, window, softcap)
    group, batch, n_search, left, right, qk_scale, cap_scale, cap_log2 = scalars
    dq = torch.empty((total_q, heads, head_dim), dtype=q.dtype, device=q.device)
    dk = torch.empty((total_k, heads_k, head_dim), dtype=k.dtype, device=k.device)
    dv = torch.empty((total_k, heads_k, head_dim), dtype=v.dtype, device=v.device)
    if heads == 0 or batch == 0 or total_q == 0 or total_k == 0:
        # nothing attends (tokens outside every sample get no gradient)
        return dq.zero_(), dk.zero_(), dv.zero_()
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    delta = torch.empty_like(lse)
    _bwd_preprocess_kernel[(triton.cdiv(total_q, _PREPROCESS_BLOCK), heads)](
        out, dout, delta, *_stride2(out), *_stride2(dout), delta.stride(0), total_q,
        HEAD_DIM=head_dim, BLOCK=_PREPROCESS_BLOCK,
    )
    shared = (group, batch, n_search, left, right, qk_scale, softmax_scale, cap_scale, cap_log2,
              seqlen_bucket(seq_hint))
    for outputs in (1, 2) if head_dim > _DKDV_SPLIT_HEAD_DIM else (3,):
        _launch("dkdv", _bwd_dkdv_kernel, lambda meta: (total_k // meta["BLOCK_N"] + batch) * heads_k, q.device,
                q, k, v, dout, dk, dv, lse, delta, cu_seqlens_q, cu_seqlens_k, *schedule_k,
                *_stride2(q), *_stride2(k), *_stride2(v), *_stride2(dout), *_stride2(dk), *_stride2(dv),
                lse.stride(0), heads_k, *shared, GROUPED=group > 1, OUTPUTS=outputs, **constexprs)
    _launch("dq", _bwd_dq_kernel, lambda meta: (total_q // meta["BLOCK_M"] + batch) * heads, q.device,
            q, k, v, dout, dq, lse, delta, cu_seqlens_q, cu_seqlens_k, *schedule_q,
            *_stride2(q), *_stride2(k), *_stride2(v), *_stride2(dout), *_stride2(dq), lse.stride(0),
            heads, *shared, **constexprs)
    return dq, dk, dv


__all__ = ["KERNEL_HEAD_DIMS", "varlen_attention_forward", "varlen_attention_backward", "seqlen_bucket",
           "program_trips"]
