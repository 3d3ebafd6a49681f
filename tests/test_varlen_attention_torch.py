"""The torch path of varlen_attention (CPU without the interpreter) against the float64 reference:
every feature and their combinations (GQA/MQA, cross-attention, causal, sliding windows, softcap,
head dims up to 256), edge cases, and how the work is planned (fused runs, masked chunks, the
explicit softcap path).

Gradients come from autograd of ``helpers.reference_attention``; errors are bounded relative to
the reference's largest magnitude (``helpers.assert_close``).
"""
from __future__ import annotations

import itertools

import pytest
import torch

from elasticast_kernels.ops import varlen_attention
from elasticast_kernels.ops import varlen_attention_torch as torch_path
from helpers import assert_close, cu_from, reference_attention

pytestmark = pytest.mark.usefixtures("torch_cpu_path")

TOLERANCE = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}

# (lengths_q, lengths_k or None for self-attention)
LAYOUTS = {
    "self_mixed": ([1, 9, 0, 13, 13, 4], None),  # length 1, an empty sample, a run of two equal lengths
    "equal_run": ([6, 6, 6, 6], None),  # one batch through the fused op
    "cross_q_shorter": ([3, 5, 1, 4], [6, 9, 2, 4]),
    "cross_q_longer": ([7, 2, 6, 6], [3, 2, 0, 4]),  # a sample without keys; rows before any key
}
HEADS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}
MASKS = {  # (causal, window)
    "full": (False, (-1, -1)),
    "causal": (True, (-1, -1)),
    "window": (False, (3, 1)),
    "causal_window": (True, (4, -1)),
    "left_only": (False, (2, -1)),
    "right_only": (False, (-1, 2)),
}


def run_both(lengths_q, lengths_k=None, heads=(2, 2), head_dim=16, dtype=torch.float32, scale=0.5, causal=False,
             window=(-1, -1), softcap=0.0, seed=0):
    """(ours, reference) as lists [out, dq, dk, dv]; ours through the public API."""
    gen = torch.Generator().manual_seed(seed)
    cu_q = cu_from(lengths_q)
    cu_k = None if lengths_k is None else cu_from(lengths_k)
    total_k = sum(lengths_q if lengths_k is None else lengths_k)
    q = torch.randn(sum(lengths_q), heads[0], head_dim, generator=gen).to(dtype)
    k, v = (torch.randn(total_k, heads[1], head_dim, generator=gen).to(dtype) for _ in range(2))
    dout = torch.randn(q.shape, generator=gen).to(dtype)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = varlen_attention(*leaves, cu_q, softmax_scale=scale, causal=causal, cu_seqlens_k=cu_k,
                           window_size=window, softcap=softcap)
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
    resolved = head_dim ** -0.5 if scale is None else scale
    ref = reference_attention(*ref_leaves, cu_q, resolved, causal, cu_seqlens_k=cu_k, window=window, softcap=softcap)
    ours, expected = [out], [ref]
    if out.numel():
        out.backward(dout)
        ref.backward(dout.double())
    for leaf, ref_leaf in zip(leaves, ref_leaves):
        ours.append(leaf.grad if leaf.grad is not None else torch.zeros_like(leaf))
        expected.append(ref_leaf.grad if ref_leaf.grad is not None else torch.zeros_like(ref_leaf))
    return ours, expected


def check(ours, expected, tol):
    assert ours[0].dtype == ours[1].dtype
    for name, actual, reference in zip(("out", "dq", "dk", "dv"), ours, expected):
        assert torch.isfinite(actual).all(), name
        assert_close(actual, reference, tol, name)


@pytest.mark.parametrize("softcap", [0.0, 2.5], ids=["nocap", "softcap"])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_features_and_combinations(layout, heads, mask, softcap):
    lengths_q, lengths_k = LAYOUTS[layout]
    causal, window = MASKS[mask]
    check(*run_both(lengths_q, lengths_k, HEADS[heads], causal=causal, window=window, softcap=softcap),
          TOLERANCE[torch.float32])


@pytest.mark.parametrize("causal, window, softcap", [
    (False, (-1, -1), 0.0), (True, (-1, -1), 0.0), (True, (100, -1), 0.0), (False, (60, 20), 0.0),
    (True, (70, -1), 1.5), (False, (-1, 300), 0.0),
], ids=["full", "causal", "causal_window", "window", "causal_window_softcap", "right_window"])
def test_long_samples_are_chunked(causal, window, softcap):
    """Samples past the chunk sizes (512 query rows; windowed chunks of ~window rows), cross and self."""
    check(*run_both([700, 3], None, (2, 1), head_dim=8, causal=causal, window=window, softcap=softcap),
          TOLERANCE[torch.float32])
    check(*run_both([600], [650], (2, 2), head_dim=8, causal=causal, window=window, softcap=softcap),
          TOLERANCE[torch.float32])


@pytest.mark.parametrize("head_dim", [1, 8, 16, 32, 48, 64, 96, 128, 160, 192, 224, 256])
def test_every_head_dim(head_dim):
    check(*run_both([5, 9], [7, 9], (4, 2), head_dim=head_dim, scale=None, causal=True, window=(4, -1)),
          TOLERANCE[torch.float32])
    check(*run_both([6, 6], None, (2, 1), head_dim=head_dim, scale=head_dim ** -0.5), TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", ["equal_run", "cross_window", "softcap"])
def test_half_precision(dtype, case):
    kwargs = {
        "equal_run": dict(lengths_q=[40, 40, 40], causal=True),
        "cross_window": dict(lengths_q=[9, 30], lengths_k=[20, 11], window=(5, 2)),
        "softcap": dict(lengths_q=[9, 30], causal=True, softcap=4.0),
    }[case]
    ours, expected = run_both(heads=(4, 2), head_dim=32, dtype=dtype, **kwargs)
    check(ours, expected, TOLERANCE[dtype])


@pytest.mark.parametrize("scale", [-0.7, 0.0, -3.0])
@pytest.mark.parametrize("lengths", [[2], [5, 5, 5], [3, 9]], ids=["one", "run", "mixed"])
def test_non_positive_scale_causal(scale, lengths):
    """PyTorch's CPU flash op returns NaN for its own causal mask at scale <= 0 (it scales the
    masked -inf too): those calls must take the mask path and come out right."""
    check(*run_both(lengths, None, (2, 2), scale=scale, causal=True), TOLERANCE[torch.float32])


# --- edge cases ----------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths_q, lengths_k", [
    ([], None), ([0, 0], None), ([0, 0], [3, 0]), ([4, 2], [0, 0]), ([9], [0]), ([3, 3], [0, 0]),
], ids=["batch0", "all_empty", "keys_without_queries", "no_keys", "one_sample_no_keys", "run_without_keys"])
def test_empty_cases(lengths_q, lengths_k):
    """Queries without keys attend to nothing: output 0, every gradient 0."""
    ours, expected = run_both(lengths_q, lengths_k, (2, 1), causal=True)
    check(ours, expected, 0.0)
    for tensor in ours:
        assert not tensor.any()


@pytest.mark.parametrize("window", [(5, 3), (0, 0), (40, -1)])
def test_one_query_per_sample_with_a_window(window):
    """Found by flash-attn's tests: one query per sample against many keys with a window makes a
    single chunk over part of the keys, whose dK/dV must still cover every key."""
    check(*run_both([1, 1, 1, 1], [30, 30, 30, 30], (3, 3), window=window), TOLERANCE[torch.float32])


def test_rows_that_see_no_key_are_zero():
    """Causal with more queries than keys: the first Lq - Lk rows see nothing (flash-attn: 0)."""
    ours, expected = run_both([6], [2], (2, 2), causal=True)
    check(ours, expected, TOLERANCE[torch.float32])
    assert not ours[0][:4].any() and ours[0][4:].abs().sum() > 0


def test_nan_query_that_sees_no_key_gives_zero():
    """A row that sees no key is 0 whatever its query holds (as the reference and the kernels)."""
    q, k, v = torch.randn(6, 2, 16), torch.randn(2, 2, 16), torch.randn(2, 2, 16)
    q[1, 0, 0] = float("nan")  # row 1 of 6 queries on 2 keys, causal: sees nothing
    out = varlen_attention(q, k, v, cu_from([6]), causal=True, cu_seqlens_k=cu_from([2]))
    assert not out[:4].any() and torch.isfinite(out).all()


def test_keys_without_queries_between_runs():
    """A sample with keys but no queries between two equal-length ones breaks the run: its keys
    must not shift the next sample's keys, and get zero gradients."""
    ours, expected = run_both([4, 0, 4], [4, 5, 4], (2, 2), causal=True)
    check(ours, expected, TOLERANCE[torch.float32])
    assert not ours[2][4:9].any() and not ours[3][4:9].any()


def test_strided_and_non_unit_head_dim_stride():
    lengths = [5, 23, 12]
    cu = cu_from(lengths)
    qkv = torch.randn(sum(lengths), 3, 2, 32)
    q, k, v = qkv.unbind(1)
    out = varlen_attention(q, k, v, cu, window_size=(4, 4))
    assert_close(out, reference_attention(q, k, v, cu, 32 ** -0.5, window=(4, 4)), 2e-5, "strided")
    t = [torch.randn(sum(lengths), 32, 2).transpose(1, 2) for _ in range(3)]
    assert_close(varlen_attention(*t, cu, causal=True), reference_attention(*t, cu, 32 ** -0.5, True), 2e-5,
                 "non-unit head_dim stride")


def test_nan_query_row_stays_nan_in_the_fused_path():
    """The CPU flash op zeroes a query row holding a NaN; the path restores it for that token and
    head only (and only the poisoned sample's gradients are non-finite)."""
    lengths = [6, 6, 6]
    cu = cu_from(lengths)
    q, k, v = (torch.randn(18, 2, 16, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        q[8, 1, 3] = float("nan")
    out = varlen_attention(q, k, v, cu)
    assert torch.isnan(out[8, 1]).all()
    nan = torch.isnan(out)
    nan[8, 1] = False
    assert not nan.any(), "the NaN reached another token or head"
    out.sum().backward()
    for grad in (q.grad, k.grad, v.grad):
        assert torch.isfinite(grad[:6]).all() and torch.isfinite(grad[12:]).all()


# --- how the work is planned ----------------------------------------------------------------------

def _plans(lengths_q, lengths_k=None, window=(-1, -1), softcap=0.0, scale=1.0):
    cu_q = cu_from(lengths_q)
    cu_k = cu_q if lengths_k is None else cu_from(lengths_k)
    runs = torch_path._runs(cu_q, cu_k)
    return runs, [torch_path._plan(run, window, softcap, scale, torch.device("cpu")) for run in runs]


def test_equal_lengths_are_one_fused_call(monkeypatch):
    calls = []
    real = torch_path._fused_forward
    monkeypatch.setattr(torch_path, "_fused_forward", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    q, k, v = (torch.randn(4 * 48, 2, 16) for _ in range(3))
    varlen_attention(q, k, v, cu_from([48] * 4), causal=True)
    assert calls == [(4, 2, 48, 16)]
    calls.clear()
    varlen_attention(q, k, v, cu_from([48, 48, 0, 48, 30, 18]))  # an empty sample does not break the run
    assert [shape[0] for shape in calls] == [3, 1, 1]


def test_plan_choices():
    runs, plans = _plans([5, 5, 0, 5, 7])
    assert [(r.count, r.len_q) for r in runs] == [(3, 5), (1, 7)]
    assert all(p.fused and not p.causal and len(p.chunks) == 1 for p in plans)
    _, plans = _plans([5, 5], window=(-1, 0))
    assert plans[0].fused and plans[0].causal and plans[0].chunks[0].visible is None
    _, plans = _plans([5, 5], window=(-1, 0), scale=0.0)
    assert plans[0].fused and not plans[0].causal and plans[0].chunks[0].visible is not None
    _, plans = _plans([3], [5], window=(-1, 0))  # causal across lengths: aligned bottom-right by a mask
    assert plans[0].fused and plans[0].chunks[0].visible is not None
    _, plans = _plans([5], window=(4, 4))  # a window wider than the sample excludes nothing
    assert plans[0].fused and plans[0].chunks[0].visible is None
    _, plans = _plans([5], softcap=1.0)
    assert not plans[0].fused


def test_window_work_is_linear_in_length():
    """For a fixed window the scores computed (rows x keys over all chunks) grow linearly with
    the length, and no chunk's mask is quadratic in it."""
    window = (128, 0)
    work = {}
    for length in (1024, 4096, 16384):
        _, (plan,) = _plans([length], window=window)
        work[length] = sum((c.rows.stop - c.rows.start) * (c.keys.stop - c.keys.start) for c in plan.chunks)
        assert max(c.keys.stop - c.keys.start for c in plan.chunks) <= 2 * (window[0] + 1)
    # affine in the length: the same work per added token between 1k and 4k as between 4k and 16k
    per_token = [(work[b] - work[a]) / (b - a) for a, b in ((1024, 4096), (4096, 16384))]
    assert abs(per_token[1] - per_token[0]) <= 0.01 * per_token[0]
    assert work[16384] <= 16384 * 2 * (window[0] + 1)


def test_full_attention_chunks_bound_the_mask():
    """Masks are built per chunk of at most 512 query rows: memory O(chunk x keys) per call."""
    _, (plan,) = _plans([3000], [5000], window=(-1, 0))
    assert all(c.rows.stop - c.rows.start <= 512 for c in plan.chunks)
    assert len(plan.chunks) == 6


@pytest.mark.parametrize("lengths_q, lengths_k, window", list(itertools.product(
    [[9], [4, 9, 9]], [None, [12, 3, 7]], [(-1, -1), (2, 3), (0, 0), (-1, 0)])))
def test_chunks_cover_exactly_the_visible_keys(lengths_q, lengths_k, window):
    """The chunk key ranges and masks select exactly the reference's visible pairs."""
    from helpers import visible_keys

    if lengths_k is not None and len(lengths_k) != len(lengths_q):
        lengths_k = lengths_k[:len(lengths_q)] + [5] * (len(lengths_q) - len(lengths_k))
    runs, _ = _plans(lengths_q, lengths_k)
    for run in runs:
        left, right = torch_path._effective_window(window, run.len_q, run.len_k)
        chunks = torch_path._chunks(run.len_q, run.len_k, (left, right), torch.device("cpu"))
        got = torch.zeros(run.len_q, run.len_k, dtype=torch.bool)
        for c in chunks:
            block = torch.ones(c.rows.stop - c.rows.start, c.keys.stop - c.keys.start, dtype=torch.bool)
            got[c.rows, c.keys] = block if c.visible is None else c.visible
        assert torch.equal(got, visible_keys(run.len_q, run.len_k, window=window))
