"""Benchmark suite settings and the target checks."""
from __future__ import annotations

import pytest
import torch

from elasticast_kernels.bench.config import ATTENTION_BACKENDS, STRATEGIES, WORKLOADS, make_config, tiny_config
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


def _result(variant, metric, value, **params):
    return {"group": "packing", "name": "plan", "variant": variant, "workload": "voxceleb", "status": "ok",
            "params": params, "metrics": {metric: value}}


def test_targets_report_met_missed_and_unmeasured():
    rows = {r["claim"]: r for r in check_targets(
        [_result("best_fit_decreasing", "efficiency", 0.99), _result("histogram", "efficiency", 0.9)], "cpu")}
    assert rows["best_fit_decreasing efficiency >= 0.97"]["met"] is True
    assert rows["histogram efficiency >= 0.995"]["met"] is False
    assert rows["C++ best-fit >= 100x pure Python"]["met"] is None
    assert not any("GPU" in claim or "H100" in claim for claim in rows)  # GPU targets only on CUDA runs
    assert any("GPU" in r["claim"] for r in check_targets([], "cuda"))
