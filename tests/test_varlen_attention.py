"""Numerics of varlen_attention: output and dq/dk/dv against the float64 padded reference.

Without a GPU these run the Triton kernels in the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), so shapes stay tiny: tens of tokens, 1-2 heads. The interpreter kernels use
16/32-token blocks, so these lengths still cover samples of one partial block, several blocks,
a block boundary exactly, empty samples and length 1. The ``torch_cpu_path`` tests run the same
checks on the plain torch CPU implementation. On a GPU the same tests run the compiled kernels.
"""
from __future__ import annotations

import pytest
import torch

from elasticast_kernels.ops import varlen_attention
from helpers import assert_close, cu_from, reference_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# error bound relative to the reference's largest magnitude (at least 1); fp32 is exact in the
# interpreter (TF32 is not used: the kernels ask for IEEE fp32 products), fp16 rounds P and O
TOLERANCE = {torch.float32: 2e-5 if DEVICE == "cpu" else 1e-4, torch.float16: 1e-2}

LENGTHS = {
    "mixed": [1, 17, 40, 0, 33],  # length 1, an empty sample, lengths off the block size
    "one_sample": [70],
    "block_multiples": [32, 16, 64],  # exact block boundaries (the masked tail is empty)
    "many_tiny": [1, 2, 3, 1, 1, 5, 2, 1, 4, 1, 3, 2],
    "huge_and_tiny": [1, 90, 2, 1],
}


def make_inputs(lengths, heads=2, head_dim=32, dtype=torch.float32, scale_inputs=1.0):
    cu_seqlens = cu_from(lengths, DEVICE)
    total = sum(lengths)
    q, k, v, dout = (torch.randn(total, heads, head_dim, device=DEVICE) for _ in range(4))
    q, k, v = (scale_inputs * x for x in (q, k, v))
    return [x.to(dtype) for x in (q, k, v, dout)] + [cu_seqlens]


def run_with_grads(fn, q, k, v, dout):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), dout))


def check_against_reference(q, k, v, dout, cu_seqlens, softmax_scale=1.0, causal=False, max_seqlen=None, tol=None):
    """Run ours and the float64 reference; compare output and all three gradients."""
    ours = run_with_grads(
        lambda q, k, v: varlen_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale, causal), q, k, v, dout
    )
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    cpu = [x.detach().cpu() for x in (q, k, v, dout)]
    expected = run_with_grads(
        lambda q, k, v: reference_attention(q, k, v, cu_seqlens.cpu(), scale, causal),
        *[x.double() for x in cpu],
    )
    assert ours[0].dtype == q.dtype
    for name, actual, reference in zip(("out", "dq", "dk", "dv"), ours, expected):
        assert torch.isfinite(actual).all(), name
        assert_close(actual.cpu(), reference, tol or TOLERANCE[q.dtype], name)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
def test_matches_reference_fp32(lengths, causal):
    check_against_reference(*make_inputs(lengths), softmax_scale=1.0, causal=causal)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lengths", ["mixed", "huge_and_tiny"])
def test_matches_reference_fp16(lengths, causal):
    check_against_reference(*make_inputs(LENGTHS[lengths], dtype=torch.float16), softmax_scale=1.0, causal=causal)


@pytest.mark.parametrize("softmax_scale", [None, 1.0, 0.3, -0.7, 0.0])
def test_softmax_scale(softmax_scale):
    """Negative scales take the kernels' min-based row extreme (max(c * s) = c * min(s) for c < 0)."""
    check_against_reference(*make_inputs(LENGTHS["mixed"]), softmax_scale=softmax_scale)


@pytest.mark.parametrize("lengths", ["one_sample", "huge_and_tiny"])
def test_negative_scale_causal(lengths):
    check_against_reference(*make_inputs(LENGTHS[lengths]), softmax_scale=-0.5, causal=True)


@pytest.mark.parametrize("lengths", [[5, 40, 0, 40, 1], [], [0, 0], [7]], ids=["ties", "batch0", "empty", "one"])
def test_longest_first_schedule(lengths):
    """The device-side launch order: samples by decreasing length, ties in sample order, and the
    cumulative lengths in that order (what the kernels bisect)."""
    from elasticast_kernels.ops._common import longest_first

    order, order_cu = longest_first(cu_from(lengths))
    expected = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    assert order.dtype == order_cu.dtype == torch.int32
    assert order.tolist() == expected
    assert order_cu.tolist() == cu_from([lengths[i] for i in expected]).tolist()


@pytest.mark.parametrize("head_dim", [32, 64, 128, 48, 16])
def test_head_dims(head_dim):
    """32/64/128 run natively; 48 and 16 are zero-padded to the next kernel head_dim."""
    check_against_reference(*make_inputs([9, 30], heads=1, head_dim=head_dim), softmax_scale=None)


# The interpreter warns when exp2 overflows in rows past a sample's end, which the kernels mask out
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")
@pytest.mark.parametrize("softmax_scale", [1.0, -1.0], ids=["scale1", "negative"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_large_scores_stay_finite(causal, softmax_scale):
    """Unscaled scores in the thousands (ElasticAST's softmax_scale=1.0): the fp32 log2-domain
    online softmax must neither overflow nor lose the small probabilities. The tolerance is the
    conditioning of fp32 itself: a score near 1000 carries an absolute error near 1e-4, and so
    does every probability computed from it (any fp32 implementation shares this). With a
    negative scale the row max of the scaled scores comes from the smallest raw score: taking
    the largest would overflow exp2 here."""
    q, k, v, dout, cu_seqlens = make_inputs([20, 35, 7], scale_inputs=8.0)
    check_against_reference(q, k, v, dout, cu_seqlens, softmax_scale=softmax_scale, causal=causal, tol=5e-4)


def test_max_seqlen_is_only_a_hint():
    """A given max_seqlen (right or not) only selects the autotuning bucket."""
    inputs = make_inputs(LENGTHS["mixed"])
    check_against_reference(*inputs, max_seqlen=40)
    check_against_reference(*inputs, max_seqlen=4096)


def test_strided_qkv_views():
    """q, k, v as views into one fused [total, 3, heads, head_dim] projection (token stride 3x)."""
    lengths = [5, 23, 12]
    cu_seqlens = cu_from(lengths, DEVICE)
    qkv = torch.randn(sum(lengths), 3, 2, 32, device=DEVICE)
    q, k, v = qkv.unbind(1)
    dout = torch.randn_like(q)
    assert q.stride(0) == 3 * 2 * 32
    check_against_reference(q, k, v, dout, cu_seqlens)


def test_non_unit_head_dim_stride():
    lengths = [6, 11]
    cu_seqlens = cu_from(lengths, DEVICE)
    q, k, v = (torch.randn(sum(lengths), 32, 2, device=DEVICE).transpose(1, 2) for _ in range(3))
    check_against_reference(q, k, v, torch.randn_like(q), cu_seqlens)


@pytest.mark.parametrize("lengths", [[], [0, 0, 0]], ids=["batch0", "all_empty"])
def test_empty_batch(lengths):
    q, k, v, dout, cu_seqlens = make_inputs(lengths)
    out, dq, dk, dv = run_with_grads(lambda q, k, v: varlen_attention(q, k, v, cu_seqlens), q, k, v, dout)
    assert out.shape == (0, 2, 32) and out.dtype == q.dtype
    assert dq.shape == dk.shape == dv.shape == (0, 2, 32)


def test_samples_do_not_interact():
    """Changing one sample's keys/values leaves every other sample's output unchanged (exactly)."""
    q, k, v, _, cu_seqlens = make_inputs([12, 20, 9])
    before = varlen_attention(q, k, v, cu_seqlens)
    k2, v2 = k.clone(), v.clone()
    k2[12:32] += 3.0
    v2[12:32] -= 1.0
    after = varlen_attention(q, k2, v2, cu_seqlens)
    assert torch.equal(before[:12], after[:12]) and torch.equal(before[32:], after[32:])
    assert not torch.equal(before[12:32], after[12:32])


def test_deterministic():
    q, k, v, dout, cu_seqlens = make_inputs(LENGTHS["mixed"])
    first = run_with_grads(lambda q, k, v: varlen_attention(q, k, v, cu_seqlens), q, k, v, dout)
    second = run_with_grads(lambda q, k, v: varlen_attention(q, k, v, cu_seqlens), q, k, v, dout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_bf16_cpu_takes_the_torch_path():
    """bf16 on CPU runs the torch path even under the interpreter (which gets bf16 wrong)."""
    q, k, v, dout, cu_seqlens = (x.cpu() for x in make_inputs([5, 20], dtype=torch.bfloat16))
    ours = run_with_grads(lambda q, k, v: varlen_attention(q, k, v, cu_seqlens), q, k, v, dout)
    expected = run_with_grads(
        lambda q, k, v: reference_attention(q, k, v, cu_seqlens, 32 ** -0.5),
        *[x.double() for x in (q, k, v, dout)],
    )
    for name, actual, reference in zip(("out", "dq", "dk", "dv"), ours, expected):
        assert_close(actual, reference, 3e-2, name)


# --- the plain torch CPU path (what models use on machines without a GPU) -------------------------


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_torch_cpu_path_matches_reference(torch_cpu_path, dtype, causal):
    q, k, v, dout, cu_seqlens = (x.cpu() for x in make_inputs(LENGTHS["mixed"], dtype=dtype))
    ours = run_with_grads(lambda q, k, v: varlen_attention(q, k, v, cu_seqlens, causal=causal), q, k, v, dout)
    expected = run_with_grads(
        lambda q, k, v: reference_attention(q, k, v, cu_seqlens, 32 ** -0.5, causal),
        *[x.double() for x in (q, k, v, dout)],
    )
    tol = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    for name, actual, reference in zip(("out", "dq", "dk", "dv"), ours, expected):
        assert actual.dtype == dtype
        assert_close(actual, reference, tol, name)


def test_torch_cpu_path_long_sample_is_chunked(torch_cpu_path):
    """A sample longer than the torch path's query chunk (512 rows) gives the same result."""
    q, k, v, dout, cu_seqlens = (x.cpu() for x in make_inputs([700, 3], heads=1, head_dim=16))
    ours = run_with_grads(lambda q, k, v: varlen_attention(q, k, v, cu_seqlens, causal=True), q, k, v, dout)
    expected = run_with_grads(
        lambda q, k, v: reference_attention(q, k, v, cu_seqlens, 16 ** -0.5, True),
        *[x.double() for x in (q, k, v, dout)],
    )
    for name, actual, reference in zip(("out", "dq", "dk", "dv"), ours, expected):
        assert_close(actual, reference, 1e-5, name)


# --- autotune hygiene (checked at import; the rule must hold for every candidate) ------------------


@pytest.mark.parametrize("kernel, tile, warps, message", [
    ("dkdv", (32, 64), 8, r"rows >= 16 \* num_warps"),  # 64 keys per program over 8 warps: 1.5x MMA
    ("fwd", (64, 64), 8, r"rows >= 16 \* num_warps"),  # 2x MMA on sm_80
    ("dkdv", (16, 64), 4, r"per-step block >= 32"),  # 1.5x dK/dV MMA on sm_80
    ("fwd", (64, 128), 4, "multiple of the per-step block"),
])
def test_tile_rules_reject_bad_candidates(kernel, tile, warps, message):
    from elasticast_kernels.ops.varlen_attention_kernels import _check_tile, _config

    with pytest.raises(ValueError, match=message):
        _check_tile(kernel, _config(*tile, warps, 2), gpu=True)



@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy
def test_row_whose_scores_are_all_minus_inf_is_nan():
    """Causal row 0 sees one key; an inf in q makes that score -inf: the softmax is 0/0 and the
    output must say so (NaN), not come back as a silent 0 like a padding row."""
    q, k, v, _, cu_seqlens = make_inputs([3, 20])
    q[3, 0, 0], k[3, 0, 0] = float("inf"), -1.0  # sample 1, first token, head 0
    out = varlen_attention(q, k, v, cu_seqlens, softmax_scale=1.0, causal=True)
    assert torch.isnan(out[3, 0]).all()
    assert torch.isfinite(out[:3]).all() and torch.isfinite(out[4:]).all() and torch.isfinite(out[3, 1]).all()
