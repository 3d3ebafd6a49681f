"""Attention group: one encoder block's self-attention on a packed step, every implementation.

Inputs are the same for every implementation in a run: a step of ``samples_per_step`` clips of
the workload, packed into ``pack_tokens`` rows by the paper's next-fit rule (the masked baselines
need rows; the packed kernels ignore them). FLOPs count only each sample's own block.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from elasticast_kernels.bench import flops
from elasticast_kernels.bench.baselines import nested_sdpa
from elasticast_kernels.bench.config import ATTENTION_BACKENDS, BASELINE, BenchConfig
from elasticast_kernels.bench.groups._common import (
    Task, Unavailable, add_speedups, guarded, padding_fraction, step_layout, timed_metrics,
)
from elasticast_kernels.bench.padded import padded_attention, sdpa_masked_attention
from elasticast_kernels.layout import SeqLayout
from elasticast_kernels.bench.results import CaseResult, skipped
from elasticast_kernels.bench.workloads import make_workload

GROUP = "attention"
AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _math_sdpa() -> contextlib.AbstractContextManager:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


# Baselines that pad: the benchmarks' own implementations (elasticast_kernels.bench.padded).
PADDED_BASELINES = {"sdpa_masked": sdpa_masked_attention, "padded": padded_attention}


def attention_fn(name: str, layout: SeqLayout, cfg: BenchConfig, scale: float) -> AttnFn:
    """``f(q, k, v) -> out`` on ``[total_tokens, heads, head_dim]`` for the named implementation.

    Raises:
        Unavailable: the implementation cannot run on this device or is not installed.
    """
    from elasticast_kernels import backends

    if name == "nested_sdpa":
        return lambda q, k, v: nested_sdpa(q, k, v, layout.seqlens, scale)
    if name == "sdpa_masked_math":
        def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            with _math_sdpa():
                return sdpa_masked_attention(q, k, v, layout, scale)
        return run
    if name in PADDED_BASELINES:
        baseline = PADDED_BASELINES[name]
        return lambda q, k, v: baseline(q, k, v, layout, scale)
    reason = backends.available_backends(torch.device(cfg.device)).get(name, f"unknown backend {name!r}")
    if reason is not None:
        raise Unavailable(reason)
    return lambda q, k, v: backends.attention(q, k, v, layout, scale, backend=name)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens, scale: float) -> torch.Tensor:
    """Per-sample SDPA in float32: the correctness yardstick for every implementation."""
    out, start = [], 0
    for n in seqlens:
        qs, ks, vs = (t[start:start + n].float().transpose(0, 1) for t in (q, k, v))
        out.append(F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(0, 1))
        start += n
    return torch.cat(out)


def make_qkv(total: int, cfg: BenchConfig, requires_grad: bool, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    shape = (total, cfg.heads, cfg.head_dim)
    return tuple(
        torch.randn(shape, generator=gen).to(cfg.device, cfg.dtype).requires_grad_(requires_grad) for _ in range(3)
    )


def measure_pass(fn: AttnFn, layout: SeqLayout, cfg: BenchConfig, pass_: str, check: bool = False) -> dict:
    """Time one pass ("fwd", "bwd" or "fwd_bwd") of ``fn`` and report the standard metrics."""
    scale = cfg.head_dim ** -0.5
    q, k, v = make_qkv(layout.total_tokens, cfg, requires_grad=pass_ != "fwd")
    grad = torch.randn_like(q)
    metrics: dict = {}
    if pass_ == "fwd":
        def work() -> object:
            with torch.no_grad():
                return fn(q, k, v)
        if check:
            ref = reference_attention(q, k, v, layout.seqlens, scale)
            metrics["max_abs_err"] = float((work().float() - ref).abs().max())
    elif pass_ == "bwd":
        out = fn(q, k, v)
        work = lambda: out.backward(grad, retain_graph=True)  # noqa: E731
    else:
        work = lambda: fn(q, k, v).backward(grad)  # noqa: E731
    metrics.update(timed_metrics(work, cfg))
    seconds = metrics["median_ms"] / 1e3
    real = flops.attention_flops(layout.seqlens, cfg.heads, cfg.head_dim, pass_)
    metrics.update(
        tokens_per_s=layout.total_tokens / seconds,
        tflops_real=real / seconds / 1e12,
        padding_fraction=padding_fraction(layout),
        total_tokens=layout.total_tokens,
        num_packs=layout.num_packs,
        max_seqlen=layout.max_seqlen,
    )
    return metrics


def _case(cfg: BenchConfig, name: str, variant: str, workload: str, layout: SeqLayout, pass_: str,
          params: dict, check: bool = False) -> CaseResult:
    def body() -> dict:
        fn = attention_fn(variant, layout, cfg, cfg.head_dim ** -0.5)
        return measure_pass(fn, layout, cfg, pass_, check=check)

    return guarded(GROUP, name, variant, workload, dict(params, pass_=pass_), body)


def _step(cfg: BenchConfig, workload: str, samples: int) -> SeqLayout:
    wl = make_workload(workload, max(samples, 48), cfg.seed)
    return step_layout(wl.step_tokens(0, samples), cfg.pack_tokens, "next_fit", cfg.device)


def tasks(cfg: BenchConfig) -> list[Task]:
    out: list[Task] = []
    shape = {"heads": cfg.heads, "head_dim": cfg.head_dim, "dtype": str(cfg.dtype).replace("torch.", "")}
    for workload in cfg.workloads:
        for pass_ in cfg.attention_passes:
            def run(workload: str = workload, pass_: str = pass_) -> list[CaseResult]:
                layout = _step(cfg, workload, cfg.samples_per_step)
                params = dict(shape, samples=cfg.samples_per_step)
                results = [_case(cfg, "step", b, workload, layout, pass_, params, check=pass_ == "fwd")
                           for b in cfg.attention_backends]
                # Never drop a baseline silently: those this suite leaves out are listed as skipped.
                results += [skipped(GROUP, "step", b, workload, f"left out of the {cfg.suite} suite on "
                                    f"{cfg.device} (slow fallback here); run --suite full",
                                    **dict(params, pass_=pass_))
                            for b in ATTENTION_BACKENDS if b not in cfg.attention_backends]
                add_speedups(results, BASELINE, ("pass_",))
                return results
            out.append(Task(GROUP, f"attention {pass_} [{workload}]", run, workload))

    seqlen_passes = ("fwd", "fwd_bwd") if cfg.is_cuda else ("fwd",)
    contenders = (cfg.fast_backend, BASELINE)

    def run_seqlen() -> list[CaseResult]:
        results = []
        for n in cfg.seqlen_sweep:
            count = max(1, cfg.seqlen_sweep_tokens // n)
            layout = step_layout(np.full(count, n), max(cfg.pack_tokens, n), "next_fit", cfg.device)
            for pass_ in seqlen_passes:
                for variant in contenders:
                    results.append(_case(cfg, "seqlen", variant, "fixed", layout, pass_, dict(shape, seqlen=n)))
        add_speedups(results, BASELINE, ("pass_", "seqlen"))
        return results

    def run_memory() -> list[CaseResult]:
        results = []
        for samples in cfg.memory_batches:
            layout = _step(cfg, cfg.workloads[0], samples)
            for variant in contenders:
                results.append(_case(cfg, "batch_memory", variant, cfg.workloads[0], layout, "fwd_bwd",
                                     dict(shape, samples=samples)))
        add_speedups(results, BASELINE, ("pass_", "samples"))
        return results

    out.append(Task(GROUP, "attention vs sequence length", run_seqlen))
    out.append(Task(GROUP, "attention memory vs batch", run_memory))
    return out
