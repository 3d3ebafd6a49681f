"""The static kernel report: compile every case, derive per-config metrics, simulate the grid.

Every figure is a compile-time estimate read from the machine code (no GPU runs anything):

- ``registers``, ``spill_bytes`` (STACK + LOCAL), ``shared`` bytes, ``ctas_per_sm``
- ``mma_kind`` (``wgmma`` / ``mma.sync``) and ``mma_ratio``: tensor-core work one main-loop
  iteration issues, divided by the minimum for its tile (1.0 = no replicated MMA)
- ``instr_per_tile``: main-loop SASS instructions x warps, normalised to one 128 x 64 tile
- ``ex2_per_tile``: ``MUFU.EX2`` per 128 x 64 tile (x warps)
- the busy fraction of the default forward tile's launch on the schedule workloads
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Sequence

from elasticast_kernels.bench.static.compile import run_jobs
from elasticast_kernels.bench.static.occupancy import SMS, ctas_per_sm
from elasticast_kernels.bench.static.schedule import simulate
from elasticast_kernels.bench.static.specs import Case

SCHEDULE_HEADS = 12


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
    """Busy fraction of each default fwd/dkdv/dq tile (sm_90, bf16, head_dim 64) on the workloads."""
    out = []
    for row in rows:
        if not (row["default"] and row["kernel"] in ("fwd", "dkdv", "dq") and row["arch"] == 90
                and row["dtype"] == "bf16" and row["head_dim"] == 64):
            continue
        for name, lengths in schedule_workloads().items():
            result = simulate(row["kernel"], lengths, SCHEDULE_HEADS, row["block_m"], row["block_n"], row["causal"],
                              grid_order, SMS[90], row["ctas_per_sm"])
            out.append({"kernel": row["kernel"], "causal": row["causal"], "workload": name, "lengths": lengths,
                        "heads": SCHEDULE_HEADS, "block_m": row["block_m"], "block_n": row["block_n"],
                        "ctas_per_sm": row["ctas_per_sm"], "sms": SMS[90], "order": grid_order,
                        **{k: round(v, 4) for k, v in asdict(result).items()}})
    return out


def build(cases: Iterable[Case], workers: int = 2, python: str | None = None, label: str = "") -> dict:
    """Compile ``cases`` and return the report (JSON-ready)."""
    from elasticast_kernels.ops import varlen_attention_kernels as kernels

    cases = list(cases)
    compiled = run_jobs([case.job for case in cases], workers=workers, python=python)
    rows = [metrics(case, result) for case, result in zip(cases, compiled)]
    grid_order = getattr(kernels, "GRID_ORDER", "slots_then_heads")
    return {
        "kind": "static-kernel-report",
        "note": "compile-time estimates read from SASS; no GPU ran these kernels",
        "label": label,
        "date": _dt.date.today().isoformat(),
        "triton": rows[0]["triton"] if rows else None,
        "grid_order": grid_order,
        "rows": rows,
        "schedules": grid_schedules(rows, grid_order),
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
    """The report as markdown: one table row per compile, then the grid schedules."""
    title = f"# Static kernel report (compile-time estimates), triton {report['triton']}"
    lines = [title + (f", {report['label']}" if report["label"] else ""), "",
             "Read from SASS compiled for sm_80/sm_90 without a GPU. instr/tile: main-loop SASS instructions"
             " x warps per 128x64 score tile; MMA ratio: tensor work issued / minimum; * = default tile.", "",
             "| kernel | sm | dtype | d | causal | tile | warps/stages | regs | spill B | smem B | CTAs/SM |"
             " MMA | MMA ratio | instr/tile | ex2/tile |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        tile = f"{row['block_m']}x{row['block_n']}" + ("*" if row["default"] else "")
        per_tile = row.get("instr_per_tile")
        if per_tile is None and row.get("instr_per_iteration") is not None:
            per_tile = f"{row['instr_per_iteration']}/iter"
        lines.append(
            f"| {row['kernel']} | {row['arch']} | {row['dtype']} | {row['head_dim']} | {_fmt(row['causal'])} |"
            f" {tile} | w{row['num_warps']} s{row['num_stages']} | {row['registers']} | {row['spill_bytes']} |"
            f" {row['shared']} |"
            f" {row['ctas_per_sm']} | {row['mma_kind']} | {_fmt(row.get('mma_ratio'))} | {_fmt(per_tile)} |"
            f" {_fmt(row.get('ex2_per_tile'))} |")
    lines += ["", f"## Grid schedule (list-scheduled on 132 SMs, order `{report['grid_order']}`, "
                  f"{SCHEDULE_HEADS} heads)", "",
              "| kernel | causal | workload | tokens | programs | waves | busy fraction |",
              "|---|---|---|---|---|---|---|"]
    for s in report["schedules"]:
        lines.append(f"| {s['kernel']} | {_fmt(s['causal'])} | {s['workload']} | {sum(s['lengths'])} |"
                     f" {s['programs']} | {s['waves']:.2f} | {s['busy_fraction']:.3f} |")
    return "\n".join(lines) + "\n"
