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
    Task, add_speedups, guarded, padding_fraction, step_layout, timed_metrics,
)
from elasticast_kernels.layout import SeqLayout
from elasticast_kernels.bench.results import CaseResult
from elasticast_kernels.bench.workloads import make_workload

GROUP = "pooling"
BASELINE = "padded_masked"
VARIANTS = ("segment_attention_pool", BASELINE)


def _pool_fn(variant: str, layout: SeqLayout):
    if variant == "segment_attention_pool":
        from elasticast_kernels.ops import segment_attention_pool

        return lambda q, k, v: segment_attention_pool(q, k, v, layout.cu_seqlens, layout.max_seqlen, 1.0)
    return lambda q, k, v: padded_masked_pool(q, k, v, layout.seqlens, layout.pack_offsets, 1.0)


def _case(cfg: BenchConfig, variant: str, workload: str, layout: SeqLayout, pass_: str, gpu_name: str | None) -> CaseResult:
    def body() -> dict:
        fn = _pool_fn(variant, layout)
        gen = torch.Generator().manual_seed(cfg.seed)
        grad = pass_ != "fwd"
        q = (torch.randn(cfg.heads, cfg.head_dim, generator=gen) * cfg.head_dim ** -0.5).to(cfg.device, cfg.dtype)
        k, v = (torch.randn(layout.total_tokens, cfg.heads, cfg.head_dim, generator=gen).to(cfg.device, cfg.dtype)
                for _ in range(2))
        for t in (q, k, v):
            t.requires_grad_(grad)
        if pass_ == "fwd":
            def work() -> object:
                with torch.no_grad():
                    return fn(q, k, v)
        else:
            g = torch.randn(len(layout.seqlens), cfg.heads, cfg.head_dim, device=cfg.device, dtype=cfg.dtype)
            work = lambda: fn(q, k, v).backward(g)  # noqa: E731
        metrics = timed_metrics(work, cfg)
        seconds = metrics["median_ms"] / 1e3
        kv_bytes = flops.pooling_kv_bytes(layout.total_tokens, cfg.heads, cfg.head_dim, k.element_size())
        metrics.update(
            tokens_per_s=layout.total_tokens / seconds,
            kv_bytes_per_s=kv_bytes / seconds,
            padding_fraction=padding_fraction(layout),
            total_tokens=layout.total_tokens,
        )
        limits = flops.gpu_limits(gpu_name)
        if limits and pass_ == "fwd":
            metrics["fraction_of_copy_bandwidth"] = metrics["kv_bytes_per_s"] / limits["copy_bytes_per_s"]
        return metrics

    params = {"heads": cfg.heads, "head_dim": cfg.head_dim, "samples": len(layout.seqlens), "pass_": pass_,
              "dtype": str(cfg.dtype).replace("torch.", "")}
    return guarded(GROUP, "step", variant, workload, params, body)


def tasks(cfg: BenchConfig) -> list[Task]:
    gpu_name = torch.cuda.get_device_name() if cfg.is_cuda else None
    out = []
    for workload in cfg.workloads:
        def run(workload: str = workload) -> list[CaseResult]:
            wl = make_workload(workload, max(cfg.samples_per_step, 48), cfg.seed)
            layout = step_layout(wl.step_tokens(0, cfg.samples_per_step), cfg.pack_tokens, "next_fit", cfg.device)
            results = [_case(cfg, v, workload, layout, p, gpu_name) for p in ("fwd", "fwd_bwd") for v in VARIANTS]
            add_speedups(results, BASELINE, ("pass_",))
            return results
        out.append(Task(GROUP, f"pooling [{workload}]", run, workload))
    return out
