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
from elasticast_kernels.bench.groups._common import Task, add_speedups, guarded, timed_metrics
from elasticast_kernels.bench.groups.model import PUBLISHED, add_speedups_vs, build_model, sdpa_context
from elasticast_kernels.bench.results import CaseResult
from elasticast_kernels.bench.workloads import make_workload

GROUP = "end_to_end"
PACKINGS = ("next_fit", "best_fit_decreasing")


def tasks(cfg: BenchConfig) -> list[Task]:
    out = []
    for workload in cfg.workloads:
        def run(workload: str = workload) -> list[CaseResult]:
            wl = make_workload(workload, max(cfg.samples_per_step, 48), cfg.seed)
            idx = wl.step(0, cfg.samples_per_step)
            tokens = int(wl.tokens[idx].sum())
            host_specs = wl.spectrograms(idx)
            if cfg.is_cuda:
                host_specs = [s.pin_memory() for s in host_specs]
            results = []
            variants = (cfg.fast_backend, BASELINE) + ((PUBLISHED,) if PUBLISHED in cfg.model_backends else ())
            for backend in variants:
                for packing in PACKINGS:
                    def body(backend: str = backend, packing: str = packing) -> dict:
                        model = build_model(cfg, cfg.model, backend, packing).eval()
                        dtype = torch.bfloat16 if cfg.is_cuda else None

                        def fn() -> torch.Tensor:
                            specs = [s.to(cfg.device, non_blocking=True) for s in host_specs]
                            with torch.inference_mode(), torch.autocast(torch.device(cfg.device).type, dtype=dtype,
                                                                        enabled=dtype is not None), sdpa_context(backend):
                                return model(specs)
                        metrics = timed_metrics(fn, cfg, warmup=min(cfg.warmup, 2), repeats=cfg.model_repeats if cfg.is_cuda else min(cfg.model_repeats, 2))
                        seconds = metrics["median_ms"] / 1e3
                        metrics.update(samples_per_s=len(idx) / seconds, tokens_per_s=tokens / seconds)
                        return metrics
                    params = dict(cfg.model.as_dict(), packing=packing, samples=len(idx))
                    results.append(guarded(GROUP, "specs_to_logits", backend, workload, params, body))
            add_speedups(results, BASELINE, ("packing",))
            add_speedups_vs(results, PUBLISHED, ("packing",))
            return results
        out.append(Task(GROUP, f"end-to-end [{workload}]", run, workload))
    return out
