"""Helpers shared by the benchmark groups: packed layouts, guarded cases, timed metrics."""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from elasticast_kernels.bench.config import BenchConfig
from elasticast_kernels.bench.results import CaseResult
from elasticast_kernels.bench.timing import measure, peak_memory


@dataclass
class Task:
    """One unit of the progress bar: a label and a function that returns its case results."""

    group: str
    label: str
    run: Callable[[], list[CaseResult]]
    workload: str | None = None  # None: the task is not tied to one workload


@dataclass(frozen=True)
class StepLayout:
    """A step's samples packed into rows: segment lengths in plan order and row boundaries."""

    seqlens: tuple[int, ...]
    pack_offsets: tuple[int, ...]
    max_tokens: int

    @property
    def total_tokens(self) -> int:
        return int(sum(self.seqlens))

    @property
    def num_packs(self) -> int:
        return len(self.pack_offsets) - 1

    def row_lengths(self) -> list[int]:
        return [sum(self.seqlens[a:b]) for a, b in zip(self.pack_offsets[:-1], self.pack_offsets[1:])]

    @property
    def padded_tokens(self) -> int:
        """Tokens of the paper's layout: every row padded to the longest row."""
        rows = self.row_lengths()
        return len(rows) * max(rows, default=0)

    @property
    def padding_fraction(self) -> float:
        padded = self.padded_tokens
        return 1.0 - self.total_tokens / padded if padded else 0.0


def plan_bins(lengths: np.ndarray, max_tokens: int, strategy: str = "next_fit") -> list[np.ndarray]:
    """Sample indices per pack from ``elasticast_kernels.packing`` (the paper's next-fit as a
    fallback while the packer is not importable, so attention cases can still run)."""
    try:
        from elasticast_kernels.packing import pack_lengths
    except ImportError:
        if strategy != "next_fit":
            raise
        bins, current, used = [], [], 0
        for i, n in enumerate(lengths.tolist()):
            if current and used + n > max_tokens:
                bins.append(np.asarray(current, dtype=np.int64))
                current, used = [], 0
            current.append(i)
            used += n
        if current:
            bins.append(np.asarray(current, dtype=np.int64))
        return bins
    return list(pack_lengths(lengths, max_tokens, strategy).bins)


def step_layout(lengths: np.ndarray, max_tokens: int, strategy: str = "next_fit") -> StepLayout:
    bins = plan_bins(np.asarray(lengths, dtype=np.int64), max_tokens, strategy)
    seqlens = tuple(int(lengths[i]) for b in bins for i in b)
    offsets = [0]
    for b in bins:
        offsets.append(offsets[-1] + len(b))
    return StepLayout(seqlens, tuple(offsets), max_tokens)


def seq_layout(layout: StepLayout, device: torch.device | str):
    """The backends' ``SeqLayout`` for a step (raises ImportError until the backends land)."""
    from elasticast_kernels.backends import SeqLayout

    return SeqLayout.from_seqlens(layout.seqlens, device, pack_offsets=layout.pack_offsets)


def cu_seqlens(seqlens: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    out = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
    out[1:] = torch.cumsum(torch.as_tensor(seqlens, dtype=torch.int64), 0).to(torch.int32)
    return out.to(device)


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
