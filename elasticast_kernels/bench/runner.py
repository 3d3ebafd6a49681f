"""Run the configured groups with a progress bar and collect the report."""
from __future__ import annotations

import datetime as _dt
import os
import sys
import time
import warnings
from pathlib import Path

from elasticast_kernels.bench import report as report_mod
from elasticast_kernels.bench.config import BenchConfig
from elasticast_kernels.bench.groups import attention, end_to_end, hf_ast, model, packing, pooling, sweep
from elasticast_kernels.bench.groups._common import Case, Task
from elasticast_kernels.bench.results import CaseResult, environment, load_average
from elasticast_kernels.bench.targets import check_targets

GROUP_MODULES = {
    "packing": packing, "attention": attention, "pooling": pooling,
    "model": model, "end_to_end": end_to_end, "sweep": sweep, "hf_ast": hf_ast,
}


def collect_tasks(cfg: BenchConfig) -> list[Task]:
    tasks: list[Task] = []
    for group in cfg.groups:
        if group not in GROUP_MODULES:
            raise ValueError(f"groups must be among {tuple(GROUP_MODULES)}, got {group!r}")
        tasks.extend(GROUP_MODULES[group].tasks(cfg))
    return tasks


def group_cases(cfg: BenchConfig, group: str) -> list[Case]:
    """Every timed case of ``group`` under ``cfg``, in report order (the pytest-benchmark suite)."""
    if group not in GROUP_MODULES:
        raise ValueError(f"group must be one of {tuple(GROUP_MODULES)}, got {group!r}")
    return [case for task in GROUP_MODULES[group].tasks(cfg) for case in task.cases]


def ordered(tasks: list[Task], first_workload: str) -> list[Task]:
    """Every group on the first workload (and the workload-free tasks) before the other workloads,
    so a run cut short by its time budget still covers every group."""
    return sorted(tasks, key=lambda t: t.workload not in (None, first_workload))


def run(cfg: BenchConfig, progress: bool = True, budget_s: float | None = None) -> dict:
    """Run every task of ``cfg`` and return the report dict (not yet written).

    ``budget_s``: once this many seconds have passed, the remaining tasks are recorded as skipped
    (reason given) instead of run. Ctrl-C (or ``timeout -s INT``) does the same for the rest of
    the run, so a report is written either way.
    """
    if os.environ.get("TRITON_INTERPRET") == "1" and not cfg.is_cuda:
        # Benchmarks time the real CPU paths, not the Triton interpreter.
        warnings.warn("TRITON_INTERPRET=1 is set: CPU ops run in the Triton interpreter and times are not meaningful")
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    load_before = load_average()
    start = time.perf_counter()
    tasks = ordered(collect_tasks(cfg), cfg.workloads[0])
    results: list[CaseResult] = []
    bar = _progress(len(tasks), progress)
    stop_reason = None
    for task in tasks:
        if stop_reason is None and budget_s is not None and time.perf_counter() - start > budget_s:
            stop_reason = f"time budget of {budget_s:.0f} s exhausted before this task"
        if stop_reason is not None:
            results.append(CaseResult(task.group, "task", task.label, task.workload or "-", {}, {}, "skipped", stop_reason))
            continue
        if bar is not None:
            bar.set_description(task.label[:48])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # prototype-API warnings from baselines would bury the bar
                results.extend(task.run(cfg))
        except KeyboardInterrupt:
            stop_reason = "interrupted"
            results.append(CaseResult(task.group, "task", task.label, task.workload or "-", {}, {}, "skipped", stop_reason))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    # 1/5/15-minute load averages: "before" is what other processes ran; "after" adds this run's
    # own threads. Both go into the report so a reader can tell a quiet run from a busy one.
    env = dict(environment(cfg.device), load_average_before=load_before, load_average_after=load_average())
    dicts = [r.as_dict() for r in results]
    targets = [] if cfg.suite == "tiny" else check_targets(dicts, cfg.device, env)
    return report_mod.build_report(cfg.as_dict(), env, dicts, targets, created, time.perf_counter() - start)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="task", file=sys.stderr, dynamic_ncols=True)


def write(report: dict, out_dir: Path, plots: bool = True) -> tuple[Path, list[Path]]:
    """Write results.json, the table (summary.txt) and the plots into ``out_dir``."""
    path = report_mod.write_json(report, out_dir)
    (out_dir / "summary.txt").write_text(report_mod.format_table(report) + "\n")
    made = []
    if plots:
        from elasticast_kernels.bench.plots import write_plots

        made = write_plots(report, out_dir)
    return path, made
