"""The pytest-benchmark suite: the cases of ``elasticast-bench``, timed by pytest-benchmark.

Every test is one case of the report, with the same name, variant, workload and inputs
(``elasticast_kernels.bench.groups``): the test id is ``name/variant/workload/params`` (for
example ``test_attention[step/torch/voxceleb/pass=fwd,samples=12,dtype=float32]``), and the
pytest-benchmark group is the id without the variant, so each table lists the variants compared
on the same inputs. ``-k attention`` runs one group, ``-k "step and torch"`` narrower.

Timing is pytest-benchmark's own: after one untimed call (compilation and autotuning; its result
is checked, so a wrong result fails the test instead of giving a figure), its calibration, then
``--benchmark-min-rounds`` rounds (default 5) or more until ``--benchmark-max-time`` (default
1 s), with ``--benchmark-warmup`` rounds first when asked. ``--benchmark-save``/``-autosave``,
``--benchmark-compare`` and ``pytest-benchmark compare`` work on the results. CUDA work is
synchronised inside the timed call.

Sizes (``--bench-suite``): with ``--benchmark-disable`` (the test command's smoke run) the tiny
sizes, each case called once and checked; otherwise the quick suite's sizes on the device present
(CPU: the reference torch paths at a smaller model; GPU: the paper's settings); ``full`` for
every workload and baseline.

The tests' conftest sets ``TRITON_INTERPRET=1`` without a GPU (kernel tests); benchmarks time
the real CPU paths, so it is unset here for every benchmark test.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import replace
from typing import Callable

import pytest
import torch

from elasticast_kernels.bench.config import ATTENTION_BACKENDS, BenchConfig, make_config, tiny_config

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

_CONFIG = pytest.StashKey[BenchConfig]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-suite", choices=("tiny", "quick", "full"), default=None,
                     help="sizes of the benchmark cases (default: tiny with --benchmark-disable, else quick)")


def _benchmarks_disabled(config: pytest.Config) -> bool:
    try:
        return bool(config.getoption("benchmark_disable"))
    except ValueError:  # pytest-benchmark not installed: nothing is timed anyway
        return True


def suite_config(config: pytest.Config) -> BenchConfig:
    """The session's benchmark configuration (see the module docstring)."""
    if _CONFIG not in config.stash:
        suite = config.getoption("bench_suite", None) or ("tiny" if _benchmarks_disabled(config) else "quick")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if suite == "tiny":
            # The smoke run checks every attention implementation, the slow fallbacks too.
            config.stash[_CONFIG] = replace(tiny_config(device), attention_backends=ATTENTION_BACKENDS)
        else:
            config.stash[_CONFIG] = make_config(suite, device)
    return config.stash[_CONFIG]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes ``case`` runs every case of its module's ``GROUP``."""
    if "case" not in metafunc.fixturenames:
        return
    from elasticast_kernels.bench.runner import group_cases

    cases = group_cases(suite_config(metafunc.config), metafunc.module.GROUP)
    ids = [c.id for c in cases]
    duplicated = {i for i in ids if ids.count(i) > 1}
    if duplicated:
        raise ValueError(f"benchmark case ids must be unique, repeated: {sorted(duplicated)}")
    metafunc.parametrize("case", cases, ids=ids)


@pytest.fixture(autouse=True, scope="module")
def _no_triton_interpreter():
    # Module scope: autouse fixtures come first within their scope, so module-scoped fixtures
    # that already run ops see the variable unset too; restored per module.
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TRITON_INTERPRET", raising=False)
        yield


@pytest.fixture(scope="session")
def bench_cfg(request) -> BenchConfig:
    return suite_config(request.config)


def _synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    if torch.device(device).type != "cuda":
        return fn

    def run() -> object:
        out = fn()
        torch.cuda.synchronize()
        return out
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


@pytest.fixture
def run_bench(benchmark, bench_cfg, request) -> Callable:
    """``run_bench(fn, group, **extra_info)``: time ``fn`` with pytest-benchmark (one untimed call
    first when benchmarking; synchronised on CUDA) and return its result."""
    def run(fn: Callable[[], object], group: str, **extra_info):
        benchmark.group = group
        benchmark.extra_info.update(extra_info, device=bench_cfg.device, suite=bench_cfg.suite)
        timed = _synced(fn, bench_cfg.device)
        if not _benchmarks_disabled(request.config):
            timed()  # compilation, autotuning and first-touch allocations stay out of the rounds
        return benchmark(timed)
    return run


@pytest.fixture
def run_case(benchmark, run_bench, or_skip) -> Callable:
    """``run_case(case)``: set the case up, time its work, check the result; figures the check
    returns (errors) and the case's fixed figures go to the saved ``extra_info``."""
    def run(case) -> None:
        timed = or_skip(case.setup)
        result = or_skip(run_bench, timed.fn, case.comparison, key=case.key, group_name=case.group, name=case.name,
                         variant=case.variant, workload=case.workload, params=case.params)
        if timed.check is not None:
            benchmark.extra_info.update(timed.check(result) or {})
        benchmark.extra_info.update(timed.info)
    return run
