"""Attention benchmarks: one encoder block's self-attention on a packed step (forward, backward,
forward+backward), every implementation on the same inputs. Unavailable ones skip with the reason."""
from __future__ import annotations

import pytest
import torch

from elasticast_kernels.bench.config import ATTENTION_BACKENDS
from elasticast_kernels.bench.groups._common import step_layout
from elasticast_kernels.bench.groups.attention import attention_fn, make_qkv, reference_attention
from elasticast_kernels.bench.workloads import make_workload

TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@pytest.fixture(scope="module")
def layout(bench_cfg):
    wl = make_workload("voxceleb", 48, bench_cfg.seed)
    return step_layout(wl.step_tokens(0, bench_cfg.samples_per_step), bench_cfg.pack_tokens, "next_fit", bench_cfg.device)


@pytest.mark.parametrize("pass_", ["fwd", "bwd", "fwd_bwd"])
@pytest.mark.parametrize("backend", ATTENTION_BACKENDS)
def test_attention(backend, pass_, layout, bench_cfg, run_bench, or_skip):
    scale = bench_cfg.head_dim ** -0.5
    fn = or_skip(attention_fn, backend, layout, bench_cfg, scale)
    q, k, v = make_qkv(layout.total_tokens, bench_cfg, requires_grad=pass_ != "fwd")
    info = {"backend": backend, "pass": pass_, "total_tokens": layout.total_tokens}
    if pass_ == "fwd":
        with torch.no_grad():
            out = or_skip(fn, q, k, v)
        ref = reference_attention(q, k, v, layout.seqlens, scale)
        err = (out.float() - ref).abs().max().item()
        assert err <= TOLERANCE[bench_cfg.dtype] * max(1.0, ref.abs().max().item()), err

        def work():
            with torch.no_grad():
                return fn(q, k, v)
        run_bench(work, f"attention-{pass_}", **info)
        return
    grad = torch.randn_like(q)
    out = or_skip(fn, q, k, v)
    or_skip(out.backward, grad, retain_graph=True)
    assert q.grad is not None and torch.isfinite(q.grad).all()
    if pass_ == "bwd":
        run_bench(lambda: out.backward(grad, retain_graph=True), f"attention-{pass_}", **info)
    else:
        run_bench(lambda: fn(q, k, v).backward(grad), f"attention-{pass_}", **info)
