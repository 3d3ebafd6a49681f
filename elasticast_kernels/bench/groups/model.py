"""Model group: the drop-in ElasticAST with our packed backend vs the paper's masked SDPA backend.

Eval forward and a training step (AdamW; autocast bf16/fp16 on GPU, fp32 on CPU) on one step of
``samples_per_step`` clips. All models hold the same (seeded) weights, and every eval forward's
logits are checked against the masked baseline's. Throughput in samples/s and
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
from elasticast_kernels.bench.groups._common import Case, Shared, Task, Timed, Unavailable, add_speedups, close_to
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


def build_model(cfg: BenchConfig, size: ModelSize, variant: str, packing: str = "next_fit") -> torch.nn.Module:
    """An ElasticAST at ``size`` on the config's device, with weights seeded by ``cfg.seed`` (the
    same for every variant, so their logits can be compared).

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


def logits_tolerance(dtype: str) -> float:
    """How far a backend's logits may be from the masked baseline's (relative to the largest)."""
    return 1e-4 if dtype == "fp32" else 5e-2


def _rates(tokens: list[int], size: ModelSize, training: bool) -> Callable[[float], dict]:
    real = flops.model_flops(tokens, size.dim, size.depth, training=training)
    return lambda s: {"samples_per_s": len(tokens) / s, "tokens_per_s": sum(tokens) / s, "tflops_real": real / s / 1e12}


def reference_logits(cfg: BenchConfig, size: ModelSize, variant: str, specs: Shared[list], dtype: str) -> Shared:
    """Eval logits of the ``variant`` model at ``size`` (seeded weights, as every case's): the
    yardstick the other variants' logits must match."""
    return Shared(lambda: eval_fn(build_model(cfg, size, variant), specs(), cfg, dtype, variant)().float())


def _case(cfg: BenchConfig, mode: str, variant: str, workload: str, specs: Shared[list], size: ModelSize,
          dtype: str, reference: tuple[str, Shared] | None = None, repeats: int | None = None) -> Case:
    """A training step (every parameter must get an update) or an eval forward (the logits must
    match ``reference``: the name of the reference variant and its logits) of the ``variant``
    model on ``specs()``."""
    def setup() -> Timed:
        model = build_model(cfg, size, variant)
        clips = specs()
        tokens = [(c.shape[-2] // 16) * (c.shape[-1] // 16) for c in clips]
        if reference is None:
            before = [p.detach().clone() for p in model.parameters()]

            def check(_: object) -> None:
                if any(torch.equal(a, p.detach()) for a, p in zip(before, model.parameters())):
                    raise AssertionError("a parameter got no update")
            fn = train_fn(model, clips, cfg, dtype, variant)
        else:
            ref_variant, ref_logits = reference

            def check(logits: object) -> dict:
                diff = close_to(logits, ref_logits(), logits_tolerance(dtype), f"logits vs the {ref_variant} model's")
                return {f"max_abs_logit_diff_vs_{ref_variant}": diff}
            fn = eval_fn(model, clips, cfg, dtype, variant)
        return Timed(fn, check, _rates(tokens, size, reference is None), info={"total_tokens": sum(tokens)},
                     warmup=min(cfg.warmup, 2), repeats=repeats or cfg.model_repeats)

    samples = EQUAL_CLIPS if mode == "eval_forward_equal_lengths" else cfg.samples_per_step
    return Case(GROUP, mode, variant, workload, dict(size.as_dict(), dtype=dtype, samples=samples), setup)


def tasks(cfg: BenchConfig) -> list[Task]:
    out: list[Task] = []
    label = "" if cfg.is_cuda else " (CPU size)"
    for workload in cfg.workloads:
        def make_specs(workload: str = workload) -> list[torch.Tensor]:
            wl = make_workload(workload, max(cfg.samples_per_step, 48), cfg.seed)
            return wl.spectrograms(wl.step(0, cfg.samples_per_step), device=cfg.device)
        specs = Shared(make_specs)
        for mode, size in (("eval_forward", cfg.model), ("train_step", cfg.train_model)):
            for dtype in cfg.model_dtypes:
                reference = (BASELINE, reference_logits(cfg, size, BASELINE, specs, dtype)) if mode == "eval_forward" else None
                cases = [_case(cfg, mode, b, workload, specs, size, dtype, reference) for b in cfg.model_backends]
                out.append(Task(GROUP, f"model {mode} {dtype}{label} [{workload}]", cases, workload, _model_speedups))
    out.append(Task(GROUP, f"model eval_forward, {EQUAL_CLIPS} equal clips{label}", equal_lengths_cases(cfg),
                    finish=lambda results: add_speedups(results, SAMPLE_PADDED, metric=f"speedup_vs_{SAMPLE_PADDED}")))
    return out


def _model_speedups(results: list[CaseResult]) -> None:
    add_speedups(results, BASELINE, ("dtype",))  # vs fused masked SDPA
    add_speedups(results, PUBLISHED, ("dtype",), f"speedup_vs_{PUBLISHED}")  # vs the published explicit softmax


def equal_lengths_cases(cfg: BenchConfig) -> list[Case]:
    """Eval forward on a batch of equal 5 s clips: our packed ``fast_backend`` vs the AST-style
    padded attention, where padding is free and only the attention call pattern differs (the torch
    backend runs the whole batch as one SDPA call). Attention is a tenth of this model's time, so
    more repeats than the other model cases, for the difference to stand out of the noise."""
    def make_specs() -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(cfg.seed)
        return [torch.randn(1, 128, EQUAL_FRAMES, generator=gen).to(cfg.device) for _ in range(EQUAL_CLIPS)]
    specs = Shared(make_specs)
    reference = (SAMPLE_PADDED, reference_logits(cfg, cfg.model, SAMPLE_PADDED, specs, "fp32"))
    return [_case(cfg, "eval_forward_equal_lengths", variant, "equal_5s", specs, cfg.model, "fp32", reference,
                  repeats=3 * cfg.model_repeats)
            for variant in (cfg.fast_backend, SAMPLE_PADDED)]
