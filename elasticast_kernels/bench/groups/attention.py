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
    Case, Shared, Task, Timed, Unavailable, add_speedups, close_to, finite_grads, padding_fraction, step_layout,
)
from elasticast_kernels.bench.padded import padded_attention, sdpa_masked_attention
from elasticast_kernels.bench.results import CaseResult, skipped
from elasticast_kernels.bench.workloads import make_workload
from elasticast_kernels.layout import SeqLayout

GROUP = "attention"
AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# Forward outputs against the float32 per-sample reference, relative to the largest magnitude.
TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


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


def pass_timed(fn: AttnFn, layout: SeqLayout, cfg: BenchConfig, pass_: str) -> Timed:
    """One pass ("fwd", "bwd" or "fwd_bwd") of ``fn`` on random inputs in ``layout``: the forward
    checked against `reference_attention`, the backward for finite gradients."""
    scale = cfg.head_dim ** -0.5
    q, k, v = make_qkv(layout.total_tokens, cfg, requires_grad=pass_ != "fwd")
    grad = torch.randn_like(q)
    if pass_ == "fwd":
        def work() -> torch.Tensor:
            with torch.no_grad():
                return fn(q, k, v)

        def check(out: object) -> dict:
            ref = reference_attention(q, k, v, layout.seqlens, scale)
            return {"max_abs_err": close_to(out, ref, TOLERANCE[cfg.dtype], "attention output vs per-sample SDPA")}
    elif pass_ == "bwd":
        out = fn(q, k, v)
        work, check = (lambda: out.backward(grad, retain_graph=True)), finite_grads(q, k, v)
    else:
        work, check = (lambda: fn(q, k, v).backward(grad)), finite_grads(q, k, v)
    real = flops.attention_flops(layout.seqlens, cfg.heads, cfg.head_dim, pass_)
    return Timed(
        work, check,
        rates=lambda s: {"tokens_per_s": layout.total_tokens / s, "tflops_real": real / s / 1e12},
        info={"padding_fraction": padding_fraction(layout), "total_tokens": layout.total_tokens,
              "num_packs": layout.num_packs, "max_seqlen": layout.max_seqlen},
    )


def attention_case(cfg: BenchConfig, name: str, variant: str, workload: str, layout: Callable[[], SeqLayout],
                   pass_: str, params: dict, group: str = GROUP) -> Case:
    """A case timing one pass of the ``variant`` implementation on ``layout()``."""
    def setup() -> Timed:
        step = layout()
        return pass_timed(attention_fn(variant, step, cfg, cfg.head_dim ** -0.5), step, cfg, pass_)

    return Case(group, name, variant, workload, dict(params, pass_=pass_), setup)


def _step(cfg: BenchConfig, workload: str, samples: int) -> Shared[SeqLayout]:
    def make() -> SeqLayout:
        wl = make_workload(workload, max(samples, 48), cfg.seed)
        return step_layout(wl.step_tokens(0, samples), cfg.pack_tokens, "next_fit", cfg.device)
    return Shared(make)


def _fixed(cfg: BenchConfig, seqlen: int) -> Shared[SeqLayout]:
    count = max(1, cfg.seqlen_sweep_tokens // seqlen)
    return Shared(lambda: step_layout(np.full(count, seqlen), max(cfg.pack_tokens, seqlen), "next_fit", cfg.device))


def tasks(cfg: BenchConfig) -> list[Task]:
    out: list[Task] = []
    shape = {"heads": cfg.heads, "head_dim": cfg.head_dim, "dtype": str(cfg.dtype).replace("torch.", "")}
    for workload in cfg.workloads:
        layout = _step(cfg, workload, cfg.samples_per_step)
        params = dict(shape, samples=cfg.samples_per_step)
        for pass_ in cfg.attention_passes:
            def left_out(workload: str = workload, pass_: str = pass_, params: dict = params) -> list[CaseResult]:
                # Never drop a baseline silently: those this suite leaves out are listed as skipped.
                return [skipped(GROUP, "step", b, workload, f"left out of the {cfg.suite} suite on {cfg.device} "
                                "(slow fallback here); run --suite full", **dict(params, pass_=pass_))
                        for b in ATTENTION_BACKENDS if b not in cfg.attention_backends]
            out.append(Task(GROUP, f"attention {pass_} [{workload}]",
                            [attention_case(cfg, "step", b, workload, layout, pass_, params) for b in cfg.attention_backends],
                            workload, lambda results: add_speedups(results, BASELINE, ("pass_",)), left_out))

    contenders = (cfg.fast_backend, BASELINE)
    seqlen_cases = [attention_case(cfg, "seqlen", variant, "fixed", _fixed(cfg, n), pass_, dict(shape, seqlen=n))
                    for n in cfg.seqlen_sweep for pass_ in (("fwd", "fwd_bwd") if cfg.is_cuda else ("fwd",))
                    for variant in contenders]
    memory_cases = [attention_case(cfg, "batch_memory", variant, cfg.workloads[0], _step(cfg, cfg.workloads[0], samples),
                                   "fwd_bwd", dict(shape, samples=samples))
                    for samples in cfg.memory_batches for variant in contenders]
    out.append(Task(GROUP, "attention vs sequence length", seqlen_cases,
                    finish=lambda results: add_speedups(results, BASELINE, ("pass_", "seqlen"))))
    out.append(Task(GROUP, "attention memory vs batch", memory_cases,
                    finish=lambda results: add_speedups(results, BASELINE, ("pass_", "samples"))))
    return out
