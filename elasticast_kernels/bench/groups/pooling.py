"""Pooling group: our fused segment attention pooling vs the reference's padded masked pooling.

The forward streams k and v once, so it is judged by bandwidth: bytes of k and v over time, and
on a known GPU the fraction of its measured copy bandwidth.
"""
from __future__ import annotations

import torch

from elasticast_kernels.bench import flops
from elasticast_kernels.bench.baselines import padded_masked_pool
from elasticast_kernels.bench.config import BenchConfig
from elasticast_kernels.bench.groups._common import (
    Case, Shared, Task, Timed, add_speedups, close_to, finite_grads, padding_fraction, step_layout,
)
from elasticast_kernels.bench.workloads import make_workload
from elasticast_kernels.layout import SeqLayout

GROUP = "pooling"
BASELINE = "padded_masked"
VARIANTS = ("segment_attention_pool", BASELINE)
PASSES = ("fwd", "fwd_bwd")


def _pool_fn(variant: str, layout: SeqLayout):
    if variant == "segment_attention_pool":
        from elasticast_kernels.ops import segment_attention_pool

        return lambda q, k, v: segment_attention_pool(q, k, v, layout.cu_seqlens, layout.max_seqlen, 1.0)
    return lambda q, k, v: padded_masked_pool(q, k, v, layout.seqlens, layout.pack_offsets, 1.0)


def _inputs(cfg: BenchConfig, workload: str) -> Shared[tuple]:
    """The step's layout and seeded ``q [heads, head_dim]``, ``k, v [total_tokens, heads, head_dim]``."""
    def make() -> tuple:
        wl = make_workload(workload, max(cfg.samples_per_step, 48), cfg.seed)
        layout = step_layout(wl.step_tokens(0, cfg.samples_per_step), cfg.pack_tokens, "next_fit", cfg.device)
        gen = torch.Generator().manual_seed(cfg.seed)
        q = torch.randn(cfg.heads, cfg.head_dim, generator=gen) * cfg.head_dim ** -0.5
        k, v = (torch.randn(layout.total_tokens, cfg.heads, cfg.head_dim, generator=gen) for _ in range(2))
        return (layout, *(t.to(cfg.device, cfg.dtype) for t in (q, k, v)))
    return Shared(make)


def _case(cfg: BenchConfig, variant: str, workload: str, inputs: Shared[tuple], pass_: str, gpu_name: str | None) -> Case:
    def setup() -> Timed:
        layout, *qkv = inputs()
        fn = _pool_fn(variant, layout)
        q, k, v = (t.detach().clone().requires_grad_(pass_ != "fwd") for t in qkv)
        if pass_ == "fwd":
            def work() -> torch.Tensor:
                with torch.no_grad():
                    return fn(q, k, v)

            def check(out: object) -> dict:
                with torch.no_grad():  # the fused op against the padded one, in float32
                    expected = padded_masked_pool(q.float(), k.float(), v.float(), layout.seqlens, layout.pack_offsets, 1.0)
                tol = 1e-4 if cfg.dtype == torch.float32 else 2e-2
                return {"max_abs_err": close_to(out, expected, tol, f"{variant} vs padded masked pooling")}
        else:
            grad = torch.randn(len(layout.seqlens), cfg.heads, cfg.head_dim, device=cfg.device, dtype=cfg.dtype)
            work, check = (lambda: fn(q, k, v).backward(grad)), finite_grads(q, k, v)
        kv_bytes = flops.pooling_kv_bytes(layout.total_tokens, cfg.heads, cfg.head_dim, k.element_size())
        limits = flops.gpu_limits(gpu_name) if pass_ == "fwd" else None

        def rates(seconds: float) -> dict:
            out = {"tokens_per_s": layout.total_tokens / seconds, "kv_bytes_per_s": kv_bytes / seconds}
            if limits:
                out["fraction_of_copy_bandwidth"] = out["kv_bytes_per_s"] / limits["copy_bytes_per_s"]
            return out
        return Timed(work, check, rates,
                     info={"padding_fraction": padding_fraction(layout), "total_tokens": layout.total_tokens})

    params = {"heads": cfg.heads, "head_dim": cfg.head_dim, "samples": cfg.samples_per_step, "pass_": pass_,
              "dtype": str(cfg.dtype).replace("torch.", "")}
    return Case(GROUP, "step", variant, workload, params, setup)


def tasks(cfg: BenchConfig) -> list[Task]:
    gpu_name = torch.cuda.get_device_name() if cfg.is_cuda else None
    out = []
    for workload in cfg.workloads:
        inputs = _inputs(cfg, workload)
        cases = [_case(cfg, v, workload, inputs, p, gpu_name) for p in PASSES for v in VARIANTS]
        out.append(Task(GROUP, f"pooling [{workload}]", cases, workload,
                        lambda results: add_speedups(results, BASELINE, ("pass_",))))
    return out
