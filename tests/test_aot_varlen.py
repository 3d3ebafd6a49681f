"""Ahead-of-time compiles of the varlen attention kernels for sm_80 (A100) and sm_90 (H100).

No GPU needed: the static kernel report's compiler (``elasticast_kernels.bench.static``) builds
each kernel with Triton's NVIDIA backend in worker subprocesses and reads the machine code.
Asserted for every autotune candidate (bf16, non-causal) and for the defaults in fp16/bf16 at
head_dim 64 and 128 (causal forward, and causal bf16 at head_dim 32, included): no register
spill, shared memory within the arch's limit, the arch's tensor-core instructions (wgmma on
sm_90, mma.sync on sm_80), and exactly the minimum tensor-core work (MMA ratio 1.0). A
regression guard: the default forward's SASS instructions per 128x64 tile (hd64 bf16 sm_90) may
not grow more than 3% over the figure stored in ``aot_varlen_instructions.json`` for this Triton
version, and its registers stay within the stored cap (2 CTAs per SM need at most 128).

Set ``ELASTICAST_AOT_PYTHONS`` to other interpreters (``os.pathsep``-separated) to compile with
their Triton as well, e.g. a Triton 3.6 environment. ``ELASTICAST_AOT_ALL=1`` adds every candidate
in fp16 and causal at head_dim 32/64/128 (about 180 compiles: minutes, so off by default; the full sweep with the
report is ``elasticast-bench --suite static``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from elasticast_kernels.bench.static import compile as static_compile

if not static_compile.triton_tools_present():
    pytest.skip("this triton has no NVIDIA backend tools", allow_module_level=True)

from elasticast_kernels.bench.static import report, specs  # noqa: E402

PYTHONS = [None] + [p for p in os.environ.get("ELASTICAST_AOT_PYTHONS", "").split(os.pathsep) if p]
BASELINE = Path(__file__).with_name("aot_varlen_instructions.json")
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
MMA_KIND = {80: "mma.sync", 90: "wgmma"}
GUARD = ("fwd", 90, "bf16", 64, False)  # (kernel, arch, dtype, head_dim, causal) of the guarded default


def _key(case) -> tuple:
    return (case.kernel, case.arch, case.dtype, case.head_dim, case.causal, case.block_m, case.block_n,
            case.num_warps, case.num_stages)


def selected_cases(everything: bool) -> list:
    """Defaults (fp16/bf16, head_dim 64/128, causal fwd, causal at head_dim 32) plus every candidate in
    bf16, non-causal."""
    wanted = [c for c in specs.varlen_cases(head_dims=(64, 128), causals=(False,), defaults_only=True)]
    wanted += [c for c in specs.varlen_cases(dtypes=("bf16",), head_dims=(64, 128), causals=(True,), defaults_only=True)
               if c.kernel == "fwd"]
    wanted += [c for c in specs.varlen_cases(dtypes=("bf16",), head_dims=(64, 128), causals=(False,))]
    wanted += [c for c in specs.varlen_cases(dtypes=("bf16",), head_dims=(32,), causals=(True,), defaults_only=True)]
    if everything:
        wanted += list(specs.varlen_cases(head_dims=(32, 64, 128)))
    unique = {}
    for case in wanted:
        unique.setdefault(_key(case), case)
    return list(unique.values())


@pytest.fixture(scope="module", params=PYTHONS, ids=lambda p: "this-triton" if p is None else p)
def rows(request):
    cases = selected_cases(os.environ.get("ELASTICAST_AOT_ALL") == "1")
    compiled = static_compile.run_jobs([c.job for c in cases], workers=2, python=request.param)
    return [report.metrics(case, result) for case, result in zip(cases, compiled)]


def _describe(row: dict) -> str:
    return (f"{row['kernel']} sm_{row['arch']} {row['dtype']} d{row['head_dim']} causal={row['causal']} "
            f"{row['block_m']}x{row['block_n']} w{row['num_warps']}s{row['num_stages']} (triton {row['triton']}): "
            f"regs={row['registers']} spill={row['spill_bytes']}B smem={row['shared']}B mma={row['mma_kind']} "
            f"ratio={row.get('mma_ratio')} instr/tile={row.get('instr_per_tile')}")


def test_every_candidate_is_spill_free_with_minimal_mma(rows):
    print()
    for row in rows:
        print(_describe(row))
    problems = [_describe(r) for r in rows if r["spill_bytes"] > 0 or r["shared"] > SHARED_LIMIT[r["arch"]]]
    assert not problems, "spills or shared memory over the limit:\n" + "\n".join(problems)
    attention = [r for r in rows if r["kernel"] != "preprocess"]
    wrong_kind = [_describe(r) for r in attention if r["mma_kind"] != MMA_KIND[r["arch"]]]
    assert not wrong_kind, "unexpected tensor-core instructions:\n" + "\n".join(wrong_kind)
    duplicated = [_describe(r) for r in attention if r["mma_ratio"] != 1.0]
    assert not duplicated, "tensor-core work above the minimum:\n" + "\n".join(duplicated)


def test_default_forward_instructions_do_not_grow(rows):
    guarded = [r for r in rows if r["default"] and tuple(r[f] for f in ("kernel", "arch", "dtype", "head_dim",
                                                                        "causal")) == GUARD]
    assert len(guarded) == 1
    row = guarded[0]
    version = ".".join(row["triton"].split(".")[:2])
    baseline = json.loads(BASELINE.read_text())
    stored = baseline["instr_per_tile"]
    if version not in stored:
        pytest.skip(f"no stored figure for triton {version} in {BASELINE.name}: add one from this run "
                    f"({row['instr_per_tile']})")
    assert row["instr_per_tile"] <= 1.03 * stored[version], (
        f"default forward: {row['instr_per_tile']} instructions per 128x64 tile, more than 3% over the stored "
        f"{stored[version]} (triton {version}); if intended, update {BASELINE.name}")
    assert row["registers"] <= baseline["registers_max"][version], _describe(row)
