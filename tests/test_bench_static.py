"""The static kernel report's parts (tools/static_report): SASS reading, occupancy, grid simulation,
window trip counts, one real compile, summaries, and the ``elasticast-bench --suite static`` entry."""
from __future__ import annotations

import json
import random

import pytest

import aot  # noqa: F401  (puts the repository root on sys.path for tools/)
from elasticast_kernels.bench import cli
from tools.static_report import occupancy, report, sass, schedule, specs, summary

# Two loops (a 7-instruction one with 2 wgmma, a larger masked twin) and the final self-branch trap.
SNIPPET = """
	code for sm_90
		Function : _fwd_kernel
        /*0000*/                   MOV R1, c[0x0][0x28] ;                        /* 0x000 */
        /*0010*/                   DEPBAR.LE SB0, 0x2 ;                          /* 0x000 */
        /*0020*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;                 /* 0x000 */
        /*0030*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT ;   /* 0x000 */
        /*0040*/                   MUFU.EX2 R3, R3 ;                             /* 0x000 */
        /*0050*/                   HGMMA.64x64x16.F32.BF16 R56, R100, gdesc[UR4].tnspB, R56 ;  /* 0x000 */
        /*0060*/                   LDGSTS.E.BYPASS.128 [R35], desc[UR18][R24.64], !P3 ;  /* 0x000 */
        /*0070*/              @!P3 BRA 0x10 ;                                    /* 0x000 */
        /*0080*/                   FMUL R2, R2, R4 ;                             /* 0x000 */
        /*0090*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT ;   /* 0x000 */
        /*00a0*/                   FMNMX R2, R2, R5, !PT ;                       /* 0x000 */
        /*00b0*/                   MUFU.EX2 R3, R3 ;                             /* 0x000 */
        /*00c0*/                   HGMMA.64x64x16.F32.BF16 R56, R100, gdesc[UR4].tnspB, R56 ;  /* 0x000 */
        /*00d0*/                   FSEL R2, R2, RZ, P0 ;                         /* 0x000 */
        /*00e0*/                   FSEL R2, R2, RZ, P0 ;                         /* 0x000 */
        /*00f0*/                   FSEL R2, R2, RZ, P0 ;                         /* 0x000 */
        /*0100*/               @P4 BRA 0x80 ;                                    /* 0x000 */
        /*0110*/                   EXIT ;                                        /* 0x000 */
        /*0120*/                   BRA 0x120;                                    /* 0x000 */
"""


def test_sass_main_loop_and_stats():
    functions = sass.parse_sass(SNIPPET)
    assert list(functions) == ["_fwd_kernel"]
    instructions = functions["_fwd_kernel"]
    assert len(instructions) == 19
    loops = sass.find_loops(instructions)
    assert [(loop.start, loop.end) for loop in loops] == [(0x10, 0x70), (0x80, 0x100)]  # not the trap
    main = sass.main_loop(instructions)
    assert (main.start, main.end) == (0x10, 0x70)  # the smaller of the two tensor-core loops
    stats = sass.loop_stats(main, num_warps=8)
    assert stats.instructions == 7
    assert stats.mma_kind == "wgmma" and stats.mma_instructions == 2
    # each HGMMA is one 64x64x16 product per 4-warp group; 8 warps = 2 groups
    assert stats.mma_macs_per_cta == 2 * 64 * 64 * 16 * 2
    assert (stats.ex2, stats.barriers, stats.async_copies, stats.spill_ops) == (1, 1, 1, 0)


def test_mma_shapes():
    assert sass.mma_macs_per_warp_instruction("HMMA.16816.F32.BF16") == ("mma.sync", 16 * 8 * 16, 1)
    assert sass.mma_macs_per_warp_instruction("HGMMA.64x128x16.F32.BF16") == ("wgmma", 64 * 128 * 16, 4)
    assert sass.mma_macs_per_warp_instruction("FFMA") is None


def test_sass_without_functions_is_an_error():
    with pytest.raises(ValueError, match="no SASS function"):
        sass.parse_sass("nothing here")


def test_occupancy():
    assert occupancy.ctas_per_sm(90, registers=122, shared=65536, num_warps=8) == 2
    assert occupancy.ctas_per_sm(90, registers=129, shared=65536, num_warps=8) == 1  # 136 x 256 threads x 2 > 64K
    assert occupancy.ctas_per_sm(80, registers=32, shared=100 * 1024, num_warps=4) == 1  # shared-bound
    assert occupancy.ctas_per_sm(90, registers=32, shared=0, num_warps=4) == 16  # warp-bound
    with pytest.raises(ValueError, match="arch"):
        occupancy.ctas_per_sm(70, 32, 0, 4)


def test_launch_orders_by_hand():
    P = schedule.Program
    assert schedule.launch_order([1, 3], heads=2, block=2, order="slots_then_heads") == [
        P(0, 0, 0), P(1, 0, 0), P(1, 0, 1), P(1, 0, None), P(0, 1, 0), P(1, 1, 0), P(1, 1, 1), P(1, 1, None)]
    assert schedule.launch_order([1, 3], heads=2, block=2, order="heads_fastest_longest_first") == [
        P(1, 0, 0), P(1, 1, 0), P(1, 0, 1), P(1, 1, 1), P(0, 0, 0), P(0, 1, 0), P(0, 0, None), P(0, 1, None)]
    with pytest.raises(ValueError, match="order"):
        schedule.launch_order([1], 1, 1, "random")


@pytest.mark.parametrize("order", schedule.ORDERS)
def test_launch_order_covers_every_block_once(order):
    rng = random.Random(0)
    lengths = [rng.choice([0, 1, 5, 16, 17, 63, 64, 200]) for _ in range(20)]
    programs = schedule.launch_order(lengths, heads=3, block=16, order=order)
    blocks = sorted((p.sample, p.head, p.block) for p in programs if p.block is not None)
    expected = sorted((s, h, b) for s, n in enumerate(lengths) for h in range(3) for b in range(-(-n // 16)))
    assert blocks == expected
    assert len(programs) == 3 * (sum(lengths) // 16 + len(lengths))  # the grid the launchers size


def test_list_schedule_and_trip_counts():
    assert schedule.list_schedule([3, 1, 1, 1], slots=2) == 3
    assert schedule.list_schedule([1, 1, 3], slots=2) == 4  # the heavy one last makes a tail
    # causal fwd: block 0 is the sample's last query block (heaviest first) and sees every key block
    causal = (-1, 0)
    assert schedule.trip_count("fwd", 300, 0, 128, 64, causal) == 5
    assert schedule.trip_count("fwd", 300, 2, 128, 64, causal) == 2
    assert schedule.trip_count("dkdv", 300, 1, 32, 64, causal) == 8  # queries 64..299 in steps of 32
    assert schedule.trip_count("fwd", 300, 1, 128, 64) == 5  # every key block
    # a (64, 0) window: block 1 (queries 128..255, launched second of three) sees keys 64..255
    assert schedule.trip_count("fwd", 300, 1, 128, 64, (64, 0)) == 3
    assert schedule.trip_count("fwd", 100, 0, 128, 64, length_k=0) == 0  # no keys


def test_default_forward_keeps_the_sms_busy():
    """The issue's target: >= 93% simulated busy on the VoxCeleb-like 12-clip step, 12 heads, default tile."""
    from elasticast_kernels.ops import varlen_attention_kernels as kernels

    lengths = report.schedule_workloads()["voxceleb12"]
    config = kernels.gpu_configs("fwd", 64, 90)[0]
    tile = (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"])
    new = schedule.simulate("fwd", lengths, 12, *tile, (-1, -1), kernels.GRID_ORDER, 132, 2)
    old = schedule.simulate("fwd", lengths, 12, *tile, (-1, -1), "slots_then_heads", 132, 2)
    assert new.busy_fraction >= 0.93 > old.busy_fraction


def test_one_compile():
    """One real compile through the worker (the smallest kernel): resources come back."""
    if not aot.tools_present():
        pytest.skip("this triton has no NVIDIA backend tools")
    (case,) = specs.varlen_cases(archs=(90,), dtypes=("bf16",), head_dims=(64,), kernels=("preprocess",))
    (row,) = aot.compile_rows([case], workers=1)
    assert row["registers"] > 0 and row["spill_bytes"] == 0 and row["ctas_per_sm"] >= 1
    assert row["mma_kind"] == "none"


def test_summary_and_cli_baseline_errors(tmp_path, capsys):
    row = {"kernel": "fwd", "arch": 90, "dtype": "bf16", "head_dim": 64, "causal": False, "default": True,
           "block_m": 128, "block_n": 64, "num_warps": 8, "registers": 122, "spill_bytes": 0,
           "instr_per_tile": 2000.0, "mma_ratio": 1.0}
    before = {"kind": "static-kernel-report", "label": "old", "triton": "3.9.0", "rows": [row],
              "schedules": [{"kernel": "fwd", "causal": False, "workload": "w", "busy_fraction": 0.8}]}
    after = json.loads(json.dumps(before))
    after["rows"][0]["instr_per_tile"] = 1800.0
    after["schedules"][0]["busy_fraction"] = 0.95
    text = summary.before_after(before, after)
    assert "-10.0%" in text and "0.800 | 0.950" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "something else"}))
    assert cli.main(["--suite", "static", "--baseline", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "not a static kernel report" in capsys.readouterr().err


def test_window_trips_are_linear_for_a_window_and_quadratic_otherwise():
    trips = {(t["kernel"], t["window_name"]): t for t in report.window_trips(head_dims=(64,))}
    for kernel in ("fwd", "dkdv", "dq"):
        for name in ("window (256, 0)", "window (128, 128)"):
            totals = trips[kernel, name]["total_trips"]
            assert 1.9 <= totals[-1] / totals[-2] <= 2.1, (kernel, name, totals)
            worst = trips[kernel, name]["max_trips_per_program"]
            assert worst[-1] == worst[-2], (kernel, name, worst)  # a program's cost does not grow with length
        for name in ("full", "causal"):
            totals = trips[kernel, name]["total_trips"]
            assert totals[-1] / totals[-2] >= 3.8, (kernel, name, totals)
    text = report.window_trips_markdown(list(trips.values()))
    assert "window (256, 0)" in text and "growth x2" in text


def test_shared_case_list_covers_every_variant_and_head_dim():
    cases = list(specs.varlen_cases(dtypes=("bf16",), defaults_only=True))
    seen = {(c.kernel, c.arch, c.head_dim, c.variant) for c in cases}
    for arch in specs.ARCHS:
        for variant in specs.VARIANTS:
            for head_dim in (32, 64, 128):
                assert {(k, arch, head_dim, variant) for k in ("fwd", "dkdv", "dq")} <= seen
            # head_dim 256 splits dK/dV into a dV pass and a dK pass
            assert {(k, arch, 256, variant) for k in ("fwd", "dv", "dk", "dq")} <= seen
    grouped = next(c for c in cases if c.variant == "all" and c.kernel == "dkdv")
    assert grouped.job.signature["group"] == "i32" and grouped.job.constexprs["GROUPED"]
    plain = next(c for c in cases if c.variant == "plain" and c.kernel == "fwd")
    assert plain.job.constexprs["group"] == 1 and plain.job.constexprs["TRIPS"] is None


def _default_row(variant, registers, kernel="fwd", head_dim=64, tile=(128, 64, 8, 3), spill=0, dtype="bf16",
                 loop_spill_ops=0):
    block_m, block_n, warps, stages = tile
    return {"kernel": kernel, "arch": 90, "dtype": dtype, "head_dim": head_dim, "variant": variant, "default": True,
            "block_m": block_m, "block_n": block_n, "num_warps": warps, "num_stages": stages,
            "registers": registers, "spill_bytes": spill, "loop_spill_ops": loop_spill_ops,
            "instr_per_tile": 2000.0, "mma_ratio": 1.0}


def test_variants_table():
    """One row per kernel shape, one cell per variant; a variant on another tile names it; the
    split dV/dK passes of head_dim 256 get rows of their own."""
    rows = [_default_row("plain", 120), _default_row("softcap", 127),
            _default_row("window", 130, tile=(64, 64, 4, 3)),
            _default_row("plain", 240, kernel="dv", head_dim=256, tile=(32, 128, 8, 2))]
    text = summary.variants_table({"rows": rows})
    assert ("| fwd | 90 | 64 | 128x64 w8s3 | 120 / 0 / 2000.0 | 130 / 0 / 2000.0 at 64x64 w4s3 | 127 / 0 / 2000.0 |"
            in text)
    assert "| dv | 90 | 256 | 32x128 w8s2 | 240 / 0 / 2000.0 | - | - |" in text


def test_spills_are_listed_with_why_they_are_accepted():
    bound_bytes, bound_ops = specs.VARLEN_ACCEPTED_SPILLS[256]
    rows = [_default_row("plain", 255, head_dim=256, spill=bound_bytes, dtype=dtype) for dtype in ("fp16", "bf16")]
    # too many main-loop accesses; a spill at head_dim 64 (never accepted); no spill (not listed)
    rows += [_default_row("window", 255, head_dim=256, spill=16, loop_spill_ops=bound_ops + 1),
             _default_row("causal", 200, spill=8), _default_row("plain", 100)]
    assert specs.accepted_spill(rows[0]) and specs.accepted_spill(rows[-1]) is None
    assert specs.accepted_spill(rows[2]) is None and specs.accepted_spill(rows[3]) is None
    lines = [line for line in report.spills_markdown(rows).splitlines() if line.startswith("| fwd")]
    assert len(lines) == 3
    assert "| fp16, bf16 |" in lines[0] and "head_dim 256: at most" in lines[0]
    assert lines[1].endswith("NOT ACCEPTED |") and lines[2].endswith("NOT ACCEPTED |")
    pooled = {**_default_row("plain", 64, kernel="_pool_fwd_partial_kernel", head_dim=128, spill=8), "arch": 80}
    assert "pooling" in specs.accepted_spill(pooled)
    assert specs.accepted_spill({**pooled, "spill_bytes": 16}) is None
    assert "No compile spills" in report.spills_markdown([_default_row("plain", 100)])


def test_cli_outside_a_source_checkout(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "_source_checkout", lambda: None)
    assert cli.main(["--suite", "static", "--out", str(tmp_path)]) == 2
    assert "source checkout" in capsys.readouterr().err
