"""Benchmark suite settings and the target checks."""
from __future__ import annotations

import pytest
import torch

from elasticast_kernels.bench.config import ATTENTION_BACKENDS, STRATEGIES, WORKLOADS, make_config, tiny_config
from elasticast_kernels.bench.report import targets_text
from elasticast_kernels.bench.results import case_key
from elasticast_kernels.bench.targets import check_targets


def test_quick_cpu_config_uses_the_paper_settings():
    cfg = make_config("quick", "cpu")
    assert (cfg.samples_per_step, cfg.pack_tokens, cfg.head_dim) == (12, 2048, 64)
    assert cfg.workloads == ("voxceleb",) and cfg.fast_backend == "torch" and cfg.dtype == torch.float32
    assert set(cfg.strategies) == set(STRATEGIES)
    full = make_config("full", "cpu", workload=None)
    assert full.workloads == WORKLOADS and set(full.attention_backends) == set(ATTENTION_BACKENDS)
    assert make_config("full", "cpu", workload="epic").workloads == ("epic",)
    assert min(full.sweep_limits) == 512 and max(full.sweep_limits) == 8192
    assert min(full.sweep_steps) == 4 and max(full.sweep_steps) == 64


@pytest.mark.parametrize("kwargs,match", [(dict(suite="huge"), "suite"), (dict(device="tpu"), "device"),
                                          (dict(workload="librispeech"), "workload")])
def test_config_errors(kwargs, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        make_config(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_config_without_gpu_is_refused():
    with pytest.raises(ValueError, match="CUDA"):
        make_config("quick", "cuda")


def test_config_serialises():
    out = tiny_config().as_dict()
    assert out["model"] == {"dim": 64, "depth": 1, "heads": 2} and out["dtype"] == "float32"


def _result(variant, metric, value, name="plan", group="packing", workload="voxceleb", status="ok", reason=None,
            timing=None, **params):
    metrics = {metric: value} if value is not None else {}
    if timing is not None:  # (median, min, max) in ms
        metrics.update(median_ms=timing[0], min_ms=timing[1], max_ms=timing[2], repeats=3)
    return {"group": group, "name": name, "variant": variant, "workload": workload, "status": status,
            "reason": reason, "params": params, "metrics": metrics,
            "key": case_key(group, name, variant, workload, params)}


def test_targets_report_met_missed_and_unmeasured():
    rows = {r["claim"]: r for r in check_targets(
        [_result("best_fit_decreasing", "efficiency", 0.99), _result("histogram", "efficiency", 0.9)], "cpu")}
    assert rows["best_fit_decreasing efficiency >= 0.97"]["met"] is True
    assert rows["histogram efficiency >= 0.995"]["met"] is False
    assert rows["C++ best-fit >= 100x pure Python"]["met"] is None
    assert not any("GPU" in claim or "H100" in claim for claim in rows)  # GPU targets only on CUDA runs
    assert any("GPU" in r["claim"] for r in check_targets([], "cuda"))
    # An efficiency does not depend on the machine: the explanation says so, and what was measured.
    missed = rows["histogram efficiency >= 0.995"]
    assert "efficiency = 0.9, target >= 0.995" in missed["measured"]
    assert "does not depend on the machine" in missed["reason"]


EQUAL = "CPU eval forward, 32 equal 5 s clips: torch backend >= 1.0x AST-style per-sample padding"


def _equal_lengths(speedup, ours, theirs):
    common = dict(name="eval_forward_equal_lengths", group="model", workload="equal_5s", dim=384)
    return [_result("torch", "speedup_vs_padded", speedup, timing=ours, **common),
            _result("padded", "median_ms", theirs[0], timing=theirs, **common)]


@pytest.mark.parametrize("load,ours,theirs,expected", [
    ([3.9, 3.0, 2.0], (1300, 1250, 1350), (1200, 1180, 1230), ["busy: load average 3.90 on 2 CPUs", "within 10%"]),
    ([0.1, 0.1, 0.1], (1300, 900, 1400), (1200, 1180, 1230), ["repeats of torch spread 1.56x"]),
    ([0.1, 0.1, 0.1], (1800, 1790, 1810), (1200, 1190, 1210), ["likely a real slowdown", "elasticast-bench --compare"]),
])
def test_a_missed_timing_target_is_explained(load, ours, theirs, expected):
    env = {"load_average_before": load, "cpu_count": 2}
    row = next(r for r in check_targets(_equal_lengths(theirs[0] / ours[0], ours, theirs), "cpu", env)
               if r["claim"] == EQUAL)
    assert row["met"] is False
    assert f"torch {ours[0]:.4g} ms (median of 3" in row["measured"] and f"padded {theirs[0]:.4g} ms" in row["measured"]
    for text in expected:
        assert text in row["reason"], row["reason"]


def test_an_unmeasured_target_names_the_skipped_case():
    skipped = _result("torch", "speedup_vs_padded", None, name="eval_forward_equal_lengths", group="model",
                      workload="equal_5s", status="skipped", reason="not importable: no module named x")
    row = next(r for r in check_targets([skipped], "cpu") if r["claim"] == EQUAL)
    assert row["met"] is None and "skipped: not importable" in row["reason"]
    row = next(r for r in check_targets([], "cpu") if r["claim"] == EQUAL)
    assert "no model/eval_forward_equal_lengths/torch case" in row["reason"]


def test_target_text_explains_each_target_not_met():
    env = {"load_average_before": [3.9, 3.0, 2.0], "cpu_count": 2}
    rows = check_targets(_equal_lengths(0.9, (1300, 1250, 1350), (1200, 1180, 1230)), "cpu", env)
    text = targets_text(rows)
    assert "MISSED (see below)" in text and f"MISSED: {EQUAL}" in text
    assert "  measured: speedup_vs_padded = 0.9, target >= 1" in text and "  likely reason: the machine was busy" in text
    assert "NOT MEASURED: C++ best-fit >= 100x pure Python" in text
