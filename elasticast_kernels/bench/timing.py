"""Timing and peak-memory measurement that is correct on CPU and CUDA.

CUDA: work is asynchronous, so times come from CUDA events (or ``triton.testing.do_bench`` when
triton is importable, which also flushes the L2 cache between repeats); the first calls (warm-up,
Triton autotuning, compilation) run before the timed region, and the device is synchronized
around it. CPU: ``time.perf_counter`` around each call after the warm-up. Either way the figure
reported is the median over repeats.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before the call.
On CPU, the peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) above the
resident size before the call (the CLI first tells glibc to return large blocks to the system on
free, ``precise_cpu_memory``, so a freed buffer does not hide the next one); where ``/proc`` is missing, ``tracemalloc`` (which
sees only Python-level allocations, and says so in the result).
"""
from __future__ import annotations

import ctypes
import functools
import statistics
import time
import tracemalloc
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    """Median and spread of one timed callable, in seconds."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    method: str  # "cuda_events", "do_bench" or "perf_counter"

    def as_dict(self) -> dict:
        return {
            "median_ms": self.median_s * 1e3,
            "min_ms": self.min_s * 1e3,
            "max_ms": self.max_s * 1e3,
            "repeats": self.repeats,
            "timer": self.method,
        }


def _is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def measure(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    *,
    warmup: int = 1,
    repeats: int = 5,
    min_time_s: float = 0.0,
    max_repeats: int = 100,
    use_do_bench: bool = True,
) -> Timing:
    """Time ``fn()`` and return the median over repeats.

    Args:
        fn: the work; called ``warmup`` times untimed first (autotune and compilation happen there).
        device: where the work runs; CUDA work is timed with events, CPU with ``perf_counter``.
        warmup: untimed calls before timing (>= 0).
        repeats: timed calls (>= 1); more are made, up to ``max_repeats``, until ``min_time_s``
            of timed work has accumulated.
        use_do_bench: on CUDA, use ``triton.testing.do_bench`` (median mode) when importable.

    Raises:
        ValueError: ``warmup < 0`` or ``repeats < 1``.
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    if _is_cuda(device):
        return _measure_cuda(fn, repeats, min_time_s, max_repeats, use_do_bench)
    times = []
    while len(times) < repeats or (sum(times) < min_time_s and len(times) < max_repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), max(times), len(times), "perf_counter")


def _measure_cuda(fn: Callable[[], object], repeats: int, min_time_s: float, max_repeats: int,
                  use_do_bench: bool) -> Timing:
    """CUDA events around each call. Short calls go through ``do_bench``, which clears the L2
    cache between calls, so an input that fits in L2 (a pooling step's k and v do) is not timed
    from cache; its repeat window is sized to give at least ``repeats`` calls."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    estimate_ms = start.elapsed_time(end)
    do_bench = None
    if use_do_bench and estimate_ms < 50.0:
        try:
            from triton.testing import do_bench
        except Exception:  # noqa: BLE001 - triton missing or broken: fall back to plain events
            do_bench = None
    if do_bench is not None:
        rep_ms = max(50.0, min_time_s * 1e3, estimate_ms * repeats)
        lo, med, hi = do_bench(fn, warmup=max(5.0, estimate_ms), rep=rep_ms, quantiles=[0.0, 0.5, 1.0])
        return Timing(med / 1e3, lo / 1e3, hi / 1e3, max(1, int(rep_ms / max(estimate_ms, 1e-3))), "do_bench")
    times = []
    while len(times) < repeats or (sum(times) < min_time_s and len(times) < max_repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return Timing(statistics.median(times), min(times), max(times), len(times), "cuda_events")


# ---------------------------------------------------------------- memory

def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@functools.lru_cache(maxsize=None)
def precise_cpu_memory() -> bool:
    """Make glibc serve blocks >= 128 KiB with mmap and unmap them on free (fixed threshold).

    By default glibc raises its mmap threshold (up to 32 MiB) after frees, so freed tensors stay
    resident and the next case's RSS growth under-reports its peak. This lasts for the whole
    process (glibc cannot switch back), so the benchmark CLI calls it once for a run, and
    library/test code does not. Returns False where this is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3
        return bool(libc.mallopt(m_mmap_threshold, 128 * 1024))
    except (OSError, AttributeError):
        return False


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return _read_status_kib("VmHWM") is not None
    except OSError:
        return False


@dataclass(frozen=True)
class Memory:
    """Peak memory of one call above what was in use before it, in bytes."""

    peak_bytes: int
    method: str  # "cuda_max_memory_allocated", "rss_hwm" or "tracemalloc"

    def as_dict(self) -> dict:
        return {"peak_mem_bytes": int(self.peak_bytes), "peak_mem_mib": self.peak_bytes / 2**20, "mem_method": self.method}


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> Memory:
    """Run ``fn()`` once and report its peak memory above the memory in use before the call.

    Call it after a warm-up run, so one-off allocations (autotune, caches) are not counted.
    """
    if _is_cuda(device):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return Memory(max(0, torch.cuda.max_memory_allocated() - before), "cuda_max_memory_allocated")
    if _can_reset_hwm():
        before = _read_status_kib("VmRSS") or 0
        _can_reset_hwm()  # reset the high-water mark to the current RSS
        fn()
        hwm = _read_status_kib("VmHWM") or before
        return Memory(max(0, hwm - before) * 1024, "rss_hwm")
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Memory(int(peak), "tracemalloc")
