"""Hostile callers of every native entry point, each run in a child process (tests/native_stress.py)
so that a crash fails the test, with the signal and the faulthandler trace, instead of killing
the test run. Bounded by time: about 25 s of wall clock for both on 2 cores.

``EK_STRESS_EXTENSION=/path/to/_C.so`` runs them against that build of the module instead (the
race then covers the raw ``_C`` functions only), e.g. to check a build from another revision.
"""
import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from elasticast_kernels.packing import has_native

pytestmark = pytest.mark.skipif(not has_native(), reason="native extension not built")

WORKER = Path(__file__).with_name("native_stress.py")


def run_worker(*args: str, timeout: float = 180) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ELASTICAST_NO_NATIVE"}
    proc = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    tail = (proc.stdout + proc.stderr)[-4000:]
    if proc.returncode < 0:
        pytest.fail(f"the native extension crashed the worker ({signal.Signals(-proc.returncode).name}):\n{tail}")
    assert proc.returncode == 0, tail
    assert proc.stdout.startswith("ok "), tail
    return ast.literal_eval(proc.stdout[3:].strip())


def test_every_native_entry_point_refuses_bad_input_and_computes_good_input_right():
    """Plans and gathers with random, wrong-typed, strided, empty and near-int32/int64 arguments:
    a named TypeError/ValueError with nothing written, or the reference's answer."""
    counts = run_worker("fuzz", "--seconds", "6", "--seed", "13")
    for kind in ("plan_ok", "plan_refused", "gather_ok", "gather_refused", "cuda_refused"):
        assert counts.get(kind, 0) > 20, (kind, counts)


def test_native_calls_use_only_what_they_checked_while_threads_write_the_inputs():
    """Threads write hostile values into lengths / cu_seqlens (and change the sources list) during
    the calls. Native code that re-read the caller's buffer after checking it would write out of
    bounds (segfaults) or return plans of unchecked values."""
    other_build = bool(os.environ.get("EK_STRESS_EXTENSION"))
    counts = run_worker("race", "--seconds", "8", "--seed", "13", *(["--raw-only"] if other_build else []))
    for name in ("next_fit", "first_fit_decreasing", "best_fit_decreasing", "best_fit_window", "histogram",
                 "gather", "emulate", *([] if other_build else ["pack_lengths_histogram"])):
        assert counts.get(f"{name}_ok", 0) > 0, (name, counts)
