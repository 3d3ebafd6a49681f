"""Property-based tests of both op families against float64 references (hypothesis).

Random varlen batches (empty samples, length 1, lengths off the block size, one long sample among
tiny ones), random head counts, head dims and scales (negative included), on the Triton
interpreter and on the torch path; outputs and gradients.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elasticast_kernels.ops import segment_attention_pool, segment_mean, varlen_attention
from helpers import assert_close, cu_from, reference_attention, reference_mean, reference_pool

# The path fixture only sets an environment variable, the same for every example of a test.
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def check_against_float64(out, inputs, reference) -> None:
    """``out`` and the gradients of ``inputs`` against ``reference`` run on float64 copies."""
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    ref = reference(*leaves)
    assert_close(out, ref, 2e-5, "out")
    if out.numel() == 0:
        return
    dout = torch.randn_like(out)
    out.backward(dout)
    ref.backward(dout.double())
    for name, t, leaf in zip("qkv", inputs, leaves):
        # None: the reference never used the input (every sample empty), so its gradient is zero
        expected = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        assert_close(t.grad, expected, 5e-5, f"d{name}")
lengths_st = st.lists(st.integers(0, 40), min_size=0, max_size=5)
scale_st = st.sampled_from([None, 1.0, 0.1, -0.7])


@pytest.fixture(params=["triton", "torch"])
def path(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return request.param


def _inputs(seed, total, shape, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(total, *shape, generator=gen).requires_grad_(requires_grad) for _ in range(3)]


@SETTINGS
@given(lengths=lengths_st, heads=st.integers(1, 3), head_dim=st.sampled_from([16, 32, 48, 64]),
       scale=scale_st, causal=st.booleans(), seed=st.integers(0, 2**16))
def test_varlen_attention_matches_float64(path, lengths, heads, head_dim, scale, causal, seed):
    cu = cu_from(lengths)
    q, k, v = _inputs(seed, sum(lengths), (heads, head_dim))
    out = varlen_attention(q, k, v, cu, softmax_scale=scale, causal=causal)
    resolved = head_dim ** -0.5 if scale is None else scale
    check_against_float64(out, (q, k, v), lambda *leaves: reference_attention(*leaves, cu, resolved, causal=causal))


side_st = st.one_of(st.just(-1), st.integers(0, 12))


@st.composite
def cross_layout_st(draw):
    """Query and key lengths of one batch: equal (self-attention) or drawn separately."""
    lengths_q = draw(lengths_st)
    if draw(st.booleans()):
        return lengths_q, None
    return lengths_q, draw(st.lists(st.integers(0, 40), min_size=len(lengths_q), max_size=len(lengths_q)))


FEATURES = dict(layout=cross_layout_st(), heads_k=st.integers(1, 2), group=st.integers(1, 3),
                head_dim=st.sampled_from([16, 32, 40, 64]), scale=scale_st, causal=st.booleans(),
                window=st.tuples(side_st, side_st), softcap=st.sampled_from([0.0, 0.0, 1.0, 5.0]),
                seed=st.integers(0, 2**16))


def check_features(layout, heads_k, group, head_dim, scale, causal, window, softcap, seed):
    lengths_q, lengths_k = layout
    cu_q = cu_from(lengths_q)
    cu_k = None if lengths_k is None else cu_from(lengths_k)
    gen = torch.Generator().manual_seed(seed)
    total_k = sum(lengths_q if lengths_k is None else lengths_k)
    q = torch.randn(sum(lengths_q), heads_k * group, head_dim, generator=gen).requires_grad_()
    k, v = (torch.randn(total_k, heads_k, head_dim, generator=gen).requires_grad_() for _ in range(2))
    out = varlen_attention(q, k, v, cu_q, softmax_scale=scale, causal=causal, cu_seqlens_k=cu_k, window_size=window,
                           softcap=softcap)
    resolved = head_dim ** -0.5 if scale is None else scale
    check_against_float64(out, (q, k, v), lambda *leaves: reference_attention(
        *leaves, cu_q, resolved, causal, cu_seqlens_k=cu_k, window=window, softcap=softcap))


@SETTINGS
@given(**FEATURES)
def test_varlen_attention_features_match_float64(path, **example):
    """GQA/MQA, cross-attention, causal, windows and softcap in random combinations."""
    check_features(**example)


@settings(SETTINGS, max_examples=40)
@given(**FEATURES)
def test_varlen_attention_features_match_float64_torch_path_more_examples(torch_cpu_path, **example):
    """The same on the torch path, which is cheap enough for many more combinations."""
    check_features(**example)


@SETTINGS
@given(lengths=lengths_st, heads=st.integers(1, 3), head_dim=st.sampled_from([8, 32, 48]),
       scale=scale_st, shared=st.booleans(), seed=st.integers(0, 2**16))
def test_segment_attention_pool_matches_float64(path, lengths, heads, head_dim, scale, shared, seed):
    cu = cu_from(lengths)
    _, k, v = _inputs(seed, sum(lengths), (heads, head_dim))
    q = torch.randn((heads, head_dim) if shared else (len(lengths), heads, head_dim), requires_grad=True)
    out = segment_attention_pool(q, k, v, cu, softmax_scale=scale)
    resolved = head_dim ** -0.5 if scale is None else scale
    check_against_float64(out, (q, k, v), lambda *leaves: reference_pool(*leaves, cu, resolved))


@SETTINGS
@given(lengths=lengths_st, width=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_segment_mean_matches_float64(path, lengths, width, seed):
    cu = cu_from(lengths)
    x = _inputs(seed, sum(lengths), (width,))[0]
    out = segment_mean(x, cu)
    assert_close(out, reference_mean(x.detach(), cu), 1e-5, "mean")
    if sum(lengths):
        out.backward(torch.ones_like(out))
        counts = [max(n, 1) for n in lengths]
        expected = torch.cat([torch.full((n, width), 1 / c) for n, c in zip(lengths, counts)])
        assert_close(x.grad, expected, 1e-6, "dx")
