"""End-to-end group: a list of spectrograms (host memory) to logits, packing included.

Each call moves the clips to the device, packs them with the chosen strategy and runs the
eval forward at the model group's size. Compared: our backend and the masked baseline (fused
SDPA; plus, where the model group runs it, ``sdpa_masked_math``: the same under the MATH SDPA
kernel, the published model's explicit softmax), each with the paper's next-fit grouping and with
best-fit-decreasing packing.
"""
from __future__ import annotations

import torch

from elasticast_kernels.bench.config import BASELINE, BenchConfig
from elasticast_kernels.bench.groups._common import Case, Shared, Task, Timed, add_speedups, close_to
from elasticast_kernels.bench.groups.model import PUBLISHED, build_model, logits_tolerance, sdpa_context
from elasticast_kernels.bench.results import CaseResult
from elasticast_kernels.bench.workloads import make_workload

GROUP = "end_to_end"
PACKINGS = ("next_fit", "best_fit_decreasing")


def _specs_to_logits(cfg: BenchConfig, variant: str, packing: str, host_specs: list[torch.Tensor]):
    model = build_model(cfg, cfg.model, variant, packing).eval()
    dtype = torch.bfloat16 if cfg.is_cuda else None

    def run() -> torch.Tensor:
        specs = [s.to(cfg.device, non_blocking=True) for s in host_specs]
        with torch.inference_mode(), torch.autocast(torch.device(cfg.device).type, dtype=dtype, enabled=dtype is not None), \
                sdpa_context(variant):
            return model(specs)
    return run


def _case(cfg: BenchConfig, variant: str, packing: str, workload: str, host_specs: Shared[list],
          reference: Shared) -> Case:
    """Spectrograms in host memory -> logits, which must equal the masked baseline's with the
    paper's next-fit grouping: a packing strategy never changes a sample's logits."""
    def setup() -> Timed:
        specs = host_specs()
        tokens = sum((s.shape[-2] // 16) * (s.shape[-1] // 16) for s in specs)

        def check(logits: object) -> dict:
            tol = logits_tolerance("bf16" if cfg.is_cuda else "fp32")
            return {f"max_abs_logit_diff_vs_{BASELINE}": close_to(logits, reference(), tol, f"logits vs {BASELINE}, next_fit")}
        return Timed(_specs_to_logits(cfg, variant, packing, specs), check,
                     rates=lambda s: {"samples_per_s": len(specs) / s, "tokens_per_s": tokens / s},
                     warmup=min(cfg.warmup, 2), repeats=cfg.model_repeats)

    return Case(GROUP, "specs_to_logits", variant, workload,
                dict(cfg.model.as_dict(), packing=packing, samples=cfg.samples_per_step), setup)


def _speedups(results: list[CaseResult]) -> None:
    add_speedups(results, BASELINE, ("packing",))
    add_speedups(results, PUBLISHED, ("packing",), f"speedup_vs_{PUBLISHED}")


def tasks(cfg: BenchConfig) -> list[Task]:
    out = []
    variants = (cfg.fast_backend, BASELINE) + ((PUBLISHED,) if PUBLISHED in cfg.model_backends else ())
    for workload in cfg.workloads:
        def make_specs(workload: str = workload) -> list[torch.Tensor]:
            wl = make_workload(workload, max(cfg.samples_per_step, 48), cfg.seed)
            specs = wl.spectrograms(wl.step(0, cfg.samples_per_step))
            return [s.pin_memory() for s in specs] if cfg.is_cuda else specs
        host_specs = Shared(make_specs)
        reference = Shared(lambda host_specs=host_specs: _specs_to_logits(cfg, BASELINE, "next_fit", host_specs())().float())
        cases = [_case(cfg, variant, packing, workload, host_specs, reference) for variant in variants for packing in PACKINGS]
        out.append(Task(GROUP, f"end-to-end [{workload}]", cases, workload, _speedups))
    return out
