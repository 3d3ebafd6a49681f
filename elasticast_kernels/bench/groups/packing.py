"""Packing group: plan quality and speed per strategy, C++ vs pure Python, and tensor packing.

The C++ best-fit-decreasing plan (``pack_lengths``, timed whole: validation, plan, ``PackPlan``)
and the textbook pure-Python best fit (``bench.baselines.textbook_best_fit_decreasing``, from a
Python list) run on the same lengths in the same task; ``speedup_vs_python`` is their ratio.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from elasticast_kernels.bench.baselines import textbook_best_fit_decreasing, unfold_pack
from elasticast_kernels.bench.config import BenchConfig
from elasticast_kernels.bench.groups._common import Case, Shared, Task, Timed, add_speedups
from elasticast_kernels.bench.workloads import lengths_for, make_workload

GROUP = "packing"
PYTHON = "python_best_fit_decreasing"
TENSOR_BASELINE = "unfold_cat"


def check_partition(order: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, max_tokens: int) -> None:
    """AssertionError unless the packs (``order`` split at ``offsets``) hold every sample exactly
    once and none holds more than ``max_tokens`` tokens."""
    if not np.array_equal(np.sort(order), np.arange(len(lengths))):
        raise AssertionError("the plan does not hold every sample exactly once")
    sizes = np.add.reduceat(lengths[order], offsets[:-1]) if len(order) else np.zeros(0, np.int64)
    if len(sizes) and int(sizes.max()) > max_tokens:
        raise AssertionError(f"a pack holds {int(sizes.max())} tokens > max_tokens={max_tokens}")


def _flat(bins: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    order = np.concatenate(bins) if len(bins) else np.zeros(0, np.int64)
    return order, np.concatenate([[0], np.cumsum([len(b) for b in bins])]).astype(np.int64)


def _plan_case(cfg: BenchConfig, workload: str, strategy: str, lengths: Shared[np.ndarray], count: int) -> Case:
    def setup() -> Timed:
        from elasticast_kernels.packing import pack_lengths

        values = lengths()[:count]

        def check(plan) -> dict:
            check_partition(plan.order, plan.pack_offsets, values, cfg.pack_tokens)
            total = int(values.sum())
            if abs(plan.efficiency - total / (plan.num_packs * cfg.pack_tokens)) > 1e-9:
                raise AssertionError(f"efficiency {plan.efficiency} is not tokens / capacity")
            return {"efficiency": float(plan.efficiency), "padding_fraction": 1.0 - float(plan.efficiency),
                    "num_packs": int(plan.num_packs), "min_packs": -(-total // cfg.pack_tokens)}
        return Timed(lambda: pack_lengths(values, cfg.pack_tokens, strategy), check,
                     rates=lambda s: {"lengths_per_s": count / s}, memory=False)

    return Case(GROUP, "plan", strategy, workload, {"num_lengths": count, "max_tokens": cfg.pack_tokens}, setup)


def _python_case(cfg: BenchConfig, workload: str, lengths: Shared[np.ndarray], count: int) -> Case:
    def setup() -> Timed:
        values = lengths()[:count]
        as_list = values.tolist()  # the baseline's natural input, as the C++ one's is an array

        def check(bins) -> dict:
            from elasticast_kernels.packing import pack_lengths

            check_partition(*_flat(bins), values, cfg.pack_tokens)
            cpp = pack_lengths(values, cfg.pack_tokens, "best_fit_decreasing")
            # The same algorithm: the pack counts may differ only by tie-breaking.
            if abs(cpp.num_packs - len(bins)) > max(1, len(bins) // 100):
                raise AssertionError(f"{len(bins)} packs, the C++ best fit needs {cpp.num_packs}")
            return {"efficiency": float(values.sum()) / (len(bins) * cfg.pack_tokens), "num_packs": len(bins)}
        return Timed(lambda: textbook_best_fit_decreasing(as_list, cfg.pack_tokens), check,
                     rates=lambda s: {"lengths_per_s": count / s}, memory=False,
                     warmup=0, repeats=max(1, min(cfg.repeats, 3)))

    return Case(GROUP, "plan", PYTHON, workload, {"num_lengths": count, "max_tokens": cfg.pack_tokens}, setup)


def _tensor_case(cfg: BenchConfig, workload: str, variant: str) -> Case:
    def setup() -> Timed:
        wl = make_workload(workload, max(cfg.samples_per_step, 48), cfg.seed)
        idx = wl.step(0, cfg.samples_per_step)
        specs = wl.spectrograms(idx, dtype=cfg.dtype, device=cfg.device)
        tokens = wl.tokens[idx]
        total = int(tokens.sum())
        if variant == "pack_spectrograms":
            from elasticast_kernels.packing import pack_lengths, pack_spectrograms

            plan = pack_lengths(tokens, cfg.pack_tokens, "best_fit_decreasing")
            fn = lambda: pack_spectrograms(specs, 16, plan).patches  # noqa: E731
            expected = lambda: unfold_pack([specs[i] for i in plan.order], 16)  # noqa: E731 - segments in plan order
        else:
            fn = lambda: unfold_pack(specs, 16)  # noqa: E731
            expected = None

        def check(patches) -> None:
            if tuple(patches.shape) != (total, 256):
                raise AssertionError(f"patches of shape {tuple(patches.shape)}, expected ({total}, 256)")
            if expected is not None and not bool((patches == expected()).all()):
                raise AssertionError("pack_spectrograms differs from unfold + cat")
        moved = 2 * total * 256 * specs[0].element_size()  # read + write every patch pixel once
        return Timed(fn, check, rates=lambda s: {"tokens_per_s": total / s, "bytes_per_s": moved / s},
                     info={"total_tokens": total})

    return Case(GROUP, "pack_tensors", variant, workload, {"samples": cfg.samples_per_step}, setup)


def tasks(cfg: BenchConfig) -> list[Task]:
    out: list[Task] = []
    for workload in cfg.workloads:
        lengths = Shared(lambda workload=workload: lengths_for(workload, cfg.packing_num_lengths, cfg.seed))
        plans = [_plan_case(cfg, workload, s, lengths, cfg.packing_num_lengths) for s in cfg.strategies]
        count = min(cfg.python_num_lengths, cfg.packing_num_lengths)
        if count != cfg.packing_num_lengths:  # the C++ best fit at the same n, for a fair ratio
            plans.append(_plan_case(cfg, workload, "best_fit_decreasing", lengths, count))
        plans.append(_python_case(cfg, workload, lengths, count))
        out.append(Task(GROUP, f"packing plans [{workload}]", plans, workload,
                        lambda results: add_speedups(results, PYTHON, ("num_lengths",), "speedup_vs_python")))
        out.append(Task(GROUP, f"packing tensors [{workload}]",
                        [_tensor_case(cfg, workload, v) for v in ("pack_spectrograms", TENSOR_BASELINE)], workload,
                        lambda results: add_speedups(results, TENSOR_BASELINE)))
    return out
