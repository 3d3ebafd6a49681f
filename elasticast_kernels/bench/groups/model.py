"""Model group: the drop-in ElasticAST with our packed backend vs the paper's masked SDPA backend.

Eval forward and a training step (AdamW; autocast bf16/fp16 on GPU, fp32 on CPU) on one step of
``samples_per_step`` clips. All models hold the same weights. Throughput in samples/s and
tokens/s, peak memory, and the real FLOP rate (matmuls of real tokens, own-sample attention only).

Two padded baselines (both the whole encoder on padded rows with a block-diagonal bool mask):
``sdpa_masked`` runs the mask through fused SDPA (faster than the published code);
``sdpa_masked_math`` is the same model under ``sdpa_kernel([SDPBackend.MATH])``, i.e. explicit
scores, mask, softmax, as the published model computes attention. ``speedup_vs_baseline`` is
against the fused one, ``speedup_vs_sdpa_masked_math`` against the published-faithful one.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

from elasticast_kernels.bench import flops
from elasticast_kernels.bench.config import BASELINE, BenchConfig, ModelSize
from elasticast_kernels.bench.groups._common import Task, Unavailable, add_speedups, guarded, timed_metrics
from elasticast_kernels.bench.results import CaseResult
from elasticast_kernels.bench.workloads import make_workload

GROUP = "model"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PUBLISHED = "sdpa_masked_math"  # the published model's attention: masked scores + explicit softmax
SAMPLE_PADDED = "padded"  # AST style: every sample padded to the longest, key-padding mask
EQUAL_CLIPS, EQUAL_FRAMES = 32, 496  # 32 clips of 5 s (128 mel x 496 frames = 248 tokens each)


def sdpa_context(variant: str) -> contextlib.AbstractContextManager:
    """The SDPA kernel choice a variant's calls run under (math for the published-faithful one)."""
    if variant != PUBLISHED:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def add_speedups_vs(results: list[CaseResult], variant: str, match: tuple[str, ...] = ()) -> None:
    """Set ``speedup_vs_<variant>`` (its median / case median) on ok cases of the same group, name,
    workload and ``match`` params as an ok ``variant`` case (other than that case itself)."""
    def key(r: CaseResult) -> tuple:
        return (r.group, r.name, r.workload) + tuple(r.params.get(m) for m in match)

    base = {key(r): r for r in results if r.variant == variant and r.status == "ok"}
    for r in results:
        b = base.get(key(r))
        if r.status == "ok" and b is not None and r is not b and r.metrics.get("median_ms") and b.metrics.get("median_ms"):
            r.metrics[f"speedup_vs_{variant}"] = b.metrics["median_ms"] / r.metrics["median_ms"]


def build_model(cfg: BenchConfig, size: ModelSize, variant: str, packing: str = "next_fit",
                state_dict: dict | None = None) -> torch.nn.Module:
    """An ElasticAST at ``size`` on the config's device (seeded weights, or ``state_dict``).

    ``variant``: an attention backend of the package, or a padded baseline: ``"sdpa_masked"``
    and ``"sdpa_masked_math"`` build the `PaddedElasticAST` (run the latter under
    :func:`sdpa_context`, as ``eval_fn``/``train_fn`` do when given the variant); ``"padded"``
    the `SamplePaddedElasticAST` (every sample padded to the longest, AST style).
    """
    from elasticast_kernels import backends
    from elasticast_kernels.bench.padded import PaddedElasticAST, SamplePaddedElasticAST
    from elasticast_kernels.models import ElasticAST

    baselines = {BASELINE: PaddedElasticAST, PUBLISHED: PaddedElasticAST, SAMPLE_PADDED: SamplePaddedElasticAST}
    padded = variant in baselines
    if not padded:
        reason = backends.available_backends(torch.device(cfg.device)).get(variant, f"unknown backend {variant!r}")
        if reason is not None:
            raise Unavailable(reason)
    torch.manual_seed(cfg.seed)
    model_class = baselines.get(variant, ElasticAST)
    model = model_class(
        sample_size=(128, cfg.max_frames), patch_size=16, num_classes=cfg.num_classes,
        dim=size.dim, depth=size.depth, heads=size.heads, channels=1,
        attention_backend="torch" if padded else variant, packing=packing,
    )
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.to(cfg.device)


def _autocast(cfg: BenchConfig, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(cfg.device).type, dtype=DTYPES[dtype])


def eval_fn(model: torch.nn.Module, specs: list[torch.Tensor], cfg: BenchConfig, dtype: str,
            variant: str = "") -> Callable[[], torch.Tensor]:
    """The eval forward as a call; ``variant`` picks the SDPA kernel context (see sdpa_context)."""
    model.eval()

    def run() -> torch.Tensor:
        with torch.inference_mode(), _autocast(cfg, dtype), sdpa_context(variant):
            return model(specs)
    return run


def train_fn(model: torch.nn.Module, specs: list[torch.Tensor], cfg: BenchConfig, dtype: str,
             variant: str = "") -> Callable[[], None]:
    """One AdamW training step as a call; ``variant`` picks the SDPA kernel context."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = torch.randint(cfg.num_classes, (len(specs),), generator=torch.Generator().manual_seed(cfg.seed)).to(cfg.device)
    scaler = torch.amp.GradScaler(torch.device(cfg.device).type, enabled=dtype == "fp16")

    def step() -> None:
        with sdpa_context(variant):  # the backward of the math path is math too
            with _autocast(cfg, dtype):
                logits = model(specs)
            loss = F.cross_entropy(logits.float(), labels)
            scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return step


def _metrics(fn: Callable, cfg: BenchConfig, tokens: list[int], size: ModelSize, training: bool,
             repeats: int | None = None) -> dict:
    metrics = timed_metrics(fn, cfg, warmup=min(cfg.warmup, 2), repeats=repeats or cfg.model_repeats)
    seconds = metrics["median_ms"] / 1e3
    metrics.update(
        samples_per_s=len(tokens) / seconds,
        tokens_per_s=sum(tokens) / seconds,
        tflops_real=flops.model_flops(tokens, size.dim, size.depth, training=training) / seconds / 1e12,
        total_tokens=sum(tokens),
    )
    return metrics


def tasks(cfg: BenchConfig) -> list[Task]:
    out: list[Task] = []
    label = "" if cfg.is_cuda else " (CPU size)"
    for workload in cfg.workloads:
        wl = make_workload(workload, max(cfg.samples_per_step, 48), cfg.seed)
        idx = wl.step(0, cfg.samples_per_step)
        tokens = [int(t) for t in wl.tokens[idx]]
        for mode, size in (("eval_forward", cfg.model), ("train_step", cfg.train_model)):
            for dtype in cfg.model_dtypes:
                def run(workload: str = workload, mode: str = mode, size: ModelSize = size, dtype: str = dtype) -> list[CaseResult]:
                    specs = wl.spectrograms(idx, device=cfg.device)
                    results, logits, weights = [], {}, None
                    for backend in cfg.model_backends:
                        def body(backend: str = backend) -> dict:
                            nonlocal weights
                            model = build_model(cfg, size, backend, state_dict=weights)
                            weights = weights or {k: v.detach().clone() for k, v in model.state_dict().items()}
                            if mode == "eval_forward":
                                forward, last = eval_fn(model, specs, cfg, dtype, backend), {}

                                def fn() -> torch.Tensor:  # keeps the logits of the last call
                                    last["logits"] = forward()
                                    return last["logits"]
                                metrics = _metrics(fn, cfg, tokens, size, training=False)
                                logits[backend] = last["logits"].float()
                                first = logits[cfg.model_backends[0]]
                                metrics["max_abs_logit_diff_vs_first"] = float((logits[backend] - first).abs().max())
                            else:
                                metrics = _metrics(train_fn(model, specs, cfg, dtype, backend), cfg, tokens, size,
                                                   training=True)
                            return metrics
                        params = dict(size.as_dict(), dtype=dtype, samples=len(tokens))
                        results.append(guarded(GROUP, mode, backend, workload, params, body))
                    add_speedups(results, BASELINE, ("dtype",))  # vs fused masked SDPA
                    add_speedups_vs(results, PUBLISHED, ("dtype",))  # vs the published explicit softmax
                    return results
                out.append(Task(GROUP, f"model {mode} {dtype}{label} [{workload}]", run, workload))
    out.append(Task(GROUP, f"model eval_forward, {EQUAL_CLIPS} equal clips{label}", lambda: equal_lengths(cfg)))
    return out


def equal_lengths(cfg: BenchConfig) -> list[CaseResult]:
    """Eval forward on a batch of equal 5 s clips: our packed ``fast_backend`` vs the AST-style
    padded attention, where padding is free and only the attention call pattern differs (the torch
    backend runs the whole batch as one SDPA call)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    specs = [torch.randn(1, 128, EQUAL_FRAMES, generator=gen).to(cfg.device) for _ in range(EQUAL_CLIPS)]
    tokens = [(128 // 16) * (EQUAL_FRAMES // 16)] * EQUAL_CLIPS
    results, weights = [], None
    for variant in (cfg.fast_backend, SAMPLE_PADDED):
        def body(variant: str = variant) -> dict:
            nonlocal weights
            model = build_model(cfg, cfg.model, variant, state_dict=weights)
            weights = weights or {k: v.detach().clone() for k, v in model.state_dict().items()}
            # attention is a tenth of this model's time: more repeats than the other model cases so
            # that the difference between the variants stands out of the timing noise
            return _metrics(eval_fn(model, specs, cfg, "fp32", variant), cfg, tokens, cfg.model, training=False,
                            repeats=3 * cfg.model_repeats)
        params = dict(cfg.model.as_dict(), dtype="fp32", samples=EQUAL_CLIPS)
        results.append(guarded(GROUP, "eval_forward_equal_lengths", variant, "equal_5s", params, body))
    add_speedups_vs(results, SAMPLE_PADDED)
    return results
