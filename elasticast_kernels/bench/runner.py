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
from elasticast_kernels.bench.groups import attention, end_to_end, model, packing, pooling, sweep
from elasticast_kernels.bench.groups._common import Task
from elasticast_kernels.bench.results import CaseResult, environment
from elasticast_kernels.bench.targets import check_targets

GROUP_MODULES = {
    "packing": packing, "attention": attention, "pooling": pooling,
    "model": model, "end_to_end": end_to_end, "sweep": sweep,
}


def collect_tasks(cfg: BenchConfig) -> list[Task]:
    tasks: list[Task] = []
    for group in cfg.groups:
        if group not in GROUP_MODULES:
            raise ValueError(f"groups must be among {tuple(GROUP_MODULES)}, got {group!r}")
        tasks.extend(GROUP_MODULES[group].tasks(cfg))
    return tasks


def run(cfg: BenchConfig, progress: bool = True) -> dict:
    """Run every task of ``cfg`` and return the report dict (not yet written)."""
    if os.environ.get("TRITON_INTERPRET") == "1" and not cfg.is_cuda:
        # Benchmarks time the real CPU paths, not the Triton interpreter.
        warnings.warn("TRITON_INTERPRET=1 is set: CPU ops run in the Triton interpreter and times are not meaningful")
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    tasks = collect_tasks(cfg)
    results: list[CaseResult] = []
    bar = _progress(len(tasks), progress)
    for task in tasks:
        if bar is not None:
            bar.set_description(task.label[:48])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # prototype-API warnings from baselines would bury the bar
            results.extend(task.run())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    env = environment(cfg.device)
    dicts = [r.as_dict() for r in results]
    return report_mod.build_report(cfg.as_dict(), env, dicts, check_targets(dicts, cfg.device), created,
                                   time.perf_counter() - start)


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
