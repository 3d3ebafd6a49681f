"""Property-based tests (hypothesis) of packing: every plan is a partition within capacity and the
native packer equals the Python one, for every strategy; pack_spectrograms is bit-identical to a
plain torch unfold reference for random shapes, dtypes, bit patterns (NaN payloads included) and
plans, on the native and the torch path. Bounded: a few seconds in all."""
from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elasticast_kernels.packing import STRATEGIES, has_native, pack_lengths, pack_order, pack_spectrograms
from helpers import reference_patches

BACKENDS = ["python"] + (["native"] if has_native() else [])
# dtype -> an integer dtype of the same width, to compare bits (NaN == NaN, -0.0 != 0.0)
BIT_VIEWS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float64: torch.int64, torch.int32: torch.int32, torch.uint8: torch.uint8, torch.int64: torch.int64}


@st.composite
def lengths_and_capacity(draw) -> tuple[list[int], int]:
    # Mostly small capacities (the pure-Python histogram's subset sums cost O(capacity)), sometimes
    # the limits (sparse containers in C++).
    max_tokens = draw(st.one_of(st.integers(1, 300), st.sampled_from([2**20, 2**31 - 1])))
    # past max_tokens: samples longer than a pack, each alone in its own
    high = draw(st.sampled_from([max_tokens, max(1, max_tokens // 3), min(2**31 - 1, 2 * max_tokens + 3)]))
    values = st.integers(1, high)
    if draw(st.booleans()):  # few distinct lengths: the histogram's repeated patterns
        values = st.sampled_from(draw(st.lists(values, min_size=1, max_size=3)))
    return draw(st.lists(values, max_size=60)), max_tokens


@settings(max_examples=300, deadline=None)
@given(case=lengths_and_capacity(), strategy=st.sampled_from(STRATEGIES), window=st.integers(1, 50))
def test_every_plan_is_a_partition_within_capacity_and_both_backends_agree(case, strategy, window):
    """Within capacity: every pack holds at most max_tokens tokens, or one sample longer than that."""
    lengths, max_tokens = case
    values = np.asarray(lengths, dtype=np.int64)
    plans = [pack_order(lengths, max_tokens, strategy, window=window, backend=b) for b in BACKENDS]
    order, offsets = plans[0]
    assert sorted(order.tolist()) == list(range(len(lengths)))
    assert offsets[0] == 0 and offsets[-1] == len(lengths) and np.all(np.diff(offsets) > 0)  # no empty pack
    for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        members = order[start:end]
        assert values[members].sum() <= max_tokens or len(members) == 1
        assert np.all(np.diff(members) > 0)  # ascending inside a pack
    for other_order, other_offsets in plans[1:]:
        assert other_order.tolist() == order.tolist() and other_offsets.tolist() == offsets.tolist()


@settings(max_examples=100, deadline=None)
@given(case=lengths_and_capacity(), strategy=st.sampled_from(STRATEGIES))
def test_plan_is_the_same_for_every_form_of_the_lengths(case, strategy):
    lengths, max_tokens = case
    want = pack_order(lengths, max_tokens, strategy)[0].tolist()
    forms = [np.asarray(lengths, dtype=np.int64)[::-1][::-1], torch.tensor(lengths, dtype=torch.int64),
             np.asarray(lengths, dtype=np.float64), tuple(lengths)]
    for form in forms:
        assert pack_lengths(form, max_tokens, strategy).order.tolist() == want


@contextlib.contextmanager
def native_disabled(disabled: bool):
    saved = os.environ.get("ELASTICAST_NO_NATIVE")
    os.environ["ELASTICAST_NO_NATIVE"] = "1" if disabled else "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["ELASTICAST_NO_NATIVE"]
        else:
            os.environ["ELASTICAST_NO_NATIVE"] = saved


def random_bits(generator: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Every bit pattern of `dtype` (NaNs with payloads, infinities, subnormals, -0.0) is possible."""
    width = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (*shape[:-1], shape[-1] * width), dtype=torch.uint8, generator=generator)
    return raw.view(dtype)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(BIT_VIEWS[tensor.dtype])


def unfold_patches(spec: torch.Tensor, p: int, stride: tuple[int, int]) -> torch.Tensor:
    """The unfold reference with a stride (frequency-major, (c, p1, p2) columns)."""
    if stride == (p, p):
        return reference_patches(spec, p)
    windows = spec.unfold(1, p, stride[0]).unfold(2, p, stride[1])
    return windows.permute(1, 2, 0, 3, 4).reshape(-1, spec.shape[0] * p * p)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    patch=st.sampled_from([1, 2, 4, 8, 16]),
    channels=st.integers(1, 3),
    freq_patches=st.integers(1, 4),
    time_patches=st.lists(st.integers(1, 5), min_size=1, max_size=6),
    dtype=st.sampled_from(list(BIT_VIEWS)),
    strategy=st.one_of(st.none(), st.sampled_from(STRATEGIES)),
    slack=st.integers(0, 40),
    use_native=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    stride=st.one_of(st.none(), st.tuples(st.integers(1, 20), st.integers(1, 20))),
    tail=st.integers(0, 19),
)
def test_pack_spectrograms_is_bit_identical_to_an_unfold_reference(
    patch, channels, freq_patches, time_patches, dtype, strategy, slack, use_native, seed, stride, tail
):
    """Any stride (overlapping, gapped or the patch size) and frames that end mid-stride."""
    generator = torch.Generator().manual_seed(seed)
    stride_f, stride_t = stride or (patch, patch)

    def extent(patches: int, step: int) -> int:  # a strided axis may end with frames no patch starts at
        return patch + step * (patches - 1) + (tail % step if step != patch else 0)

    freq = extent(freq_patches, stride_f)
    specs = [random_bits(generator, (channels, freq, extent(t, stride_t)), dtype) for t in time_patches]
    tokens = [freq_patches * t for t in time_patches]
    plan = None if strategy is None else pack_lengths(tokens, max(tokens) + slack, strategy)
    order = list(range(len(specs))) if plan is None else plan.order.tolist()

    with native_disabled(not use_native):
        batch = pack_spectrograms(specs, patch, plan, stride=stride)

    expected = torch.cat([unfold_patches(specs[j], patch, (stride_f, stride_t)) for j in order])
    assert batch.patches.dtype == dtype and batch.patches.shape == expected.shape
    assert torch.equal(bits(batch.patches), bits(expected))
    freq_idx = torch.cat([torch.arange(freq_patches).repeat_interleave(time_patches[j]) for j in order])
    time_idx = torch.cat([torch.arange(time_patches[j]).repeat(freq_patches) for j in order])
    assert torch.equal(batch.freq_idx.long(), freq_idx) and torch.equal(batch.time_idx.long(), time_idx)
    assert batch.cu_seqlens.tolist() == np.concatenate([[0], np.cumsum([tokens[j] for j in order])]).tolist()
    assert batch.sample_index.tolist() == order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pack_spectrograms_with_autograd_matches_the_reference(dtype):
    """The torch path taken when gradients must flow into the spectrograms."""
    generator = torch.Generator().manual_seed(0)
    specs = [torch.randn(2, 8, 4 * t, generator=generator, dtype=dtype).requires_grad_() for t in (3, 1, 2)]
    plan = pack_lengths([2 * t for t in (3, 1, 2)], 8, "best_fit_decreasing")
    batch = pack_spectrograms(specs, 4, plan)
    expected = torch.cat([reference_patches(specs[j], 4) for j in plan.order.tolist()])
    assert torch.equal(batch.patches, expected)
    batch.patches.sum().backward()
    assert all(torch.equal(s.grad, torch.ones_like(s)) for s in specs)
