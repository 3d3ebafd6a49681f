"""End-to-end benchmarks: spectrogram list (host memory) -> logits, packing included. A better
packing strategy must not change any sample's logits."""
from __future__ import annotations

import pytest
import torch

from elasticast_kernels.bench.groups.model import build_model, sdpa_context
from elasticast_kernels.bench.workloads import make_workload


@pytest.mark.parametrize("packing", ["next_fit", "best_fit_decreasing"])
@pytest.mark.parametrize("backend", ["fast", "sdpa_masked", "sdpa_masked_math"])
def test_end_to_end(backend, packing, bench_cfg, run_bench, or_skip):
    backend = bench_cfg.fast_backend if backend == "fast" else backend
    wl = make_workload("voxceleb", 48, bench_cfg.seed)
    host_specs = wl.spectrograms(wl.step(0, bench_cfg.samples_per_step))
    model = or_skip(build_model, bench_cfg, bench_cfg.model, backend, packing).eval()
    reference = build_model(bench_cfg, bench_cfg.model, backend, "next_fit").eval()

    def specs_to_logits(m=model):
        with torch.inference_mode(), sdpa_context(backend):
            return m([s.to(bench_cfg.device, non_blocking=True) for s in host_specs])
    logits = run_bench(specs_to_logits, "end-to-end", backend=backend, packing=packing)
    expected = specs_to_logits(reference)
    tol = 1e-4 if bench_cfg.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(logits, expected, atol=tol, rtol=tol)
