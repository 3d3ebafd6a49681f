"""Fixtures for the pytest-benchmark suite (``pytest benchmarks/``, ``-k attention`` for one group).

Sizes: with ``--benchmark-disable`` (the CI smoke) or without a GPU, every file runs a tiny
configuration in seconds, as a correctness check of the benchmarked code; with benchmarking on a
GPU, the quick suite's sizes (the paper's settings). For the full report use ``elasticast-bench``.

The tests' conftest sets ``TRITON_INTERPRET=1`` without a GPU (kernel tests); benchmarks must time
the real CPU paths, so it is unset here for every benchmark test.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable

import pytest
import torch

from elasticast_kernels.bench.config import BenchConfig, make_config, tiny_config

# Triton picks interpreted vs compiled kernels when a kernel module is imported. Set up the same
# environment as the tests' conftest (whichever directory pytest collects first) and import the
# package's kernel modules now, so unsetting TRITON_INTERPRET for the benchmark tests below never
# changes the kernels that the kernel tests see. Ops read the variable again at call time.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
for _module in ("elasticast_kernels.ops", "elasticast_kernels.modules", "elasticast_kernels.models"):
    try:
        importlib.import_module(_module)
    except ImportError:  # reported by the tests that need it
        pass


@pytest.fixture(autouse=True, scope="module")
def _no_triton_interpreter():
    # Module scope: autouse fixtures come first within their scope, so module-scoped fixtures
    # that already run ops (reference logits) see the variable unset too; restored per module.
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TRITON_INTERPRET", raising=False)
        yield


def _benchmarks_disabled(config: pytest.Config) -> bool:
    try:
        return bool(config.getoption("benchmark_disable"))
    except ValueError:  # pytest-benchmark not installed: nothing is timed anyway
        return True


@pytest.fixture(scope="session")
def bench_cfg(request) -> BenchConfig:
    if torch.cuda.is_available() and not _benchmarks_disabled(request.config):
        return make_config("quick", "cuda")
    return tiny_config("cuda" if torch.cuda.is_available() else "cpu")


def _synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    if torch.device(device).type != "cuda":
        return fn

    def run() -> object:
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


@pytest.fixture
def run_bench(benchmark, bench_cfg) -> Callable:
    """``run_bench(fn, group, **extra_info)``: time ``fn`` (synchronized on CUDA, warmed up first)."""
    def run(fn: Callable[[], object], group: str, **extra_info):
        benchmark.group = group
        benchmark.extra_info.update(extra_info)
        benchmark.extra_info["device"] = bench_cfg.device
        return benchmark.pedantic(_synced(fn, bench_cfg.device), rounds=bench_cfg.repeats,
                                  warmup_rounds=bench_cfg.warmup, iterations=1)
    return run


@pytest.fixture
def or_skip() -> Callable:
    """``or_skip(fn, *args)``: call ``fn``; an unavailable baseline or a missing optional module
    skips the test with the reason (listed by ``pytest -rs``), never silently."""
    from elasticast_kernels.bench.groups._common import Unavailable

    def call(fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Unavailable as exc:
            pytest.skip(str(exc))
        except ImportError as exc:
            pytest.skip(f"not importable: {exc}")
        except NotImplementedError as exc:  # torch's way of saying "not on this device/dtype"
            pytest.skip(f"not implemented here: {exc}")
    return call
