"""Pooling benchmarks: fused segment attention pooling vs the reference's padded masked pooling."""
from __future__ import annotations

import pytest
import torch

from elasticast_kernels.bench.groups._common import step_layout
from elasticast_kernels.bench.baselines import padded_masked_pool
from elasticast_kernels.bench.workloads import make_workload


@pytest.fixture(scope="module")
def inputs(bench_cfg):
    wl = make_workload("voxceleb", 48, bench_cfg.seed)
    layout = step_layout(wl.step_tokens(0, bench_cfg.samples_per_step), bench_cfg.pack_tokens, "next_fit", bench_cfg.device)
    gen = torch.Generator().manual_seed(bench_cfg.seed)
    shape = (layout.total_tokens, bench_cfg.heads, bench_cfg.head_dim)
    q = torch.randn(bench_cfg.heads, bench_cfg.head_dim, generator=gen) * bench_cfg.head_dim ** -0.5
    k, v = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    return layout, *(t.to(bench_cfg.device, bench_cfg.dtype) for t in (q, k, v))


@pytest.mark.parametrize("pass_", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("variant", ["segment_attention_pool", "padded_masked"], ids=["fused", "padded_masked"])
def test_pooling(variant, pass_, inputs, bench_cfg, run_bench):
    layout, q, k, v = inputs
    baseline = lambda q, k, v: padded_masked_pool(q, k, v, layout.seqlens, layout.pack_offsets, 1.0)  # noqa: E731
    if variant == "segment_attention_pool":
        ops = pytest.importorskip("elasticast_kernels.ops")
        fn = lambda q, k, v: ops.segment_attention_pool(q, k, v, layout.cu_seqlens, layout.max_seqlen, 1.0)  # noqa: E731
        with torch.no_grad():
            expected = baseline(q.float(), k.float(), v.float())
            got = fn(q, k, v).float()
        tol = 1e-4 if bench_cfg.dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got, expected, atol=tol, rtol=tol)
    else:
        fn = baseline
    info = {"variant": variant, "pass": pass_, "total_tokens": layout.total_tokens}
    if pass_ == "fwd":
        def work():
            with torch.no_grad():
                return fn(q, k, v)
        out = run_bench(work, "pooling-fwd", **info)
        assert out.shape == (len(layout.seqlens), bench_cfg.heads, bench_cfg.head_dim)
        return
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    grad = torch.randn(len(layout.seqlens), bench_cfg.heads, bench_cfg.head_dim, device=q.device, dtype=q.dtype)
    run_bench(lambda: fn(qg, kg, vg).backward(grad), "pooling-fwd_bwd", **info)
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (qg, kg, vg))
