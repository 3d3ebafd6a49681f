"""What the benchmark groups share: cases, their measurement, step layouts, speedups.

A `Case` is one measured thing. Its identity (group, name, variant, workload, params) is the same
in ``elasticast-bench``'s report and in the pytest-benchmark suite (``benchmarks/``), and its
``setup`` builds the inputs and returns a `Timed`: the call to time, a check of that call's result
(a wrong result is an error, never a figure), and the figures derived from the median time.
``elasticast-bench`` measures a case with `measure_case` (median of repeats, peak memory);
``benchmarks/`` hands ``Timed.fn`` to pytest-benchmark. A group bundles its cases into `Task`s
(one unit of the progress bar), whose ``finish`` adds the figures that compare cases (speedups).
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

import numpy as np
import torch

from elasticast_kernels.bench.config import BenchConfig
from elasticast_kernels.bench.results import CaseResult, case_key
from elasticast_kernels.bench.timing import measure, peak_memory
from elasticast_kernels.layout import SeqLayout
from elasticast_kernels.packing import pack_lengths

T = TypeVar("T")
# Params that tell the cases of one group apart, in the order a case id shows them.
ID_PARAMS = ("pass_", "seqlen", "samples", "limit", "strategy", "dtype", "packing", "num_lengths")


class Unavailable(RuntimeError):
    """A baseline that cannot run here (missing package, no GPU); the message is the reason."""


@dataclass
class Timed:
    """The work of a case, ready to time.

    Attributes:
        fn: the timed call (no arguments); its result goes to ``check``.
        check: ``check(result)`` raises AssertionError when the result is wrong and may return
            figures about it (``max_abs_err``); run once, untimed.
        rates: figures from the median time in seconds (``tokens_per_s``, ``tflops_real``).
        info: figures that do not depend on the time (``total_tokens``, ``padding_fraction``).
        memory: measure the peak memory of one call (the report only).
        warmup, repeats: override the config's counts for this case (the report only;
            pytest-benchmark uses its own options).
    """

    fn: Callable[[], object]
    check: Callable[[object], dict | None] | None = None
    rates: Callable[[float], dict] | None = None
    info: dict = field(default_factory=dict)
    memory: bool = True
    warmup: int | None = None
    repeats: int | None = None


@dataclass(eq=False)
class Case:
    """One benchmark case: its identity and a ``setup`` that returns its `Timed` work.

    ``setup`` raises `Unavailable`, ImportError or NotImplementedError when the case cannot run
    here (the report lists it as skipped, pytest skips it, both with the reason).
    """

    group: str
    name: str
    variant: str
    workload: str
    params: dict
    setup: Callable[[], Timed]

    @property
    def key(self) -> str:
        """``group/name/variant/workload[every param]``: what ``elasticast-bench --compare`` matches."""
        return case_key(self.group, self.name, self.variant, self.workload, self.params)

    def _shown(self) -> str:
        return ",".join(f"{k.rstrip('_')}={self.params[k]}" for k in ID_PARAMS if k in self.params)

    @property
    def id(self) -> str:
        """``name/variant/workload/param=value,...``: the pytest id of the case."""
        return "/".join(p for p in (self.name, self.variant, self.workload, self._shown()) if p)

    @property
    def comparison(self) -> str:
        """The id without the variant: the cases that run on the same inputs and are compared
        (a pytest-benchmark group)."""
        return "/".join(p for p in (self.group, self.name, self.workload, self._shown()) if p)


class Shared(Generic[T]):
    """An input several cases use (a layout, spectrograms, reference logits), made on first use."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: list[T] = []

    def __call__(self) -> T:
        if not self._value:
            self._value.append(self._make())
        return self._value[0]


@dataclass
class Task:
    """One unit of the progress bar: cases measured together, the figures that compare them
    (``finish``, e.g. speedups), and results that are not timed cases (``extra``)."""

    group: str
    label: str
    cases: list[Case] = field(default_factory=list)
    workload: str | None = None  # None: the task is not tied to one workload
    finish: Callable[[list[CaseResult]], None] | None = None
    extra: Callable[[], list[CaseResult]] | None = None

    def run(self, cfg: BenchConfig) -> list[CaseResult]:
        results = [measure_case(case, cfg) for case in self.cases]
        if self.extra is not None:
            results += self.extra()
        if self.finish is not None:
            self.finish(results)
        return results


def timed_metrics(timed: Timed, cfg: BenchConfig) -> dict:
    """Median time (and peak memory) of ``timed.fn`` on the config's device, its check's figures,
    ``info`` and ``rates``.

    Order: ``warmup`` untimed calls (autotuning, compilation), then one call whose result is
    checked (and whose peak memory is measured; on CPU it is the warm-up), then the timed repeats.
    """
    warmup = cfg.warmup if timed.warmup is None else timed.warmup
    for _ in range(warmup):
        timed.fn()
    kept: list[object] = []
    metrics: dict = {}
    if timed.memory:
        metrics.update(peak_memory(lambda: kept.append(timed.fn()), cfg.device).as_dict())
    else:
        kept.append(timed.fn())
    if timed.check is not None:
        metrics.update(timed.check(kept[0]) or {})
    kept.clear()
    timing = measure(timed.fn, cfg.device, warmup=0, repeats=cfg.repeats if timed.repeats is None else timed.repeats,
                     min_time_s=cfg.min_time_s)
    metrics.update(timing.as_dict(), **timed.info)
    if timed.rates is not None:
        metrics.update(timed.rates(timing.median_s))
    return metrics


def measure_case(case: Case, cfg: BenchConfig) -> CaseResult:
    return guarded(case.group, case.name, case.variant, case.workload, case.params,
                   lambda: timed_metrics(case.setup(), cfg))


def guarded(group: str, name: str, variant: str, workload: str, params: dict,
            body: Callable[[], dict]) -> CaseResult:
    """Run ``body`` (which returns metrics) into a CaseResult: an ImportError or an unavailable
    feature (``Unavailable``) becomes a skipped case with the reason, any other exception (a failed
    check too) an error case with its message, so one broken case never hides the rest."""
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


def step_layout(lengths: np.ndarray, max_tokens: int, strategy: str = "next_fit",
                device: torch.device | str = "cpu") -> SeqLayout:
    """A step's samples packed into rows of at most ``max_tokens`` by ``strategy``: the packed
    layout (segments in plan order, one pack per row) with ``cu_seqlens`` on ``device``."""
    return pack_lengths(np.asarray(lengths, dtype=np.int64), max_tokens, strategy).layout(device)


def padded_tokens(layout: SeqLayout) -> int:
    """Tokens of the paper's layout: every pack a row, padded to the longest row."""
    rows = layout.pack_tokens()
    return len(rows) * max(rows, default=0)


def padding_fraction(layout: SeqLayout) -> float:
    """Share of the paper's padded rows that is padding."""
    padded = padded_tokens(layout)
    return 1.0 - layout.total_tokens / padded if padded else 0.0


def close_to(got: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> float:
    """Max abs difference of ``got`` from ``expected`` (in float32); AssertionError naming
    ``what`` when it exceeds ``tol`` times the larger of 1 and the largest expected magnitude."""
    got, expected = got.float(), expected.float()
    if got.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    err = float((got - expected).abs().max()) if got.numel() else 0.0
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    if not err <= tol * scale:  # also catches NaN
        raise AssertionError(f"{what}: max abs difference {err:.3g} > {tol:g} x {scale:.3g}")
    return err


def finite_grads(*tensors: torch.Tensor) -> Callable[[object], None]:
    """A check: every tensor got a finite gradient."""
    def check(_: object) -> None:
        for i, t in enumerate(tensors):
            if t.grad is None or not bool(torch.isfinite(t.grad).all()):
                raise AssertionError(f"input {i} has no finite gradient")
    return check


def add_speedups(results: list[CaseResult], baseline_variant: str, match: tuple[str, ...] = (),
                 metric: str | None = None) -> None:
    """Set ``metric`` (default ``speedup_vs_baseline``, with ``memory_vs_baseline``: case peak /
    baseline peak) = baseline median / case median on every ok case, other than the baseline
    case itself, whose group, name, workload and ``match`` params equal those of an ok case of
    ``baseline_variant``: a ratio of two figures of the same run."""
    def key(r: CaseResult) -> tuple:
        return (r.group, r.name, r.workload) + tuple(r.params.get(m) for m in match)

    base = {key(r): r for r in results if r.variant == baseline_variant and r.status == "ok"}
    for r in results:
        b = base.get(key(r))
        if r.status != "ok" or b is None or (metric is not None and r is b):
            continue
        if r.metrics.get("median_ms") and b.metrics.get("median_ms"):
            r.metrics[metric or "speedup_vs_baseline"] = b.metrics["median_ms"] / r.metrics["median_ms"]
        if metric is None and r.metrics.get("peak_mem_bytes") and b.metrics.get("peak_mem_bytes"):
            r.metrics["memory_vs_baseline"] = r.metrics["peak_mem_bytes"] / b.metrics["peak_mem_bytes"]
