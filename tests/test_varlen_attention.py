"""Numerics of varlen attention: output, log-sum-exp and dq/dk/dv against a float64 reference.

Two levels. The op (`varlen_attention`, self-attention) on random varlen batches; and the kernels'
launchers directly (`varlen_attention_forward` / `_backward`), for every feature and their
combinations: grouped heads (GQA/MQA), cross-attention offsets (different lengths, 0 keys, 0
queries), sliding windows with or without causal, softcap, head_dim 32/64/128/256; at the small
interpreter tiles and at every GPU autotune candidate's tiles (`fixed_launch`); and the blocks
each program visits (linear in the length for a fixed window).

Without a GPU these run the Triton kernels in the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), so shapes stay tiny: tens of tokens, 1-4 heads. The interpreter kernels use
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


# --- the launchers: every feature, at the interpreter tiles and at the GPU candidates' tiles ------

from elasticast_kernels.ops import varlen_attention_kernels as kernels  # noqa: E402
from elasticast_kernels.ops._common import LOG2E, longest_first  # noqa: E402
from helpers import visible_keys  # noqa: E402

# the interpreter's numpy warns on exp2 overflow / inf arithmetic in masked-out lanes
launcher_warnings = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def launch(q, k, v, dout, cu_q, cu_k, scale, causal=False, window=(-1, -1), softcap=0.0):
    """Forward and backward through the launchers; schedules built as the op builds them."""
    schedule_q, schedule_k = longest_first(cu_q), longest_first(cu_k)
    out, lse = kernels.varlen_attention_forward(q, k, v, cu_q, cu_k, schedule_q, 64, scale, causal, window, softcap)
    grads = kernels.varlen_attention_backward(dout, q, k, v, out, lse, cu_q, cu_k, schedule_q, schedule_k, 64, scale,
                                              causal, window, softcap)
    return (out, lse, *grads)


def reference_lse2(q, k, cu_q, cu_k, scale, causal, window, softcap):
    """float64 ``[heads, total_q]``: log2 of each row's softmax denominator (scale folded in), +inf
    for a row that sees no key (the kernels' contract)."""
    group = q.shape[1] // k.shape[1]
    lse = torch.full((q.shape[1], q.shape[0]), float("inf"), dtype=torch.float64)
    bq, bk = cu_q.tolist(), cu_k.tolist()
    for (q0, q1), (k0, k1) in zip(zip(bq[:-1], bq[1:]), zip(bk[:-1], bk[1:])):
        scores = q[q0:q1].double().transpose(0, 1) @ k[k0:k1].double().repeat_interleave(group, 1).permute(1, 2, 0)
        scores = scores * scale
        if softcap > 0:
            scores = softcap * torch.tanh(scores / softcap)
        visible = visible_keys(q1 - q0, k1 - k0, causal, window)
        rows = torch.logsumexp(scores.masked_fill(~visible, float("-inf")), -1) * LOG2E
        lse[:, q0:q1] = torch.where(visible.any(-1), rows, torch.full_like(rows, float("inf")))
    return lse


def check_launchers(lengths_q, lengths_k=None, heads=2, heads_k=None, head_dim=32, dtype=torch.float32,
                    scale=0.5, causal=False, window=(-1, -1), softcap=0.0, tol=None):
    """Launch on random inputs and compare out, lse, dq, dk, dv with the float64 reference."""
    cu_q = cu_from(lengths_q, DEVICE)
    cu_k = cu_q if lengths_k is None else cu_from(lengths_k, DEVICE)  # the same object: self-attention
    heads_k = heads if heads_k is None else heads_k
    total_q, total_k = sum(lengths_q), int(cu_k[-1])
    q, dout = (torch.randn(total_q, heads, head_dim, device=DEVICE).to(dtype) for _ in range(2))
    k, v = (torch.randn(total_k, heads_k, head_dim, device=DEVICE).to(dtype) for _ in range(2))
    out, lse, dq, dk, dv = launch(q, k, v, dout, cu_q, cu_k, scale, causal, window, softcap)
    leaves = [x.detach().cpu().double().requires_grad_() for x in (q, k, v)]
    expected = reference_attention(*leaves, cu_q.cpu(), scale, causal, cu_seqlens_k=cu_k.cpu(), window=window,
                                   softcap=softcap)
    if expected.numel():
        expected_grads = torch.autograd.grad(expected, leaves, dout.cpu().double())
    else:  # nothing attends: no gradient anywhere
        expected_grads = [torch.zeros_like(x) for x in leaves]
    tol = tol or TOLERANCE[dtype]
    assert out.dtype == dtype and dk.shape == k.shape and dv.shape == v.shape and dq.shape == q.shape
    for name, actual, reference in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), (expected, *expected_grads)):
        assert torch.isfinite(actual).all(), name
        assert_close(actual.cpu(), reference, tol, name)
    expected_lse = reference_lse2(q.cpu(), k.cpu(), cu_q.cpu(), cu_k.cpu(), scale, causal, window, softcap)
    lse = lse[:, :total_q].cpu().double()
    assert torch.equal(torch.isinf(lse), torch.isinf(expected_lse)), "rows without keys must have lse = +inf"
    finite = torch.isfinite(expected_lse)
    assert_close(lse[finite], expected_lse[finite], tol, "lse")


MIXED_Q, MIXED_K = [1, 17, 40, 0, 33, 6], [3, 40, 17, 5, 0, 6]  # Lq < Lk, Lq > Lk, 0 queries, 0 keys, equal
SCENARIOS = {
    "gqa": dict(lengths_q=LENGTHS["mixed"], heads=4, heads_k=2),
    "mqa_causal": dict(lengths_q=LENGTHS["huge_and_tiny"], heads=3, heads_k=1, causal=True),
    "cross": dict(lengths_q=MIXED_Q, lengths_k=MIXED_K),
    "cross_causal": dict(lengths_q=MIXED_Q, lengths_k=MIXED_K, causal=True),  # bottom-right: rows with no key
    "window_causal": dict(lengths_q=LENGTHS["mixed"], window=(7, 0)),
    "window_causal_flag": dict(lengths_q=LENGTHS["mixed"], window=(7, 5), causal=True),  # causal forces right = 0
    "window_both": dict(lengths_q=LENGTHS["mixed"], window=(5, 3)),
    "window_left_only": dict(lengths_q=LENGTHS["huge_and_tiny"], window=(9, -1)),
    "window_right_only": dict(lengths_q=LENGTHS["huge_and_tiny"], window=(-1, 6)),
    "window_self_only": dict(lengths_q=LENGTHS["many_tiny"] + [20], window=(0, 0)),
    "window_cross": dict(lengths_q=MIXED_Q, lengths_k=MIXED_K, window=(4, 2)),  # windows past the keys: no key
    "softcap": dict(lengths_q=LENGTHS["mixed"], scale=1.0, softcap=2.0),  # saturating tanh
    "softcap_causal_negative_scale": dict(lengths_q=LENGTHS["mixed"], scale=-0.7, softcap=5.0, causal=True),
    "all": dict(lengths_q=MIXED_Q, lengths_k=MIXED_K, heads=4, heads_k=2, window=(6, 2), softcap=3.0),
    "all_causal": dict(lengths_q=MIXED_Q, lengths_k=MIXED_K, heads=4, heads_k=1, window=(6, 0), causal=True,
                       softcap=3.0),
    "huge_window_sample": dict(lengths_q=[1, 150, 2, 1], window=(16, 0)),
    "window_wider_than_samples": dict(lengths_q=LENGTHS["mixed"], window=(1000, 1000)),
}


@launcher_warnings
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_launchers_fp32(scenario):
    check_launchers(**SCENARIOS[scenario])


@launcher_warnings
@pytest.mark.parametrize("scenario", ["all", "cross_causal", "window_both", "softcap"])
def test_launchers_fp16(scenario):
    check_launchers(**SCENARIOS[scenario], dtype=torch.float16)


@launcher_warnings
@pytest.mark.parametrize("head_dim", kernels.KERNEL_HEAD_DIMS)
def test_launchers_head_dims(head_dim):
    check_launchers(lengths_q=[9, 30], lengths_k=[14, 25], heads=2, heads_k=1, head_dim=head_dim, window=(6, 2),
                    softcap=3.0, scale=head_dim ** -0.5)


@launcher_warnings
@pytest.mark.parametrize("lengths_q, lengths_k", [([], []), ([0, 0], [3, 4]), ([3, 4], [0, 0]), ([0, 5], [2, 0])],
                         ids=["batch0", "no_queries", "no_keys", "disjoint"])
def test_launchers_empty(lengths_q, lengths_k):
    """No query, no key, or no sample: zeros (and lse = +inf), never garbage or a launch error."""
    check_launchers(lengths_q=lengths_q, lengths_k=lengths_k, heads=2, heads_k=1, causal=True)


@launcher_warnings
def test_structural_zero_vs_data_nan():
    """Rows that see no key (a window past the keys) give 0 and lse = +inf; a row that sees keys whose
    scores are all -inf because of its data gives NaN, as today."""
    cu_q, cu_k = cu_from([6], DEVICE), cu_from([3], DEVICE)
    q, dout = (torch.randn(6, 1, 32, device=DEVICE) for _ in range(2))
    k, v = (torch.randn(3, 1, 32, device=DEVICE) for _ in range(2))
    q[5, 0, 0], k[:, 0, 0] = float("inf"), -1.0  # the last row sees every key (causal, bottom-right): all -inf
    out, lse, *_ = launch(q, k, v, dout, cu_q, cu_k, 1.0, causal=True)
    assert torch.equal(out[:3], torch.zeros_like(out[:3])) and torch.isinf(lse[0, :3]).all() and (lse[0, :3] > 0).all()
    assert torch.isfinite(out[3:5]).all()
    assert torch.isnan(out[5]).all()


def test_launcher_rejects_bad_heads_and_window():
    cu = cu_from([4])
    q, k = torch.randn(4, 3, 32), torch.randn(4, 2, 32)
    with pytest.raises(ValueError, match="multiple of k's heads"):
        kernels.varlen_attention_forward(q, k, k, cu, cu, longest_first(cu), 4, 1.0, False, (-1, -1), 0.0)
    for window, error in (((-2, 0), ValueError), ((0, 1.5), TypeError), ((True, 0), TypeError)):
        with pytest.raises(error, match="window"):
            kernels.varlen_attention_forward(q, q, q, cu, cu, longest_first(cu), 4, 1.0, False, window, 0.0)


def _gpu_tile_sets():
    """Every distinct set of (fwd, dkdv, dq) tiles the GPU candidate lists hold (both arch families,
    both feature classes), per head_dim: the i-th candidate of each kernel (the last one where a
    list is shorter). The interpreter ignores warps and stages, so tiles alone tell sets apart;
    each set keeps the configs of every arch family that has it (a GPU runs its own family's)."""
    sets = {}
    for family in (80, 90):
        for head_dim in kernels.KERNEL_HEAD_DIMS:
            for heavy in (False, True):
                lists = {name: kernels.gpu_configs(name, head_dim, family, heavy) for name in ("fwd", "dkdv", "dq")}
                for i in range(max(len(c) for c in lists.values())):
                    chosen = {name: configs[min(i, len(configs) - 1)] for name, configs in lists.items()}
                    key = f"d{head_dim}-" + "-".join(f"{name}{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}"
                                                     for name, c in chosen.items())
                    sets.setdefault(key, {}).setdefault(family, (head_dim, chosen))
    return sets


GPU_TILE_SETS = _gpu_tile_sets()


@launcher_warnings
@pytest.mark.parametrize("key", list(GPU_TILE_SETS))
def test_launchers_at_gpu_tiles(key):
    """The GPU candidates' tiles run under the interpreter with every feature at once: samples longer
    than a 128-token tile, ragged tails, grouped heads, cross offsets, a window bounded on both
    sides (the right bound also reorders the query blocks) and softcap."""
    families = GPU_TILE_SETS[key]
    if DEVICE == "cuda":
        family = kernels.arch_family(torch.cuda.get_device_capability())
        if family not in families:
            pytest.skip(f"tiles of sm_{next(iter(families))} candidates only (their shared memory may not fit here)")
        head_dim, configs = families[family]
    else:
        head_dim, configs = next(iter(families.values()))
    with kernels.fixed_launch(configs):
        check_launchers(lengths_q=[1, 200, 37], lengths_k=[9, 170, 60], heads=2, heads_k=1, head_dim=head_dim,
                        scale=head_dim ** -0.5, window=(40, 8), softcap=3.0)


# --- loop bounds: the blocks each program visits ------------------------------------------------


def _recorded_trips(lengths_q, lengths_k, window, heads=2, heads_k=1, configs=None):
    cu_q, cu_k = cu_from(lengths_q, DEVICE), cu_from(lengths_k, DEVICE)
    q, dout = (torch.randn(sum(lengths_q), heads, 32, device=DEVICE) for _ in range(2))
    k, v = (torch.randn(sum(lengths_k), heads_k, 32, device=DEVICE) for _ in range(2))
    with kernels.fixed_launch(configs or kernels.INTERPRETER_CONFIGS, count_trips=True) as trips:
        launch(q, k, v, dout, cu_q, cu_k, 0.5, window=window)
    return trips


def _expected_trips(kernel, lengths_q, lengths_k, window, heads=2, heads_k=1, configs=None):
    """program_trips over every block of every sample and head (the kernels record per program)."""
    config = (configs or kernels.INTERPRETER_CONFIGS)[kernel]
    bm, bn = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    own, lengths = (bn, lengths_k) if kernel == "dkdv" else (bm, lengths_q)
    copies = heads_k if kernel == "dkdv" else heads
    group = heads // heads_k if kernel == "dkdv" else 1
    trips = [group * kernels.program_trips(kernel, lq, lk, b, bm, bn, window)
             for lq, lk, n in zip(lengths_q, lengths_k, lengths) for b in range(-(-n // own))]
    return sorted(trips * copies)


@launcher_warnings
@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (20, 0), (7, 11), (9, -1)], ids=str)
def test_recorded_trips_match_program_trips(window):
    """The kernels' own trip counts (TRIPS) equal `program_trips`, the Python twin of their loop
    bounds that the static report's trip tables and grid simulation use."""
    lengths_q, lengths_k = [1, 70, 40, 0, 33, 9], [3, 50, 40, 5, 0, 64]
    trips = _recorded_trips(lengths_q, lengths_k, window)
    for kernel in ("fwd", "dkdv", "dq"):
        recorded = trips[kernel]
        assert sorted(recorded[recorded >= 0].tolist()) == _expected_trips(kernel, lengths_q, lengths_k, window), kernel


@launcher_warnings
def test_window_cost_is_linear_in_length():
    """A fixed causal window: every program visits at most a constant number of blocks, so doubling
    the length doubles the total; full causal attention quadruples it."""
    window, totals, worst = (24, 0), {}, {}
    for length in (128, 256):
        trips = _recorded_trips([length], [length], window, heads=1)
        for kernel in ("fwd", "dkdv", "dq"):
            visited = trips[kernel][trips[kernel] >= 0]
            totals[kernel, length], worst[kernel, length] = int(visited.sum()), int(visited.max())
    for kernel in ("fwd", "dkdv", "dq"):
        assert worst[kernel, 256] == worst[kernel, 128], kernel
        assert totals[kernel, 256] <= 2 * totals[kernel, 128] + worst[kernel, 128], kernel
    block = kernels.INTERPRETER_CONFIGS["fwd"].kwargs["BLOCK_M"]
    causal = [sum(kernels.program_trips("fwd", n, n, b, block, 16, (-1, 0)) for b in range(n // block))
              for n in (128, 256)]
    assert causal[1] >= 3.5 * causal[0]


def test_program_trips_at_the_default_gpu_tile():
    """At the default sm_90 forward tile, a (256, 0) window visits at most 7 key blocks per program
    (4 unmasked + the masked edges) however long the sample."""
    config = kernels.gpu_configs("fwd", 64, 90)[0]
    bm, bn = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    for length in (1024, 16384):
        trips = [kernels.program_trips("fwd", length, length, b, bm, bn, (256, 0)) for b in range(length // bm)]
        assert max(trips) <= (256 + bm) // bn + 1
    with pytest.raises(ValueError, match="kernel"):
        kernels.program_trips("bwd", 10, 10, 0, 16, 16)
    with pytest.raises(ValueError, match="out of range"):
        kernels.program_trips("fwd", 10, 10, 1, 16, 16)
