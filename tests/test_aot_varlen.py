"""Ahead-of-time compiles of the varlen attention kernels for sm_80 (A100) and sm_90 (H100).

No GPU needed: the static kernel report's compiler (``tools/static_report``, through ``aot.py``)
builds each kernel with Triton's NVIDIA backend in worker subprocesses and reads the machine code.
The cases come from the report's own list (``specs.varlen_cases``). Compiled by default, in bf16:
the default tile of every kernel for the plain, causal and every-feature ("all") variants at
head_dim 64, 128 and 256; the plain and causal defaults at head_dim 32; every autotune candidate
for the plain variant at head_dim 64, 128 and 256 and for the every-feature variant at every
head_dim (the heavy-feature lists); and the plain defaults in fp16. Asserted: no register spill
(head_dim 256: within ``specs.VARLEN_ACCEPTED_SPILLS``, bytes and local-memory accesses in the
main loop), shared memory within the arch's limit, the arch's tensor-core instructions (wgmma on
sm_90, mma.sync on sm_80), and exactly the minimum tensor-core work (MMA ratio 1.0). A regression
guard: the plain default forward's SASS instructions per 128x64 tile (hd64 bf16 sm_90) may not
grow more than 3% over the figure stored in ``aot_varlen_instructions.json`` for this Triton
version, and its registers stay within the stored cap (2 CTAs per SM need at most 128).

Set ``ELASTICAST_AOT_PYTHONS`` to other interpreters (``os.pathsep``-separated) to compile with
their Triton as well, e.g. a Triton 3.6 environment. ``ELASTICAST_AOT_ALL=1`` compiles the static
report's whole varlen sweep instead (every candidate x variant x head_dim x dtype, about 650
compiles: tens of minutes on 2 cores).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import aot

if not aot.tools_present():
    pytest.skip("this triton has no NVIDIA backend tools", allow_module_level=True)

specs = aot.specs
PYTHONS = [None] + [p for p in os.environ.get("ELASTICAST_AOT_PYTHONS", "").split(os.pathsep) if p]
BASELINE = Path(__file__).with_name("aot_varlen_instructions.json")
MMA_KIND = {80: "mma.sync", 90: "wgmma"}
GUARD = ("fwd", 90, "bf16", 64, "plain")  # (kernel, arch, dtype, head_dim, variant) of the guarded default


def _key(case) -> tuple:
    return (case.kernel, case.arch, case.dtype, case.head_dim, case.variant, case.block_m, case.block_n,
            case.num_warps, case.num_stages)


def selected_cases(everything: bool) -> list:
    if everything:
        return list(specs.varlen_cases())
    wanted = list(specs.varlen_cases(dtypes=("bf16",), head_dims=(64, 128, 256), variants=("plain", "causal", "all"),
                                     defaults_only=True))
    wanted += specs.varlen_cases(dtypes=("fp16",), head_dims=(64, 128, 256), variants=("plain",), defaults_only=True)
    wanted += specs.varlen_cases(dtypes=("bf16",), head_dims=(32,), variants=("plain", "causal"), defaults_only=True)
    wanted += specs.varlen_cases(dtypes=("bf16",), head_dims=(64, 128, 256), variants=("plain",))
    wanted += specs.varlen_cases(dtypes=("bf16",), variants=("all",))  # the heavy-feature candidate lists
    unique = {}
    for case in wanted:
        unique.setdefault(_key(case), case)
    return list(unique.values())


@pytest.fixture(scope="module", params=PYTHONS, ids=lambda p: "this-triton" if p is None else p)
def rows(request):
    return aot.compile_rows(selected_cases(os.environ.get("ELASTICAST_AOT_ALL") == "1"), python=request.param)


def _spill_ok(row: dict) -> bool:
    """Spill-free, or within the bound the static report states and justifies (head_dim 256)."""
    return row["spill_bytes"] == 0 or specs.accepted_spill(row) is not None


def test_every_candidate_is_spill_free_with_minimal_mma(rows):
    print()
    for row in rows:
        print(aot.describe(row))
    problems = [aot.describe(r) for r in rows if not _spill_ok(r) or r["shared"] > aot.SHARED_LIMIT[r["arch"]]]
    assert not problems, "spills or shared memory over the limit:\n" + "\n".join(problems)
    attention = [r for r in rows if r["kernel"] != "preprocess"]
    wrong_kind = [aot.describe(r) for r in attention if r["mma_kind"] != MMA_KIND[r["arch"]]]
    assert not wrong_kind, "unexpected tensor-core instructions:\n" + "\n".join(wrong_kind)
    duplicated = [aot.describe(r) for r in attention if r["mma_ratio"] != 1.0]
    assert not duplicated, "tensor-core work above the minimum:\n" + "\n".join(duplicated)


def test_every_variant_compiles_for_both_archs(rows):
    """The selection covers each arch x head_dim x variant it names (a case silently dropped from the
    shared list would otherwise go unchecked)."""
    seen = {(r["arch"], r["head_dim"], r["variant"]) for r in rows}
    for arch in (80, 90):
        for head_dim in (64, 128, 256):
            for variant in ("plain", "causal", "all"):
                assert (arch, head_dim, variant) in seen


def test_default_forward_instructions_do_not_grow(rows):
    guarded = [r for r in rows if r["default"] and tuple(r[f] for f in ("kernel", "arch", "dtype", "head_dim",
                                                                        "variant")) == GUARD]
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
    assert row["registers"] <= baseline["registers_max"][version], aot.describe(row)
