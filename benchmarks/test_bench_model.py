"""Model benchmarks: the drop-in ElasticAST, our packed backend vs the paper's masked SDPA
backend (fused, and under the MATH SDPA kernel: the published model's explicit softmax), eval
forward and a training step (same weights, same clips)."""
from __future__ import annotations

import pytest
import torch

from elasticast_kernels.bench.groups.model import build_model, eval_fn, train_fn
from elasticast_kernels.bench.workloads import make_workload


@pytest.fixture(scope="module")
def specs(bench_cfg):
    wl = make_workload("voxceleb", 48, bench_cfg.seed)
    return wl.spectrograms(wl.step(0, bench_cfg.samples_per_step), device=bench_cfg.device)


def _dtype(bench_cfg) -> str:
    return bench_cfg.model_dtypes[0]


@pytest.fixture(scope="module")
def reference_logits(bench_cfg, specs):
    """Logits of the masked baseline, the yardstick every backend must match."""
    try:
        model = build_model(bench_cfg, bench_cfg.model, "sdpa_masked")
    except ImportError as exc:
        pytest.skip(f"not importable: {exc}")
    return eval_fn(model, specs, bench_cfg, _dtype(bench_cfg))().float()


@pytest.mark.parametrize("backend", ["fast", "sdpa_masked", "sdpa_masked_math"])
def test_model_eval_forward(backend, bench_cfg, specs, reference_logits, run_bench, or_skip):
    backend = bench_cfg.fast_backend if backend == "fast" else backend
    model = or_skip(build_model, bench_cfg, bench_cfg.model, backend)
    logits = run_bench(eval_fn(model, specs, bench_cfg, _dtype(bench_cfg), backend), "model-eval", backend=backend,
                       **bench_cfg.model.as_dict())
    assert logits.shape == (len(specs), bench_cfg.num_classes)
    tol = 1e-4 if _dtype(bench_cfg) == "fp32" else 5e-2
    torch.testing.assert_close(logits.float(), reference_logits, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", ["fast", "sdpa_masked", "sdpa_masked_math"])
def test_model_train_step(backend, bench_cfg, specs, run_bench, or_skip):
    backend = bench_cfg.fast_backend if backend == "fast" else backend
    model = or_skip(build_model, bench_cfg, bench_cfg.train_model, backend)
    before = [p.detach().clone() for p in model.parameters()]
    run_bench(train_fn(model, specs, bench_cfg, _dtype(bench_cfg), backend), "model-train", backend=backend,
              **bench_cfg.train_model.as_dict())
    changed = sum(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
    assert changed == len(before), "every parameter gets a gradient and an update"
