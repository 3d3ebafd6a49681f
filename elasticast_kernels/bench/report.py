"""The report: JSON record of a run, the console table, and the comparison of two runs."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from elasticast_kernels.bench.results import busy

SCHEMA = "elasticast-bench/1"
REQUIRED_KEYS = ("schema", "created_utc", "suite", "device", "device_label", "environment", "config",
                 "duration_s", "results", "targets", "notes")
RESULT_KEYS = ("group", "name", "variant", "workload", "params", "metrics", "status", "reason", "key")
NOTES = (
    "Times are medians over repeats after warm-up (autotuning and compilation excluded); CUDA times use "
    "CUDA events / triton.testing.do_bench.",
    "tflops_real counts only real, unmasked work: each sample's own attention block (no cross-sample "
    "pairs, no padding), the same count for every implementation.",
    "speedup_vs_baseline = baseline median / case median, both measured in this run on the same inputs; "
    "the baseline is the paper's masked SDPA on padded rows (attention, model, end_to_end, sweep), the "
    "reference's padded masked pooling (pooling), unfold+cat (tensor packing), Hugging Face's "
    "ASTForAudioClassification on the extractor's 1024-frame padded batch (hf_ast); speedup_vs_python compares "
    "the C++ best-fit with a pure-Python best-fit on the same lengths.",
    "Peak memory: torch.cuda.max_memory_allocated above the memory in use before the call (GPU); growth of "
    "the peak resident set size during the call (CPU, rss_hwm).",
    "padding_fraction: share of the paper's padded row layout (rows padded to the longest) that is padding.",
)
# Columns of the console table: (header, metric, format)
COLUMNS = (
    ("median ms", "median_ms", "{:.3f}"),
    ("tokens/s", "tokens_per_s", "{:.3g}"),
    ("TFLOP/s*", "tflops_real", "{:.3g}"),
    ("pad %", "padding_fraction", "{:.1%}"),
    ("peak MiB", "peak_mem_mib", "{:.1f}"),
    ("speedup", "speedup_vs_baseline", "{:.2f}x"),
)
SHOWN_PARAMS = ("pass_", "seqlen", "samples", "limit", "strategy", "dtype", "packing", "num_lengths", "dim", "depth")


def build_report(cfg_dict: dict, env: dict, results: list[dict], targets: list[dict], created: str, duration_s: float) -> dict:
    return {
        "schema": SCHEMA,
        "created_utc": created,
        "suite": cfg_dict["suite"],
        "device": cfg_dict["device"],
        "device_label": env["device_label"],
        "environment": env,
        "config": cfg_dict,
        "duration_s": duration_s,
        "results": results,
        "targets": targets,
        "notes": list(NOTES),
    }


def write_json(report: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    return path


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _params(params: dict) -> str:
    return " ".join(f"{k.rstrip('_')}={params[k]}" for k in SHOWN_PARAMS if k in params)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_table(report: dict) -> str:
    """Console summary: one line per case (the sweep's padding grid as a pivot), then the targets."""
    header = ["group", "case", "variant", "workload", "params", *(c[0] for c in COLUMNS), "status"]
    rows = []
    for r in report["results"]:
        if r["group"] == "sweep" and r["name"] == "padding":
            continue
        m = r["metrics"]
        cells = [_fmt(m.get(metric), fmt) for _, metric, fmt in COLUMNS]
        if r["group"] == "packing" and r["name"] == "plan" and r["status"] == "ok":
            cells[1] = _fmt(m.get("lengths_per_s"), "{:.3g}") + " len/s"
            cells[3] = _fmt(m.get("efficiency"), "{:.2%}") + " eff"
            cells[5] = _fmt(m.get("speedup_vs_python"), "{:.0f}x py")
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        rows.append([r["group"], r["name"], r["variant"], r["workload"], _params(r["params"]), *cells, status[:90]])
    parts = [f"elasticast-bench {report['suite']} suite on {report['device_label']}",
             f"(torch {report['environment']['torch']}, triton {report['environment']['triton']}, "
             f"commit {report['environment']['git_commit']}; took {duration_text(report['duration_s'])})\n"
             + machine_load_text(report["environment"]),
             _table(rows, header),
             "* TFLOP/s counts only real, unmasked work; speedup = masked-SDPA (or named) baseline time / case time, same run."]
    pivot = _padding_pivot(report["results"])
    if pivot:
        parts.append(pivot)
    if report["targets"]:
        parts.append(targets_text(report["targets"]))
    elif report["suite"] == "tiny":
        parts.append("Targets: not checked at tiny sizes.")
    return "\n\n".join(parts)


def duration_text(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"


def machine_load_text(env: dict) -> str:
    """The load line of a report: CPUs, threads, load averages before and after the run, and a
    warning when other processes were competing for the CPUs."""
    cpus, before, after = env.get("cpu_count"), env.get("load_average_before"), env.get("load_average_after")
    fmt = lambda load: "/".join(f"{x:.2f}" for x in load) if load else "unknown"  # noqa: E731
    text = (f"Machine load: {cpus} CPUs, {env.get('torch_threads')} torch threads; load average (1/5/15 min) "
            f"{fmt(before)} before the run, {fmt(after)} after it (this run's own threads included).")
    if busy(env):
        text += (f"\nBUSY: other processes were running (load {before[0]:.2f} on {cpus} CPUs before the run): "
                 "CPU times are inflated and noisier; compare ratios within this run, or rerun on a quiet machine.")
    return text


def targets_text(targets: list[dict]) -> str:
    """The target table, then what was measured and the likely reason for each target not met."""
    result = {True: "met", False: "MISSED (see below)", None: "not measured (see below)"}
    trows = [[t["claim"], _fmt(t["value"], "{:.4g}"), result[t["met"]]] for t in targets]
    lines = [_table(trows, ["target", "value", "result"])]
    for t in targets:
        if t["met"] is True:
            continue
        lines.append(f"\n{'MISSED' if t['met'] is False else 'NOT MEASURED'}: {t['claim']}")
        if t.get("measured"):
            lines.append(f"  measured: {t['measured']}")
        if t.get("reason"):
            lines.append(f"  {'likely reason' if t['met'] is False else 'why'}: {t['reason']}")
    return "\n".join(lines)


def _padding_pivot(results: list[dict]) -> str:
    """Padding fraction per strategy x token limit, at the paper's 12 samples per step (or the closest)."""
    cases = [r for r in results if r["group"] == "sweep" and r["name"] == "padding" and r["status"] == "ok"]
    if not cases:
        return ""
    steps = sorted({r["params"]["samples"] for r in cases}, key=lambda s: abs(s - 12))[0]
    limits = sorted({r["params"]["limit"] for r in cases})
    strategies = list(dict.fromkeys(r["variant"] for r in cases))
    cell = {(r["variant"], r["params"]["limit"]): r["metrics"] for r in cases if r["params"]["samples"] == steps}
    rows = []
    for s in strategies:
        rows.append([s, *(_fmt(cell.get((s, lim), {}).get("padding_fraction"), "{:.1%}") for lim in limits)])
    rows.append(["(theoretical minimum)", *(_fmt(cell.get((strategies[0], lim), {}).get("min_padding_fraction"), "{:.1%}")
                                           for lim in limits)])
    return f"Padding of the paper's row layout, {steps} samples per step (sweep):\n" + _table(
        rows, ["strategy \\ limit", *map(str, limits)])


# ---------------------------------------------------------------- compare

COMPARED = ("median_ms", "tokens_per_s", "tflops_real", "peak_mem_bytes", "speedup_vs_baseline", "efficiency", "lengths_per_s")


def load(path: str | Path) -> dict:
    """Read a results file; ValueError naming the file if it is not a report."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read results file {path}: {exc}") from exc
    problems = validate(report)
    if problems:
        raise ValueError(f"{path} is not a valid elasticast-bench report: {problems[0]}")
    return report


def compare(a: dict, b: dict, a_name: str = "A", b_name: str = "B") -> str:
    """Per case present in both: each compared metric in A and B and the change B / A."""
    a_cases = {r["key"]: r for r in a["results"] if r["status"] == "ok"}
    rows = []
    only_a = only_b = 0
    for r in b["results"]:
        old = a_cases.get(r["key"])
        if r["status"] != "ok":
            continue
        if old is None:
            only_b += 1
            continue
        for metric in COMPARED:
            x, y = old["metrics"].get(metric), r["metrics"].get(metric)
            if x is None or y is None:
                continue
            change = f"{y / x:.3f}x" if x else "-"
            rows.append([r["group"], r["name"], r["variant"], r["workload"], _params(r["params"]), metric,
                         f"{x:.4g}", f"{y:.4g}", change])
    b_keys = {r["key"] for r in b["results"]}
    only_a = sum(1 for k in a_cases if k not in b_keys)
    head = (f"{a_name}: {a['device_label']} ({a['created_utc']}, commit {a['environment'].get('git_commit')})\n"
            f"{b_name}: {b['device_label']} ({b['created_utc']}, commit {b['environment'].get('git_commit')})\n"
            "change = B / A (for median_ms and peak memory, < 1 is better; for rates and speedups, > 1 is better)")
    table = _table(rows, ["group", "case", "variant", "workload", "params", "metric", a_name, b_name, "change"]) if rows \
        else "no case is present in both files"
    tail = f"cases only in {a_name}: {only_a}; only in {b_name}: {only_b}"
    return "\n\n".join([head, table, tail])


# ---------------------------------------------------------------- validation

def _finite_numbers(obj: Any, where: str, problems: list[str]) -> None:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, (int, float)):
        if not math.isfinite(obj):
            problems.append(f"{where} is not finite")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _finite_numbers(v, f"{where}.{k}", problems)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _finite_numbers(v, f"{where}[{i}]", problems)
    else:
        problems.append(f"{where} has unexpected type {type(obj).__name__}")


def validate(report: Any) -> list[str]:
    """Problems with a report's structure (empty list = valid): keys, types, finite numbers."""
    problems: list[str] = []
    if not isinstance(report, dict):
        return ["report is not a JSON object"]
    for key in REQUIRED_KEYS:
        if key not in report:
            problems.append(f"missing key {key!r}")
    if problems:
        return problems
    if report["schema"] != SCHEMA:
        problems.append(f"schema is {report['schema']!r}, expected {SCHEMA!r}")
    if not isinstance(report["results"], list):
        return problems + ["results is not a list"]
    for i, r in enumerate(report["results"]):
        missing = [k for k in RESULT_KEYS if k not in r]
        if missing:
            problems.append(f"results[{i}] misses {missing}")
            continue
        if r["status"] not in ("ok", "skipped", "error"):
            problems.append(f"results[{i}].status is {r['status']!r}")
        if r["status"] != "ok" and not r["reason"]:
            problems.append(f"results[{i}] is {r['status']} without a reason")
        if r["status"] == "ok" and not isinstance(r["metrics"], dict):
            problems.append(f"results[{i}].metrics is not an object")
        for name, value in r["metrics"].items():
            if not (value is None or isinstance(value, (int, float, str))):
                problems.append(f"results[{i}].metrics.{name} has type {type(value).__name__}")
    _finite_numbers(report, "report", problems)
    return problems
