"""The benchmark report end to end on CPU (tiny configuration): JSON validates, table, plots,
--compare, and the CLI's errors. Also the GPU script's dry run."""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import elasticast_kernels.models  # noqa: F401 - kernels imported under the tests' TRITON_INTERPRET (see below)
import elasticast_kernels.ops  # noqa: F401
from elasticast_kernels.bench import cli
from elasticast_kernels.bench import report as report_mod

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    """One tiny CPU run of every group through ``main`` (seconds), its output folder and stdout."""
    out = tmp_path_factory.mktemp("bench")
    saved = os.environ.get("TRITON_INTERPRET")
    try:
        rc = cli.main(["--tiny", "--device", "cpu", "--out", str(out), "--no-progress"])
    finally:  # main() unsets the interpreter flag for its own run; the kernel tests need it back
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    return rc, out, json.loads((out / "results.json").read_text())


def test_report_runs_and_validates(tiny_report):
    rc, out, report = tiny_report
    assert report_mod.validate(report) == []
    errors = [(r["key"], r["reason"]) for r in report["results"] if r["status"] == "error"]
    assert rc == (1 if errors else 0)
    assert report["device"] == "cpu" and "CPU" in report["device_label"] and report["suite"] == "tiny"
    env = report["environment"]
    for key in ("torch", "triton", "python", "cpu", "git_commit", "gpu_name", "cuda_runtime"):
        assert key in env
    # The machine's load before and after the run (1/5/15 min) and its CPUs, in the JSON and the summary.
    assert env["cpu_count"] == os.cpu_count()
    for key in ("load_average_before", "load_average_after"):
        assert len(env[key]) == 3 and all(x >= 0 for x in env[key])
    summary = (out / "summary.txt").read_text()
    assert f"Machine load: {os.cpu_count()} CPUs" in summary and "before the run" in summary
    assert report["targets"] == [] and "Targets: not checked at tiny sizes." in summary
    groups = {r["group"] for r in report["results"]}
    assert groups == {"packing", "attention", "pooling", "model", "end_to_end", "sweep", "hf_ast"}
    for r in report["results"]:
        assert r["status"] in ("ok", "skipped", "error")
        assert r["status"] == "ok" or r["reason"]
        for value in r["metrics"].values():
            assert value is None or isinstance(value, str) or math.isfinite(value)
    ok = [r for r in report["results"] if r["status"] == "ok" and "median_ms" in r["metrics"]]
    assert ok and all(r["metrics"]["median_ms"] > 0 for r in ok)
    # The unavailable GPU-only baselines are listed as skipped with their reason, not dropped.
    skipped = {r["variant"] for r in report["results"] if r["status"] == "skipped" and r["group"] == "attention"}
    assert {"varlen_attn", "flash_attn", "xformers"} <= skipped
    assert (out / "summary.txt").read_text().startswith("elasticast-bench")


def test_report_cases_are_the_pytest_benchmark_cases(tiny_report):
    """Both front ends run the same cases under the same names: every timed result of the report
    is a case of ``group_cases``, which the pytest-benchmark suite parametrizes over."""
    from elasticast_kernels.bench.config import GROUPS, tiny_config
    from elasticast_kernels.bench.runner import group_cases

    _, _, report = tiny_report
    cases = {c.key: c for g in GROUPS for c in group_cases(tiny_config("cpu"), g)}
    timed = {r["key"] for r in report["results"] if r["status"] == "ok" and "median_ms" in r["metrics"]}
    assert timed and timed <= set(cases)
    for group in GROUPS:  # pytest ids are unique within a group's test
        ids = [c.id for c in cases.values() if c.group == group]
        assert len(ids) == len(set(ids)), group
    case = cases["attention/step/torch/voxceleb[dtype=float32,head_dim=32,heads=2,pass_=fwd,samples=4]"]
    assert case.id == "step/torch/voxceleb/pass=fwd,samples=4,dtype=float32"
    assert case.comparison == "attention/step/voxceleb/pass=fwd,samples=4,dtype=float32"


def test_report_has_plots(tiny_report):
    _, out, _ = tiny_report
    for name in ("speedup_vs_seqlen.png", "memory_vs_batch.png", "sweep_padding.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_prints_the_change(tiny_report, tmp_path, capsys):
    _, out, report = tiny_report
    faster = copy.deepcopy(report)
    for r in faster["results"]:
        if r["status"] == "ok" and "median_ms" in r["metrics"]:
            r["metrics"]["median_ms"] /= 2
    b = tmp_path / "b.json"
    b.write_text(json.dumps(faster))
    assert cli.main(["--compare", str(out / "results.json"), str(b)]) == 0
    printed = capsys.readouterr().out
    assert "median_ms" in printed and "0.500x" in printed


def test_compare_rejects_bad_files(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something else"}')
    assert cli.main(["--compare", str(bad), str(bad)]) == 2
    assert "not a valid elasticast-bench report" in capsys.readouterr().err


def test_validate_catches_problems(tiny_report):
    _, _, report = tiny_report
    broken = copy.deepcopy(report)
    first_ok = next(r for r in broken["results"] if r["status"] == "ok")
    first_ok["metrics"]["median_ms"] = float("nan")
    del broken["environment"]
    problems = report_mod.validate(broken)
    assert any("environment" in p for p in problems)
    broken["environment"] = report["environment"]
    assert any("not finite" in p for p in report_mod.validate(broken))


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--workload", "librispeech"])
    with pytest.raises(SystemExit):
        cli.main(["--suite", "huge"])


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_device_script_dry_run(tmp_path):
    """benchmarks/gpu_suite.sh in DRY_RUN mode lists its steps (named so ``-k gpu`` leaves it out)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SKIP_BUILD", "GPU_TESTS", "BENCH_DEVICE", "BENCH_SUITE", "BENCH_ARGS", "GPU_SUITE_BUDGET")}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(tmp_path / "out")],
                            env=dict(env, DRY_RUN="1"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("environment", "build", "gpu_tests", "benchmarks"):
        assert f"] {step} (limit" in result.stdout
    assert "--device cuda --suite full" in result.stdout
    assert (tmp_path / "out" / "SUMMARY.txt").exists()


def test_time_budget_cuts_the_run_short_but_writes_the_report(tmp_path, capsys):
    saved = os.environ.get("TRITON_INTERPRET")
    try:
        rc = cli.main(["--tiny", "--device", "cpu", "--group", "packing", "--budget-s", "0", "--out", str(tmp_path),
                       "--no-progress", "--no-plots"])
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    assert rc == 3
    err = capsys.readouterr().err
    assert "expected duration: a few seconds" in err and f"machine: {os.cpu_count()} CPUs, load average now" in err
    report = json.loads((tmp_path / "results.json").read_text())
    assert report_mod.validate(report) == []
    assert report["results"] and all("time budget" in r["reason"] for r in report["results"])


def test_hf_ast_group_without_transformers_is_skipped_saying_why(monkeypatch):
    """The Hugging Face AST cases need the hf extra: without transformers both are listed as
    skipped, naming the extra, and nothing else is built or timed."""
    import sys

    from elasticast_kernels.bench.config import tiny_config
    from elasticast_kernels.bench.runner import GROUP_MODULES

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    (task,) = GROUP_MODULES["hf_ast"].tasks(tiny_config("cpu"))
    results = task.run(tiny_config("cpu"))
    assert [r.variant for r in results] == ["packed_ast", "hf_padded"]
    for r in results:
        assert r.status == "skipped" and "transformers is not installed" in r.reason and "[hf]" in r.reason
