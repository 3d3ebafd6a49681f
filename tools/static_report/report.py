"""The static kernel report: compile every case, derive per-config metrics, simulate the grid.

Every figure is a compile-time estimate read from the machine code (no GPU runs anything):

- ``registers``, ``spill_bytes`` (STACK + LOCAL), ``shared`` bytes, ``ctas_per_sm``
- ``mma_kind`` (``wgmma`` / ``mma.sync``) and ``mma_ratio``: tensor-core work one main-loop
  iteration issues, divided by the minimum for its tile (1.0 = no replicated MMA)
- ``instr_per_tile``: main-loop SASS instructions x warps, normalised to one 128 x 64 tile
- ``ex2_per_tile``: ``MUFU.EX2`` per 128 x 64 tile (x warps)
- the busy fraction of the default tiles' launches on the schedule workloads
- window trip counts: blocks the default tiles' programs visit over one sample, by length, for
  full, causal and sliding-window attention (the kernels' own loop bounds, `program_trips`)
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Sequence

from tools.static_report.compile import run_jobs
from tools.static_report.occupancy import SMS, ctas_per_sm
from tools.static_report.schedule import simulate, trip_count
from tools.static_report.specs import Case, accepted_spill
from tools.static_report.summary import variants_table

SCHEDULE_HEADS = 12
# the window each simulated variant runs with (as the launchers take it)
SCHEDULE_WINDOWS = {"plain": (-1, -1), "causal": (-1, 0), "window": (256, 0)}
TRIP_LENGTHS = (1024, 2048, 4096, 8192, 16384)
TRIP_WINDOWS = {"full": (-1, -1), "causal": (-1, 0), "window (256, 0)": (256, 0), "window (128, 128)": (128, 128)}


def schedule_workloads() -> dict[str, list[int]]:
    """Token counts of the 12-clip steps the grid simulation runs on.

    ``voxceleb12``: 12 clips of 200-2048 tokens (uniform, seed 0; the lengths of the GPU tests'
    realistic batch), the issue's reference; ``voxceleb_step0``: the first 12-clip step of the
    ``voxceleb`` benchmark workload (4-20 s clips, 208-1000 tokens).
    """
    import torch

    from elasticast_kernels.bench.workloads import make_workload

    generator = torch.Generator().manual_seed(0)
    uniform = torch.randint(200, 2049, (12,), generator=generator).tolist()
    return {"voxceleb12": uniform, "voxceleb_step0": [int(x) for x in make_workload("voxceleb").step_tokens(0)]}


def metrics(case: Case, compiled: dict) -> dict:
    """One row of the report: the case's labels, its compile result and the derived figures."""
    row = case.label()
    row.update(triton=compiled["triton"], registers=compiled["registers"],
               spill_bytes=compiled["stack"] + compiled["local"], shared=compiled["shared"],
               ctas_per_sm=ctas_per_sm(case.arch, compiled["registers"], compiled["shared"], case.num_warps))
    loop = compiled["main_loop"]
    if loop is None:
        row.update(mma_kind="none", mma_ratio=None, loop_instructions=None, instr_per_tile=None, ex2_per_tile=None)
        return row
    minimum = case.min_macs_per_iteration
    row.update(
        mma_kind=loop["mma_kind"],
        mma_ratio=round(loop["mma_macs_per_cta"] / minimum, 3) if minimum and loop["mma_macs_per_cta"] else None,
        loop_instructions=loop["instructions"],
        barriers=loop["barriers"],
        async_copies=loop["async_copies"],
        loop_spill_ops=loop.get("spill_ops", 0),
    )
    if minimum:  # attention kernels: per 128 x 64 score tile
        row["instr_per_tile"] = round(loop["instructions"] * case.num_warps * case.tile_scale, 1)
        row["ex2_per_tile"] = round(loop["ex2"] * case.num_warps * case.tile_scale, 1)
    else:  # pooling: per main-loop iteration of the whole CTA
        row["instr_per_tile"] = None
        row["instr_per_iteration"] = loop["instructions"] * case.num_warps
        row["ex2_per_tile"] = None
    return row


def grid_schedules(rows: Sequence[dict], grid_order: str) -> list[dict]:
    """Busy fraction of each default fwd/dkdv/dq tile (sm_90, bf16, head_dim 64) on the workloads,
    for the variants of ``SCHEDULE_WINDOWS``."""
    out = []
    for row in rows:
        if not (row["default"] and row["kernel"] in ("fwd", "dkdv", "dq") and row["arch"] == 90
                and row["dtype"] == "bf16" and row["head_dim"] == 64 and row["variant"] in SCHEDULE_WINDOWS):
            continue
        window = SCHEDULE_WINDOWS[row["variant"]]
        for name, lengths in schedule_workloads().items():
            result = simulate(row["kernel"], lengths, SCHEDULE_HEADS, row["block_m"], row["block_n"], window,
                              grid_order, SMS[90], row["ctas_per_sm"])
            out.append({"kernel": row["kernel"], "variant": row["variant"], "window": list(window), "workload": name,
                        "lengths": lengths, "heads": SCHEDULE_HEADS, "block_m": row["block_m"],
                        "block_n": row["block_n"], "ctas_per_sm": row["ctas_per_sm"], "sms": SMS[90],
                        "order": grid_order, **{k: round(v, 4) for k, v in asdict(result).items()}})
    return out


def window_trips(head_dims: Sequence[int] = (64, 128)) -> list[dict]:
    """Blocks visited over one sample (one head) by the default sm_90 tiles, per length and window:
    linear in the length for a fixed window, quadratic for full or causal attention."""
    from elasticast_kernels.ops import varlen_attention_kernels as kernels

    out = []
    for head_dim in head_dims:
        for kernel in ("fwd", "dkdv", "dq"):
            config = kernels.gpu_configs(kernel, head_dim, 90)[0]
            block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
            own = block_n if kernel == "dkdv" else block_m
            for name, window in TRIP_WINDOWS.items():
                totals, worst = [], []
                for length in TRIP_LENGTHS:
                    trips = [trip_count(kernel, length, b, block_m, block_n, window) for b in range(-(-length // own))]
                    totals.append(sum(trips))
                    worst.append(max(trips))
                out.append({"kernel": kernel, "head_dim": head_dim, "block_m": block_m, "block_n": block_n,
                            "window_name": name, "window": list(window), "lengths": list(TRIP_LENGTHS),
                            "total_trips": totals, "max_trips_per_program": worst})
    return out


def build(cases: Iterable[Case], workers: int = 2, python: str | None = None, label: str = "") -> dict:
    """Compile ``cases`` and return the report (JSON-ready)."""
    from elasticast_kernels.ops import varlen_attention_kernels as kernels

    cases = list(cases)
    compiled = run_jobs([case.job for case in cases], workers=workers, python=python)
    rows = [metrics(case, result) for case, result in zip(cases, compiled)]
    grid_order = kernels.GRID_ORDER
    return {
        "kind": "static-kernel-report",
        "note": "compile-time estimates read from SASS; no GPU ran these kernels",
        "label": label,
        "date": _dt.date.today().isoformat(),
        "triton": rows[0]["triton"] if rows else None,
        "grid_order": grid_order,
        "rows": rows,
        "schedules": grid_schedules(rows, grid_order),
        "window_trips": window_trips(),
    }


def write(report: dict, out: Path, stem: str = "static") -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(format_markdown(report))
    return json_path, md_path


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_markdown(report: dict) -> str:
    """The report as markdown: one table row per compile, the grid schedules, the window trip counts."""
    title = f"# Static kernel report (compile-time estimates), triton {report['triton']}"
    lines = [title + (f", {report['label']}" if report["label"] else ""), "",
             "Read from SASS compiled for sm_80/sm_90 without a GPU. instr/tile: main-loop SASS instructions"
             " x warps per 128x64 score tile; MMA ratio: tensor work issued / minimum; * = default tile."
             " Variants: plain (self-attention), causal, window (left and right bounds), softcap,"
             " gqa_cross (grouped heads and cross-attention offsets), all (every feature at once).", "",
             "| kernel | sm | dtype | d | variant | tile | warps/stages | regs | spill B | smem B | CTAs/SM |"
             " MMA | MMA ratio | instr/tile | ex2/tile |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines[2:2] = [variants_table(report), spills_markdown(report["rows"])]
    for row in report["rows"]:
        tile = f"{row['block_m']}x{row['block_n']}" + ("*" if row["default"] else "")
        per_tile = row.get("instr_per_tile")
        if per_tile is None and row.get("instr_per_iteration") is not None:
            per_tile = f"{row['instr_per_iteration']}/iter"
        lines.append(
            f"| {row['kernel']} | {row['arch']} | {row['dtype']} | {row['head_dim']} | {row['variant']} |"
            f" {tile} | w{row['num_warps']} s{row['num_stages']} | {row['registers']} | {row['spill_bytes']} |"
            f" {row['shared']} |"
            f" {row['ctas_per_sm']} | {row['mma_kind']} | {_fmt(row.get('mma_ratio'))} | {_fmt(per_tile)} |"
            f" {_fmt(row.get('ex2_per_tile'))} |")
    lines += ["", f"## Grid schedule (list-scheduled on 132 SMs, order `{report['grid_order']}`, "
                  f"{SCHEDULE_HEADS} heads)", "",
              "| kernel | variant (window) | workload | tokens | programs | waves | busy fraction |",
              "|---|---|---|---|---|---|---|"]
    for s in report["schedules"]:
        lines.append(f"| {s['kernel']} | {s['variant']} {tuple(s['window'])} | {s['workload']} |"
                     f" {sum(s['lengths'])} | {s['programs']} | {s['waves']:.2f} | {s['busy_fraction']:.3f} |")
    lines += ["", window_trips_markdown(report.get("window_trips", []))]
    return "\n".join(lines) + "\n"


def spills_markdown(rows: Sequence[dict]) -> str:
    """Every compile that keeps values in local memory, fp16 and bf16 merged where they agree, with
    its main-loop local-memory accesses and why it is accepted ("NOT ACCEPTED": the AOT tests fail)."""
    merged: dict[tuple, list[str]] = {}
    for row in rows:
        if row["spill_bytes"]:
            key = tuple(row.get(f) for f in ("kernel", "arch", "head_dim", "variant", "block_m", "block_n",
                                              "num_warps", "num_stages", "default", "registers", "spill_bytes",
                                              "loop_spill_ops"))
            merged.setdefault(key, []).append(row["dtype"])
    lines = ["## Register spills", ""]
    if not merged:
        return "\n".join(lines + ["No compile spills.", ""])
    lines += ["Spill B: ptxas' stack + local bytes per thread; loop accesses: local-memory loads and stores"
              " (LDL/STL) inside the main loop, per warp and iteration (0: the spilled values are touched only"
              " before or after it). At head_dim 256 the fp32 accumulator alone takes 128 of the 255 registers"
              " a thread may have (16 rows per mma.sync warp or 64 per wgmma warpgroup, x 256 columns / 32"
              " lanes), so every tile with minimal tensor-core work runs at the cap; a smaller tile cannot"
              " help, its rows per warp being already the MMA minimum. Every other compile is spill-free.", "",
              "| kernel | sm | d | variant | tile | dtypes | regs | spill B | loop accesses | accepted |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for key, dtypes in merged.items():
        kernel, arch, head_dim, variant, bm, bn, warps, stages, default, registers, spill, loop_ops = key
        row = dict(zip(("kernel", "arch", "head_dim", "variant", "spill_bytes", "loop_spill_ops"),
                       (kernel, arch, head_dim, variant, spill, loop_ops)))
        reasons = {accepted_spill({**row, "dtype": d}) for d in dtypes}
        reason = "NOT ACCEPTED" if None in reasons else "; ".join(sorted(reasons))
        lines.append(f"| {kernel} | {arch} | {head_dim} | {variant} | {bm}x{bn}{'*' if default else ''} w{warps}"
                     f" s{stages} | {', '.join(dtypes)} | {registers} | {spill} | {_fmt(loop_ops)} | {reason} |")
    return "\n".join(lines) + "\n"


def window_trips_markdown(trips: Sequence[dict]) -> str:
    """Total blocks visited over one sample and head, by length; the last column is the growth
    from the second-longest to the longest length (2x = linear, 4x = quadratic)."""
    if not trips:
        return ""
    lengths = trips[0]["lengths"]
    lines = ["## Window trip counts (blocks the loops visit over one sample, one head; default sm_90 tiles)", "",
             "From the kernels' own loop bounds (`program_trips`, checked against the kernels' recorded trips"
             " by tests/test_varlen_attention.py). In brackets: the most blocks one program visits.", "",
             "| kernel | d | tile | window | " + " | ".join(f"{n} tokens" for n in lengths) + " | growth x2 |",
             "|---|---|---|---|" + "---|" * len(lengths) + "---|"]
    for t in trips:
        cells = " | ".join(f"{total} ({worst})" for total, worst in zip(t["total_trips"], t["max_trips_per_program"]))
        growth = t["total_trips"][-1] / max(t["total_trips"][-2], 1)
        lines.append(f"| {t['kernel']} | {t['head_dim']} | {t['block_m']}x{t['block_n']} | {t['window_name']} |"
                     f" {cells} | {growth:.2f}x |")
    return "\n".join(lines) + "\n"
