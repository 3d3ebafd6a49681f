"""Non-finite inputs through both op families, forward and backward, on both paths.

A NaN/inf in one sample must make that sample's output non-finite (never a silent finite value)
and must never reach another sample's output or gradients. Hostile scalar arguments get a clear
error instead of a quiet wrong answer.
"""
from __future__ import annotations

import pytest
import torch

from elasticast_kernels.ops import segment_attention_pool, varlen_attention
from helpers import cu_from, reference_attention

LENGTHS = [5, 40, 3, 17]  # sample 1 spans several blocks under the interpreter


def _spans(lengths):
    bounds = cu_from(lengths).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


@pytest.fixture(params=["triton", "torch"])
def path(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return request.param


@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen_attention_non_finite_stays_in_its_sample(path, where, bad, causal):
    cu = cu_from(LENGTHS)
    q, k, v = (torch.randn(sum(LENGTHS), 2, 32, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        {"q": q, "k": k, "v": v}[where][5, 1, 7] = bad  # the first token of sample 1
        if bad == float("inf"):
            {"q": q, "k": k, "v": v}[where][5, 1, 8] = -bad  # inf - inf: NaN whatever the weights
    out = varlen_attention(q, k, v, cu, softmax_scale=1.0, causal=causal)
    spans = _spans(LENGTHS)
    a, b = spans[1]
    assert not torch.isfinite(out[a:b]).all(), "the poisoned sample came back finite"
    clean = torch.cat([out[s:e] for i, (s, e) in enumerate(spans) if i != 1])
    assert torch.isfinite(clean).all(), "a non-finite value reached another sample"
    clean.sum().backward()
    for name, t in (("q", q), ("k", k), ("v", v)):
        grad = torch.cat([t.grad[s:e] for i, (s, e) in enumerate(spans) if i != 1])
        assert torch.isfinite(grad).all(), f"d{name} of the clean samples is not finite"


LENGTHS_K = [7, 33, 2, 20]  # cross-attention: other key lengths per sample


@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("features", [
    dict(causal=True, window=(6, -1), softcap=0.0, cross=False),
    dict(causal=False, window=(3, 3), softcap=4.0, cross=True),
    dict(causal=True, window=(-1, -1), softcap=0.0, cross=True),
], ids=["gqa_causal_window", "gqa_cross_window_softcap", "gqa_cross_causal"])
def test_non_finite_stays_in_its_sample_with_features(path, where, bad, features):
    """GQA (4 query heads on 2 key heads), cross lengths, windows, softcap: a NaN/inf in sample
    1 reaches no other sample, forward or backward, and leaves sample 1 non-finite."""
    lengths_k = LENGTHS_K if features["cross"] else LENGTHS
    cu_q, cu_k = cu_from(LENGTHS), cu_from(lengths_k)
    q = torch.randn(sum(LENGTHS), 4, 32, requires_grad=True)
    k, v = (torch.randn(sum(lengths_k), 2, 32, requires_grad=True) for _ in range(2))
    target = {"q": q, "k": k, "v": v}[where]
    first = 5 if where == "q" else lengths_k[0]  # the first token of sample 1
    with torch.no_grad():
        target[first + 10, 1, 7] = bad  # token 10 of sample 1: it sees keys, and queries see it
        if bad == float("inf"):
            target[first + 10, 1, 8] = -bad
    out = varlen_attention(q, k, v, cu_q, softmax_scale=1.0, causal=features["causal"],
                           cu_seqlens_k=cu_k if features["cross"] else None, window_size=features["window"],
                           softcap=features["softcap"])
    spans_q, spans_k = _spans(LENGTHS), _spans(lengths_k)
    a, b = spans_q[1]
    assert not torch.isfinite(out[a:b]).all(), "the poisoned sample came back finite"
    clean = torch.cat([out[s:e] for i, (s, e) in enumerate(spans_q) if i != 1])
    assert torch.isfinite(clean).all(), "a non-finite value reached another sample"
    clean.sum().backward()
    for name, t, spans in (("q", q, spans_q), ("k", k, spans_k), ("v", v, spans_k)):
        grad = torch.cat([t.grad[s:e] for i, (s, e) in enumerate(spans) if i != 1])
        assert torch.isfinite(grad).all(), f"d{name} of the clean samples is not finite"


def test_varlen_attention_loss_of_a_poisoned_sample_is_not_finite(path):
    cu = cu_from(LENGTHS)
    q, k, v = (torch.randn(sum(LENGTHS), 2, 32, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        k[20, 0, 0] = float("nan")
    loss = varlen_attention(q, k, v, cu, softmax_scale=1.0).sum()
    assert not torch.isfinite(loss)
    loss.backward()
    assert not torch.isfinite(k.grad[5:45]).all()  # the poisoned sample's gradients show it


def test_pool_loss_of_a_poisoned_sample_is_not_finite(path):
    """The 0.1.0 bug: a NaN key made the sample look empty (sum of exp > 0 is False for NaN) and
    its output a finite zero, so the loss stayed finite while the parameters got NaN gradients."""
    cu = cu_from(LENGTHS)
    q = torch.randn(2, 32, requires_grad=True)
    k, v = (torch.randn(sum(LENGTHS), 2, 32, requires_grad=True) for _ in range(2))
    with torch.no_grad():
        k[20, 0, 0] = float("nan")
    loss = segment_attention_pool(q, k, v, cu, softmax_scale=1.0).sum()
    assert not torch.isfinite(loss)


@pytest.mark.parametrize("scale,error", [
    (float("nan"), ValueError), (float("inf"), ValueError), (-float("inf"), ValueError),
    ("0.5", TypeError), (torch.tensor(0.5), TypeError), (True, TypeError), (1 + 2j, TypeError),
])
def test_bad_softmax_scale_is_refused_by_both_ops(scale, error):
    cu = cu_from([3, 4])
    q, k, v = (torch.randn(7, 2, 32) for _ in range(3))
    with pytest.raises(error, match="softmax_scale"):
        varlen_attention(q, k, v, cu, softmax_scale=scale)
    with pytest.raises(error, match="softmax_scale"):
        segment_attention_pool(q[0], k, v, cu, softmax_scale=scale)


def test_negative_scale_is_legal(path):
    cu = cu_from([3, 4])
    q, k, v = (torch.randn(7, 2, 32) for _ in range(3))
    out = varlen_attention(q, k, v, cu, softmax_scale=-0.5)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu, -0.5), atol=2e-5, rtol=2e-5)
