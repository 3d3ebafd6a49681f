"""Packing group: plan quality and speed per strategy, C++ vs pure Python, and tensor packing.

The C++ best-fit-decreasing plan (``pack_lengths``, timed whole: validation, plan, ``PackPlan``)
and the textbook pure-Python best fit (``bench.baselines.textbook_best_fit_decreasing``, from a
Python list) run on the same lengths in the same task; ``speedup_vs_python`` is their ratio.
"""
from __future__ import annotations

import numpy as np

from elasticast_kernels.bench.baselines import textbook_best_fit_decreasing, unfold_pack
from elasticast_kernels.bench.config import BenchConfig
from elasticast_kernels.bench.groups._common import Task, guarded, timed_metrics
from elasticast_kernels.bench.results import CaseResult
from elasticast_kernels.bench.workloads import lengths_for, make_workload

GROUP = "packing"


def _plan_case(cfg: BenchConfig, workload: str, strategy: str, lengths: np.ndarray) -> CaseResult:
    def body() -> dict:
        from elasticast_kernels.packing import pack_lengths

        plan = pack_lengths(lengths, cfg.pack_tokens, strategy)
        metrics = timed_metrics(lambda: pack_lengths(lengths, cfg.pack_tokens, strategy), cfg, memory=False)
        total = int(lengths.sum())
        metrics.update(
            efficiency=float(plan.efficiency),
            padding_fraction=1.0 - float(plan.efficiency),
            num_packs=int(plan.num_packs),
            min_packs=-(-total // cfg.pack_tokens),
            lengths_per_s=len(lengths) / (metrics["median_ms"] / 1e3),
        )
        return metrics

    return guarded(GROUP, "plan", strategy, workload, {"num_lengths": len(lengths), "max_tokens": cfg.pack_tokens}, body)


def _python_case(cfg: BenchConfig, workload: str, lengths: np.ndarray) -> CaseResult:
    def body() -> dict:
        as_list = lengths.tolist()  # the baseline's natural input, as the C++ one's is an array
        bins = textbook_best_fit_decreasing(as_list, cfg.pack_tokens)
        metrics = timed_metrics(lambda: textbook_best_fit_decreasing(as_list, cfg.pack_tokens), cfg,
                                warmup=0, repeats=max(1, min(cfg.repeats, 3)), memory=False)
        metrics.update(
            efficiency=float(lengths.sum()) / (len(bins) * cfg.pack_tokens),
            num_packs=len(bins),
            lengths_per_s=len(lengths) / (metrics["median_ms"] / 1e3),
        )
        return metrics

    # Variant name kept from earlier result files so that --compare lines up.
    return guarded(GROUP, "plan", "python_best_fit_decreasing", workload,
                   {"num_lengths": len(lengths), "max_tokens": cfg.pack_tokens}, body)


def _cpp_vs_python(results: list[CaseResult]) -> None:
    """C++ best-fit-decreasing lengths/s over the pure-Python one, measured in this run."""
    by_key = {(r.workload, r.variant, r.params.get("num_lengths")): r for r in results if r.status == "ok"}
    for (workload, variant, n), r in by_key.items():
        py = by_key.get((workload, "python_best_fit_decreasing", n))
        if variant == "best_fit_decreasing" and py is not None:
            r.metrics["speedup_vs_python"] = r.metrics["lengths_per_s"] / py.metrics["lengths_per_s"]


def _tensor_case(cfg: BenchConfig, workload: str, variant: str) -> CaseResult:
    wl = make_workload(workload, max(cfg.samples_per_step, 48), cfg.seed)
    idx = wl.step(0, cfg.samples_per_step)
    tokens = wl.tokens[idx]

    def body() -> dict:
        specs = wl.spectrograms(idx, dtype=cfg.dtype, device=cfg.device)
        if variant == "pack_spectrograms":
            from elasticast_kernels.packing import pack_lengths, pack_spectrograms

            plan = pack_lengths(tokens, cfg.pack_tokens, "best_fit_decreasing")
            fn = lambda: pack_spectrograms(specs, 16, plan)  # noqa: E731
        else:
            fn = lambda: unfold_pack(specs, 16)  # noqa: E731
        metrics = timed_metrics(fn, cfg)
        total = int(tokens.sum())
        moved = 2 * total * 256 * specs[0].element_size()  # read + write every patch pixel once
        seconds = metrics["median_ms"] / 1e3
        metrics.update(tokens_per_s=total / seconds, bytes_per_s=moved / seconds, total_tokens=total)
        return metrics

    return guarded(GROUP, "pack_tensors", variant, workload, {"samples": cfg.samples_per_step}, body)


def tasks(cfg: BenchConfig) -> list[Task]:
    out: list[Task] = []
    for workload in cfg.workloads:
        def run_plans(workload: str = workload) -> list[CaseResult]:
            lengths = lengths_for(workload, cfg.packing_num_lengths, cfg.seed)
            results = [_plan_case(cfg, workload, s, lengths) for s in cfg.strategies]
            py_lengths = lengths[: cfg.python_num_lengths]
            if len(py_lengths) != len(lengths):  # same n for a fair lengths/s ratio
                results.append(_plan_case(cfg, workload, "best_fit_decreasing", py_lengths))
            results.append(_python_case(cfg, workload, py_lengths))
            _cpp_vs_python(results)
            return results

        def run_tensors(workload: str = workload) -> list[CaseResult]:
            results = [_tensor_case(cfg, workload, v) for v in ("pack_spectrograms", "unfold_cat")]
            base = next((r for r in results if r.variant == "unfold_cat" and r.status == "ok"), None)
            for r in results:
                if base is not None and r.status == "ok":
                    r.metrics["speedup_vs_baseline"] = base.metrics["median_ms"] / r.metrics["median_ms"]
            return results

        out.append(Task(GROUP, f"packing plans [{workload}]", run_plans, workload))
        out.append(Task(GROUP, f"packing tensors [{workload}]", run_tensors, workload))
    return out

