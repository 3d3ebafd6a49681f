"""Sweep group: how padding, throughput and memory scale with the token limit per pack and the
number of samples per step, for each packing strategy (the study the paper leaves open).

Padding: over ``sweep_num_steps`` consecutive steps, each step packed on its own with the
strategy, rows padded to the longest row as the paper's masked attention does. Samples longer
than the limit are cropped to it (the fraction cropped is reported). The theoretical minimum per
step uses the fewest rows that can hold the step, ``r = ceil(sum / limit)``, each at least as
long as the longest sample and ``ceil(sum / r)``: ``padded >= r * max(ceil(sum / r), max_len)``.
Throughput and memory: one attention pass on the step's rows, our packed backend vs masked SDPA
(the packed backend has no padding, so its cost does not depend on the plan).
"""
from __future__ import annotations

import numpy as np

from elasticast_kernels.bench.config import BASELINE, BenchConfig
from elasticast_kernels.bench.groups._common import Shared, Task, add_speedups, guarded, padded_tokens, step_layout
from elasticast_kernels.bench.groups.attention import attention_case
from elasticast_kernels.bench.results import CaseResult
from elasticast_kernels.bench.workloads import make_workload

GROUP = "sweep"


def min_padded_tokens(lengths: np.ndarray, limit: int) -> int:
    total, longest = int(lengths.sum()), int(lengths.max())
    rows = -(-total // limit)
    return rows * max(-(-total // rows), longest)


def padding_stats(steps: list[np.ndarray], limit: int, strategy: str) -> dict:
    real = padded = minimum = packs = cropped = count = 0
    for lengths in steps:
        cropped += int((lengths > limit).sum())
        count += len(lengths)
        lengths = np.minimum(lengths, limit)
        layout = step_layout(lengths, limit, strategy)
        real += layout.total_tokens
        padded += padded_tokens(layout)
        minimum += min_padded_tokens(lengths, limit)
        packs += layout.num_packs
    return {
        "padding_fraction": 1.0 - real / padded,
        "min_padding_fraction": 1.0 - real / minimum,
        "excess_padding": (padded - minimum) / padded,
        "capacity_efficiency": real / (packs * limit),
        "packs_per_step": packs / len(steps),
        "cropped_fraction": cropped / count,
    }


def tasks(cfg: BenchConfig) -> list[Task]:
    workload = cfg.workloads[0]

    def run_padding() -> list[CaseResult]:
        results = []
        for samples in cfg.sweep_steps:
            wl = make_workload(workload, samples * cfg.sweep_num_steps, cfg.seed)
            steps = [wl.step_tokens(i, samples) for i in range(cfg.sweep_num_steps)]
            for strategy in cfg.strategies:
                for limit in cfg.sweep_limits:
                    params = {"limit": limit, "samples": samples, "steps": cfg.sweep_num_steps}
                    results.append(guarded(GROUP, "padding", strategy, workload, params,
                                           lambda s=strategy, lim=limit: padding_stats(steps, lim, s)))
        return results

    pass_ = "fwd_bwd" if cfg.is_cuda else "fwd"
    timed = []
    for samples in cfg.sweep_timed_steps:
        tokens = make_workload(workload, max(samples, 48), cfg.seed).step_tokens(0, samples)
        for limit in cfg.sweep_timed_limits:
            for strategy in cfg.sweep_timed_strategies:
                layout = Shared(lambda lim=limit, s=strategy, t=tokens: step_layout(np.minimum(t, lim), lim, s, cfg.device))
                params = {"limit": limit, "samples": samples, "strategy": strategy, "heads": cfg.heads,
                          "head_dim": cfg.head_dim}
                timed += [attention_case(cfg, "throughput", variant, workload, layout, pass_, params, GROUP)
                          for variant in (cfg.fast_backend, BASELINE)]

    return [Task(GROUP, f"sweep padding [{workload}]", extra=run_padding),
            Task(GROUP, f"sweep throughput/memory [{workload}]", timed,
                 finish=lambda results: add_speedups(results, BASELINE, ("limit", "samples", "strategy", "pass_")))]
