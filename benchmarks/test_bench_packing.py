"""Packing benchmarks: plans per strategy (efficiency, lengths/s), C++ vs pure-Python best-fit,
tensor packing vs unfold+cat, and one point of the token-limit x samples-per-step sweep."""
from __future__ import annotations

import numpy as np
import pytest

from elasticast_kernels.bench.baselines import textbook_best_fit_decreasing, unfold_pack
from elasticast_kernels.bench.config import STRATEGIES
from elasticast_kernels.bench.groups.sweep import padding_stats
from elasticast_kernels.bench.workloads import lengths_for, make_workload


def _check_partition(bins, lengths: np.ndarray, max_tokens: int) -> None:
    flat = np.concatenate([np.asarray(b) for b in bins]) if bins else np.array([], dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths))), "every sample exactly once"
    assert all(int(lengths[np.asarray(b)].sum()) <= max_tokens for b in bins), "no pack over capacity"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_packing_plan(strategy, bench_cfg, run_bench):
    packing = pytest.importorskip("elasticast_kernels.packing")
    lengths = lengths_for("voxceleb", bench_cfg.packing_num_lengths, bench_cfg.seed)
    plan = run_bench(lambda: packing.pack_lengths(lengths, bench_cfg.pack_tokens, strategy), "packing-plan",
                     strategy=strategy, num_lengths=len(lengths))
    _check_partition(plan.bins, lengths, bench_cfg.pack_tokens)
    assert plan.efficiency == pytest.approx(lengths.sum() / (plan.num_packs * bench_cfg.pack_tokens))


def test_packing_python_best_fit(bench_cfg, run_bench):
    lengths = lengths_for("voxceleb", bench_cfg.python_num_lengths, bench_cfg.seed)
    as_list = lengths.tolist()
    bins = run_bench(lambda: textbook_best_fit_decreasing(as_list, bench_cfg.pack_tokens), "packing-plan",
                     strategy="python_best_fit_decreasing", num_lengths=len(lengths))
    _check_partition(bins, lengths, bench_cfg.pack_tokens)
    packing = pytest.importorskip("elasticast_kernels.packing")
    cpp = packing.pack_lengths(lengths, bench_cfg.pack_tokens, "best_fit_decreasing")
    # Same algorithm: the pack counts may differ only by tie-breaking.
    assert abs(cpp.num_packs - len(bins)) <= max(1, len(bins) // 100)


@pytest.mark.parametrize("variant", ["pack_spectrograms", "unfold_cat"])
def test_packing_tensors(variant, bench_cfg, run_bench):
    wl = make_workload("voxceleb", 48, bench_cfg.seed)
    specs = wl.spectrograms(wl.step(0, bench_cfg.samples_per_step), dtype=bench_cfg.dtype, device=bench_cfg.device)
    expected = unfold_pack(specs, 16)
    if variant == "pack_spectrograms":
        packing = pytest.importorskip("elasticast_kernels.packing")
        batch = run_bench(lambda: packing.pack_spectrograms(specs, 16), "packing-tensors", variant=variant)
        assert batch.patches.shape == expected.shape
        assert bool((batch.patches == expected).all())
    else:
        patches = run_bench(lambda: unfold_pack(specs, 16), "packing-tensors", variant=variant)
        assert patches.shape == (int(wl.tokens[wl.step(0, bench_cfg.samples_per_step)].sum()), 256)


@pytest.mark.parametrize("strategy", ["next_fit", "best_fit_decreasing"])
def test_packing_sweep_point(strategy, bench_cfg, run_bench):
    """One point of the sweep: padding of the paper's row layout never beats the theoretical minimum."""
    if strategy != "next_fit":
        pytest.importorskip("elasticast_kernels.packing")
    wl = make_workload("voxceleb", 12 * 20, bench_cfg.seed)
    steps = [wl.step_tokens(i, 12) for i in range(20)]
    stats = run_bench(lambda: padding_stats(steps, 1024, strategy), "packing-sweep", strategy=strategy)
    assert 0.0 <= stats["min_padding_fraction"] <= stats["padding_fraction"] < 1.0
    assert 0.0 < stats["capacity_efficiency"] <= 1.0
