"""Helpers shared by the benchmark groups: step layouts, guarded cases, timed metrics."""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from elasticast_kernels.bench.config import BenchConfig
from elasticast_kernels.bench.results import CaseResult
from elasticast_kernels.bench.timing import measure, peak_memory
from elasticast_kernels.layout import SeqLayout
from elasticast_kernels.packing import pack_lengths


@dataclass
class Task:
    """One unit of the progress bar: a label and a function that returns its case results."""

    group: str
    label: str
    run: Callable[[], list[CaseResult]]
    workload: str | None = None  # None: the task is not tied to one workload


def step_layout(lengths: np.ndarray, max_tokens: int, strategy: str = "next_fit",
                device: torch.device | str = "cpu") -> SeqLayout:
    """A step's samples packed into rows of at most ``max_tokens`` by ``strategy``: the packed
    layout (segments in plan order, one pack per row) with ``cu_seqlens`` on ``device``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    plan = pack_lengths(lengths, max_tokens, strategy)
    return SeqLayout(lengths[plan.order].tolist(), plan.pack_offsets.tolist(), device=device)


def padded_tokens(layout: SeqLayout) -> int:
    """Tokens of the paper's layout: every pack a row, padded to the longest row."""
    rows = layout.pack_tokens()
    return len(rows) * max(rows, default=0)


def padding_fraction(layout: SeqLayout) -> float:
    """Share of the paper's padded rows that is padding."""
    padded = padded_tokens(layout)
    return 1.0 - layout.total_tokens / padded if padded else 0.0


def timed_metrics(fn: Callable[[], object], cfg: BenchConfig, *, warmup: int | None = None, repeats: int | None = None,
                  memory: bool = True) -> dict:
    """Median time and peak memory of ``fn`` on the config's device.

    Order: ``warmup`` untimed calls (autotuning, compilation), then one call measured for peak
    memory (it also warms up), then the timed repeats.
    """
    warm = cfg.warmup if warmup is None else warmup
    metrics: dict = {}
    if memory:
        for _ in range(warm):
            fn()
        metrics.update(peak_memory(fn, cfg.device).as_dict())
        warm = 0
    timing = measure(fn, cfg.device, warmup=warm, repeats=cfg.repeats if repeats is None else repeats,
                     min_time_s=cfg.min_time_s)
    return {**timing.as_dict(), **metrics}


def guarded(group: str, name: str, variant: str, workload: str, params: dict,
            body: Callable[[], dict]) -> CaseResult:
    """Run ``body`` (which returns metrics) into a CaseResult: an ImportError or an unavailable
    feature (``Unavailable``) becomes a skipped case with the reason, any other exception an
    error case with its message, so one broken case never hides the rest of the report."""
    try:
        metrics = body()
    except Unavailable as exc:
        return CaseResult(group, name, variant, workload, params, {}, "skipped", str(exc))
    except NotImplementedError as exc:  # torch's way of saying "not on this device/dtype"
        return CaseResult(group, name, variant, workload, params, {}, "skipped", f"not implemented here: {exc}"[:500])
    except ImportError as exc:
        return CaseResult(group, name, variant, workload, params, {}, "skipped", f"not importable: {exc}")
    except Exception as exc:  # noqa: BLE001 - recorded in the report, never swallowed silently
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
        return CaseResult(group, name, variant, workload, params, {}, "error", f"{type(exc).__name__}: {exc} ({where})"[:500])
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return CaseResult(group, name, variant, workload, params, metrics)


class Unavailable(RuntimeError):
    """A baseline that cannot run here (missing package, no GPU); the message is the reason."""


def add_speedups(results: list[CaseResult], baseline_variant: str, match: tuple[str, ...] = ()) -> None:
    """Set ``speedup_vs_<baseline>`` (baseline median / case median) and the memory ratio on every
    ok case whose group, name, workload and ``match`` params equal those of an ok baseline case."""
    def key(r: CaseResult) -> tuple:
        return (r.group, r.name, r.workload) + tuple(r.params.get(m) for m in match)

    base = {key(r): r for r in results if r.variant == baseline_variant and r.status == "ok"}
    for r in results:
        b = base.get(key(r))
        if r.status != "ok" or b is None:
            continue
        if r.metrics.get("median_ms") and b.metrics.get("median_ms"):
            r.metrics["speedup_vs_baseline"] = b.metrics["median_ms"] / r.metrics["median_ms"]
        if r.metrics.get("peak_mem_bytes") and b.metrics.get("peak_mem_bytes"):
            r.metrics["memory_vs_baseline"] = r.metrics["peak_mem_bytes"] / b.metrics["peak_mem_bytes"]
