"""segment_attention_pool and segment_mean against float64 references (Triton interpreter on CPU).

Shapes stay small: every case runs the Triton kernels in the interpreter. The interpreter splits
samples into chunks of 64 tokens, so lengths above 64 exercise the split-K merge.
"""
import math

import pytest
import torch

from elasticast_kernels.ops.segment_pool import segment_attention_pool, segment_mean
from helpers import assert_close, cu_from, reference_mean, reference_pool

LENGTHS = {
    "mixed": [1, 37, 100, 5],  # length 1 and multi-chunk samples
    "unequal": [130, 2, 1, 128],  # very unequal, one exactly 2 chunks long
}
TOL = {torch.float32: 2e-5, torch.float16: 4e-3}


def make_inputs(lengths, heads, head_dim, dtype, shared_query):
    total = sum(lengths)
    k = torch.randn(total, heads, head_dim, dtype=dtype, requires_grad=True)
    v = torch.randn(total, heads, head_dim, dtype=dtype, requires_grad=True)
    q_shape = (heads, head_dim) if shared_query else (len(lengths), heads, head_dim)
    q = torch.randn(q_shape, dtype=dtype, requires_grad=True)
    return q, k, v, cu_from(lengths)


def check_against_reference(q, k, v, cu_seqlens, softmax_scale):
    out = segment_attention_pool(q, k, v, cu_seqlens, softmax_scale=softmax_scale)
    assert out.dtype == k.dtype and out.shape == (cu_seqlens.numel() - 1, *k.shape[1:])
    dout = torch.randn_like(out)
    out.backward(dout)

    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    scale = 1 / math.sqrt(k.shape[-1]) if softmax_scale is None else softmax_scale
    ref = reference_pool(*leaves, cu_seqlens, scale)
    ref.backward(dout.double())
    tol = TOL[k.dtype]
    assert_close(out, ref, tol, "out")
    for name, t, r in zip("qkv", (q, k, v), leaves):
        assert t.grad.dtype == t.dtype and t.grad.shape == t.shape
        assert_close(t.grad, r.grad, tol, f"d{name}")


@pytest.mark.parametrize("softmax_scale", [1.0, None], ids=["scale1", "default_scale"])
@pytest.mark.parametrize("shared_query", [True, False], ids=["shared_q", "per_sample_q"])
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_pool_matches_reference(dtype, lengths, shared_query, softmax_scale):
    check_against_reference(*make_inputs(lengths, 2, 32, dtype, shared_query), softmax_scale)


@pytest.mark.parametrize("head_dim", [48, 64, 128])
def test_pool_head_dims(head_dim):
    # 48 is not a power of two: the head_dim mask must hold.
    check_against_reference(*make_inputs([40, 3], 2, head_dim, torch.float32, True), 1.0)


def check_mean(lengths: list[int], features: int) -> None:
    """segment_mean's output and gradient (1 / length for every token) against the reference."""
    cu = cu_from(lengths)
    x = torch.randn(sum(lengths), features, requires_grad=True)
    out = segment_mean(x, cu)
    out.backward(torch.ones_like(out))
    assert_close(out, reference_mean(x.detach(), cu), 1e-6, "mean")
    expected = torch.cat([torch.full((n, features), 1 / n, dtype=torch.float64) for n in lengths])
    assert_close(x.grad, expected, 1e-6, "dx")


def test_many_chunks_per_sample():
    """More chunk partials per sample than one merge step takes (4 under the interpreter)."""
    check_against_reference(*make_inputs([300, 3], 1, 16, torch.float32, False), 1.0)
    check_mean([3, 300], 4)


def test_int64_index_path(monkeypatch):
    """The int64 row offsets used for tensors past 2^31 elements, forced on small inputs."""
    from elasticast_kernels.ops import segment_pool_kernels

    monkeypatch.setattr(segment_pool_kernels, "needs_int64", lambda *tensors: True)
    check_against_reference(*make_inputs([70, 5], 2, 32, torch.float32, False), 1.0)
    check_mean([70, 5], 8)


def test_very_wide_rows_take_torch_path(monkeypatch):
    """Rows too wide for int32 tile offsets fall back to the torch path (threshold lowered here)."""
    from elasticast_kernels.ops import segment_pool, segment_pool_kernels

    monkeypatch.setattr(segment_pool, "MAX_ROW_STRIDE", 16)
    for launcher in ("segment_attention_pool_forward", "segment_mean_forward"):
        monkeypatch.setattr(segment_pool_kernels, launcher, None)  # would fail if called
    check_against_reference(*make_inputs([9, 4], 2, 16, torch.float32, True), 1.0)
    cu = cu_from([9, 4])
    x = torch.randn(13, 32)
    assert_close(segment_mean(x, cu), reference_mean(x, cu), 1e-6, "mean")


def test_pool_empty_samples_give_zeros():
    q, k, v, cu = make_inputs([0, 5, 0, 0, 40, 0], 2, 32, torch.float32, shared_query=False)
    check_against_reference(q, k, v, cu, 1.0)
    out = segment_attention_pool(q, k, v, cu)
    assert torch.equal(out[[0, 2, 3, 5]], torch.zeros_like(out[[0, 2, 3, 5]]))


@pytest.mark.parametrize("lengths", [[], [0, 0]], ids=["no_samples", "all_empty"])
def test_pool_empty_batch(lengths):
    q, k, v, cu = make_inputs(lengths, 2, 32, torch.float32, shared_query=True)
    out = segment_attention_pool(q, k, v, cu)
    assert out.shape == (len(lengths), 2, 32) and not out.abs().sum()
    (out.sum() + 0.0).backward()
    assert q.grad is not None and not q.grad.abs().sum()


def test_pool_strided_kv_views():
    """k and v as the halves of a fused kv projection (row stride 2 * heads * head_dim)."""
    lengths, heads, head_dim = [33, 7], 2, 32
    kv = torch.randn(sum(lengths), 2, heads, head_dim, requires_grad=True)
    q = torch.randn(heads, head_dim, requires_grad=True)
    k, v = kv[:, 0], kv[:, 1]
    k.retain_grad()
    v.retain_grad()
    # ... and a strided cu_seqlens (every other entry of a longer one).
    cu = torch.stack([cu_from(lengths), torch.zeros(3, dtype=torch.int32)], dim=1).reshape(-1)[::2]
    check_against_reference(q, k, v, cu, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_pool_torch_cpu_path(torch_cpu_path, dtype):
    """Without the interpreter, CPU tensors take the torch path (bf16 works there)."""
    q, k, v, cu = make_inputs([1, 37, 0, 100], 2, 32, dtype, shared_query=False)
    out = segment_attention_pool(q, k, v, cu, softmax_scale=1.0)
    out.backward(torch.ones_like(out))
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = reference_pool(*leaves, cu, 1.0)
    ref.backward(torch.ones_like(ref))
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-5
    assert_close(out, ref, tol, "out")
    for name, t, r in zip("qkv", (q, k, v), leaves):
        assert_close(t.grad, r.grad, tol, f"d{name}")


def test_pool_bf16_cpu_under_interpreter():
    """bf16 on the CPU takes the torch path even under the interpreter (which mangles bf16)."""
    q, k, v, cu = make_inputs([3, 40], 2, 32, torch.bfloat16, shared_query=True)
    out = segment_attention_pool(q, k, v, cu, softmax_scale=1.0)
    ref = reference_pool(q.detach().double(), k.detach().double(), v.detach().double(), cu, 1.0)
    assert_close(out, ref, 2e-2, "out")


@pytest.mark.parametrize("features", [(), (5,), (3, 24)], ids=["scalar", "vector", "matrix"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_segment_mean(dtype, features):
    cu = cu_from([1, 0, 70, 6])
    x = torch.randn(int(cu[-1]), *features, dtype=dtype, requires_grad=True)
    out = segment_mean(x, cu)
    assert out.shape == (4, *features) and out.dtype == dtype
    dout = torch.randn_like(out)
    out.backward(dout)
    xd = x.detach().double().requires_grad_()
    ref = reference_mean(xd, cu)
    ref.backward(dout.double())
    tol = TOL[dtype]
    assert_close(out, ref, tol, "mean")
    assert_close(x.grad, xd.grad, tol, "dx")
    assert not out[1].abs().sum()  # empty sample -> zeros


def test_segment_mean_empty_batch():
    x = torch.randn(0, 8, requires_grad=True)
    out = segment_mean(x, cu_from([]))
    assert out.shape == (0, 8)
    out.sum().backward()
    assert x.grad.shape == (0, 8)


def test_segment_mean_torch_cpu_path(torch_cpu_path):
    cu = cu_from([3, 0, 9])
    x = torch.randn(12, 4, requires_grad=True)
    out = segment_mean(x, cu)
    out.backward(torch.ones_like(out))
    assert torch.allclose(out.double(), reference_mean(x.detach(), cu), atol=1e-6)
    assert torch.allclose(x.grad[:3], torch.full((3, 4), 1 / 3))
    assert torch.allclose(x.grad[3:], torch.full((9, 4), 1 / 9))


def test_torch_compile_fullgraph():
    """The custom ops (forward, fake, autograd) trace into one graph, forward and backward."""
    q, k, v, cu = make_inputs([5, 40], 2, 32, torch.float32, shared_query=True)
    x = torch.randn(45, 8, requires_grad=True)

    def step(q, k, v, x, cu):
        return segment_attention_pool(q, k, v, cu, max_seqlen=40, softmax_scale=1.0).square().sum() + segment_mean(
            x, cu, max_seqlen=40).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, v, x, cu)
    loss.backward()
    got = [t.grad.clone() for t in (q, k, v, x)]
    for t in (q, k, v, x):
        t.grad = None
    expected = step(q, k, v, x, cu)
    expected.backward()
    assert torch.allclose(loss, expected)
    for g, t in zip(got, (q, k, v, x)):
        assert torch.allclose(g, t.grad)


def _bad_inputs():
    q, k, v, cu = (t.detach() for t in make_inputs([3, 4], 2, 16, torch.float32, shared_query=True))
    good = dict(q=q, k=k, v=v, cu_seqlens=cu)
    cases = {
        "k_not_tensor": (dict(k=k.tolist()), TypeError, "k"),
        "q_not_tensor": (dict(q=1.0), TypeError, "q"),
        "k_int": (dict(k=k.int()), ValueError, "k"),
        "k_2d": (dict(k=k[:, 0]), ValueError, "k"),
        "v_shape": (dict(v=v[:, :1]), ValueError, "v"),
        "v_dtype": (dict(v=v.half()), ValueError, "v"),
        "q_dtype": (dict(q=q.half()), ValueError, "q"),
        "q_shape": (dict(q=q[:1]), ValueError, "q"),
        "q_batch": (dict(q=q.expand(3, 2, 16)), ValueError, "q"),
        "q_4d": (dict(q=q[None, None]), ValueError, "q"),
        "q_1d": (dict(q=q[0]), ValueError, r"q must be \(heads, head_dim\)"),
        "head_dim_too_big": (dict(q=torch.zeros(2, 512), k=torch.zeros(7, 2, 512), v=torch.zeros(7, 2, 512)),
                             ValueError, "head_dim"),
        "cu_int64": (dict(cu_seqlens=cu.long()), ValueError, "cu_seqlens"),
        "cu_2d": (dict(cu_seqlens=cu[None]), ValueError, "cu_seqlens"),
        "cu_total": (dict(cu_seqlens=torch.tensor([0, 3, 6], dtype=torch.int32)), ValueError, "cu_seqlens"),
        "cu_decreasing": (dict(cu_seqlens=torch.tensor([0, 5, 4, 7], dtype=torch.int32)), ValueError, "cu_seqlens"),
        "cu_start": (dict(cu_seqlens=torch.tensor([1, 3, 7], dtype=torch.int32)), ValueError, "cu_seqlens"),
        "max_seqlen": (dict(max_seqlen=-1), ValueError, "max_seqlen"),
        "scale_nan": (dict(softmax_scale=float("nan")), ValueError, "softmax_scale"),
        "scale_inf": (dict(softmax_scale=float("inf")), ValueError, "softmax_scale"),
        "scale_str": (dict(softmax_scale="1.0"), TypeError, "softmax_scale"),
    }
    return good, cases


_GOOD, _CASES = _bad_inputs()


@pytest.mark.parametrize("case", list(_CASES))
def test_pool_bad_input(case):
    change, error, name = _CASES[case]
    with pytest.raises(error, match=name):
        segment_attention_pool(**{**_GOOD, **change})


@pytest.mark.parametrize(
    "x, cu, error, name",
    [
        ("not a tensor", cu_from([2]), TypeError, "x"),
        (torch.zeros(()), cu_from([0]), ValueError, "x"),
        (torch.zeros(4, 2, dtype=torch.int64), cu_from([4]), ValueError, "x"),
        (torch.zeros(4, 2), cu_from([3]), ValueError, "cu_seqlens"),
    ],
    ids=["not_tensor", "0d", "int", "cu_total"],
)
def test_segment_mean_bad_input(x, cu, error, name):
    with pytest.raises(error, match=name):
        segment_mean(x, cu)


@pytest.mark.parametrize("path", ["triton", "torch"])
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_pool_non_finite_input_stays_in_its_sample(path, where, bad, monkeypatch):
    """A NaN/inf in one sample gives that sample a non-finite output and gradient (never a
    silent finite value) and leaves every other sample's output and gradient finite."""
    if path == "torch":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lengths = [5, 70, 3, 9]  # sample 1 spans two chunks under the interpreter
    q, k, v, cu = make_inputs(lengths, 2, 16, torch.float32, shared_query=False)
    with torch.no_grad():
        {"q": q, "k": k, "v": v}[where][1 if where == "q" else 40, 1, 3] = bad
        if where == "v" and bad == float("inf"):
            v[40, 1, 4] = -bad  # inf - inf: NaN in the weighted sum whatever the weights
    out = segment_attention_pool(q, k, v, cu, softmax_scale=1.0)
    assert not torch.isfinite(out[1]).all(), "the poisoned sample came back finite"
    assert torch.isfinite(out[[0, 2, 3]]).all(), "a non-finite value reached another sample"
    out[[0, 2, 3]].sum().backward()  # gradients of the clean samples only
    for name, t in (("k", k), ("v", v)):
        clean = torch.cat([t.grad[:5], t.grad[75:]])
        assert torch.isfinite(clean).all(), f"d{name} of clean samples is not finite"
    assert torch.isfinite(q.grad[[0, 2, 3]]).all()


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_segment_mean_non_finite_input_stays_in_its_sample(path, monkeypatch):
    if path == "torch":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cu = cu_from([4, 70, 2])
    x = torch.randn(76, 8, requires_grad=True)
    with torch.no_grad():
        x[30, 2] = float("nan")
    out = segment_mean(x, cu)
    assert torch.isnan(out[1, 2]) and torch.isfinite(out[[0, 2]]).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()  # d(mean)/dx does not depend on x
