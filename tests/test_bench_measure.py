"""Benchmark timing, memory, FLOP counts, targets and the pure-Python / padded baselines."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elasticast_kernels.bench import flops
from elasticast_kernels.bench.baselines import nested_sdpa, padded_masked_pool, textbook_best_fit_decreasing, unfold_pack
from elasticast_kernels.bench.config import tiny_config
from elasticast_kernels.bench.groups._common import Case, Timed, Unavailable, measure_case
from elasticast_kernels.bench.groups.sweep import min_padded_tokens
from elasticast_kernels.bench.timing import measure, peak_memory
from helpers import cu_from, reference_pool


def test_measure_reports_the_median():
    calls = []
    timing = measure(lambda: (calls.append(1), time.sleep(0.002)), warmup=2, repeats=3)
    assert len(calls) == 5 and timing.repeats == 3 and timing.method == "perf_counter"
    assert 0.002 <= timing.min_s <= timing.median_s <= timing.max_s


@pytest.mark.parametrize("kwargs", [dict(warmup=-1), dict(repeats=0)])
def test_measure_rejects_bad_counts(kwargs):
    with pytest.raises(ValueError, match="warmup|repeats"):
        measure(lambda: None, **kwargs)


def test_peak_memory_sees_a_large_temporary():
    # Larger than glibc's largest dynamic trim threshold (64 MiB): earlier tests in this process
    # (the CLI's tiny run) can leave up to that much freed, still-resident heap that a smaller
    # temporary would reuse without raising the RSS.
    size = 128 * 2**20
    memory = peak_memory(lambda: torch.ones(size // 4).sum())
    assert memory.peak_bytes >= 0.8 * size, memory
    assert memory.peak_bytes < 4 * size, memory


def test_attention_flops_count_only_own_blocks():
    assert flops.attention_flops([2, 3], heads=2, head_dim=4) == 4 * (4 + 9) * 2 * 4
    assert flops.attention_flops([2, 3], 2, 4, "fwd_bwd") == 3.5 * flops.attention_flops([2, 3], 2, 4)
    with pytest.raises(ValueError, match="pass_"):
        flops.attention_flops([1], 1, 1, "sideways")
    assert flops.gpu_limits("NVIDIA H100 80GB HBM3")["copy_bytes_per_s"] == 3.0e12
    assert flops.gpu_limits("Tesla T4") is None


@pytest.mark.parametrize("seqlens,offsets", [([5, 1, 9, 3], [0, 2, 4]), ([7], [0, 1]), ([2, 2, 2], [0, 3])])
def test_padded_masked_pool_matches_float64(seqlens, offsets):
    gen = torch.Generator().manual_seed(0)
    k, v = (torch.randn(sum(seqlens), 3, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    query = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(padded_masked_pool(query, k, v, seqlens, offsets), reference_pool(query, k, v, cu_from(seqlens), 1.0))


def test_nested_sdpa_matches_per_sample_attention():
    seqlens = [4, 1, 6]
    x = torch.randn(sum(seqlens), 2, 8, dtype=torch.float64)
    out, start = [], 0
    for n in seqlens:
        s = x[start:start + n].transpose(0, 1)
        out.append(F.scaled_dot_product_attention(s, s, s, scale=0.5).transpose(0, 1))
        start += n
    torch.testing.assert_close(nested_sdpa(x, x, x, seqlens, 0.5), torch.cat(out))


def test_unfold_pack_is_frequency_major():
    spec = torch.arange(2 * 32 * 48, dtype=torch.float32).reshape(2, 32, 48)
    patches = unfold_pack([spec], 16)
    assert patches.shape == (2 * 3, 2 * 256)
    for token in range(6):
        f, t = token // 3, token % 3
        expected = spec[:, f * 16:(f + 1) * 16, t * 16:(t + 1) * 16].reshape(-1)
        torch.testing.assert_close(patches[token], expected)


@pytest.mark.parametrize("seed", range(5))
def test_python_best_fit_is_a_valid_tight_partition(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 101, size=300)
    packs = textbook_best_fit_decreasing(lengths.tolist(), 100)
    assert sorted(i for p in packs for i in p) == list(range(300))
    assert all(p.dtype == np.int64 and lengths[p].sum() <= 100 for p in packs)
    assert len(packs) <= 11 / 9 * (-(-lengths.sum() // 100)) + 1  # best-fit-decreasing's bound
    with pytest.raises(ValueError, match=r"lengths\[1\] = 101"):
        textbook_best_fit_decreasing([3, 101], 100)
    with pytest.raises(ValueError, match=r"lengths\[0\] = 0"):
        textbook_best_fit_decreasing([0, 3], 100)


def test_min_padded_tokens_is_a_lower_bound():
    assert min_padded_tokens(np.array([100, 100, 100]), 200) == 2 * 150
    assert min_padded_tokens(np.array([190, 10, 10]), 200) == 2 * 190


def _case(setup):
    return Case("packing", "plan", "v", "voxceleb", {"num_lengths": 3}, setup)


def test_measure_case_checks_the_result_once_and_times_the_rest():
    calls, checked = [], []

    def check(out):
        checked.append(out)
        return {"max_abs_err": 0.0}
    timed = Timed(lambda: calls.append(1) or len(calls), check, rates=lambda s: {"per_s": 1 / s},
                  info={"total_tokens": 7}, memory=False, repeats=4)
    result = measure_case(_case(lambda: timed), tiny_config())
    assert result.status == "ok", result.reason
    assert checked == [1] and len(calls) == 5  # the checked (untimed) call, then 4 timed repeats
    m = result.metrics
    assert m["repeats"] == 4 and m["max_abs_err"] == 0.0 and m["total_tokens"] == 7 and m["per_s"] > 0
    assert result.key == "packing/plan/v/voxceleb[num_lengths=3]"


def test_a_wrong_result_is_an_error_not_a_figure():
    def check(out):
        raise AssertionError("logits vs the sdpa_masked model's: max abs difference 3 > 0.0001 x 1")
    result = measure_case(_case(lambda: Timed(lambda: 1, check, memory=False)), tiny_config())
    assert result.status == "error" and "AssertionError: logits vs the sdpa_masked" in result.reason
    assert result.metrics == {}


def test_an_unavailable_case_is_skipped_with_the_reason():
    def setup():
        raise Unavailable("xformers (pip install xformers) needs a CUDA device, got cpu")
    result = measure_case(_case(setup), tiny_config())
    assert result.status == "skipped" and "needs a CUDA device" in result.reason
