"""varlen_attention's public surface: input validation, the launch schedule, flash-attn's
interface (flash_attn_func, flash_attn_varlen_func), torch.compile."""
from __future__ import annotations

import inspect

import pytest
import torch

from elasticast_kernels.ops import (
    LaunchSchedule,
    flash_attn_func,
    flash_attn_varlen_func,
    launch_schedule,
    varlen_attention,
)
from elasticast_kernels.ops._common import longest_first
from helpers import assert_close, cu_from, reference_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(lengths=(3, 5), heads=1, head_dim=32, dtype=torch.float32, heads_k=None, lengths_k=None):
    total = sum(lengths)
    total_k = total if lengths_k is None else sum(lengths_k)
    q = torch.randn(total, heads, head_dim, device=DEVICE, dtype=dtype)
    k, v = (torch.randn(total_k, heads_k or heads, head_dim, device=DEVICE, dtype=dtype) for _ in range(2))
    return q, k, v, cu_from(lengths, DEVICE)


@pytest.fixture(params=["triton", "torch"])
def path(request, monkeypatch):
    """Both paths: the Triton kernels (interpreted on CPU) and the torch path."""
    if request.param == "torch":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return request.param


# --- bad input: a ValueError/TypeError that names the argument -----------------------------------

def _bad_cases():
    q, k, v, cu = inputs((3, 5), heads=2)
    cu_k = cu_from([4, 4], DEVICE)
    k4, v4 = (torch.randn(8, 2, 32, device=DEVICE) for _ in range(2))
    cases = {
        "cu_int64": ((q, k, v, cu.long()), {}, ValueError, "cu_seqlens"),
        "cu_2d": ((q, k, v, cu[None]), {}, ValueError, "cu_seqlens"),
        "cu_not_tensor": ((q, k, v, [0, 3, 8]), {}, TypeError, "cu_seqlens"),
        "q_int": ((q.long(), k, v, cu), {}, ValueError, "q"),
        "q_2d": ((q[:, 0], k, v, cu), {}, ValueError, "q"),
        "q_float64": ((q.double(), k, v, cu), {}, ValueError, "q"),
        "k_not_tensor": ((q, k.tolist(), v, cu), {}, TypeError, "k"),
        "k_tokens_without_cu_seqlens_k": ((q, k[:-1], v[:-1], cu), {}, ValueError, "cu_seqlens_k"),
        "v_shape": ((q, k, v[:, :1], cu), {}, ValueError, "v"),
        "k_head_dim": ((q, k[..., :16], v[..., :16], cu), {}, ValueError, "head_dim"),
        "heads_not_multiple": ((torch.randn(8, 3, 32, device=DEVICE), k, v, cu), {}, ValueError, "multiple"),
        "heads_k_zero": ((q, k[:, :0], v[:, :0], cu), {}, ValueError, "multiple"),
        "v_dtype": ((q, k, v.half(), cu), {}, ValueError, "v"),
        "k_device": ((q, k.to("meta"), v, cu), {}, ValueError, "k"),
        "cu_device": ((q, k, v, cu.to("meta")), {}, ValueError, "cu_seqlens"),
        "head_dim_257": (tuple(inputs(head_dim=257)), {}, ValueError, "head_dim"),
        "max_seqlen_float": ((q, k, v, cu), {"max_seqlen": 5.0}, TypeError, "max_seqlen"),
        "max_seqlen_negative": ((q, k, v, cu), {"max_seqlen": -1}, ValueError, "max_seqlen"),
        "max_seqlen_k_bool": ((q, k, v, cu), {"max_seqlen_k": True}, TypeError, "max_seqlen_k"),
        "scale_nan": ((q, k, v, cu), {"softmax_scale": float("nan")}, ValueError, "softmax_scale"),
        "window_minus_2": ((q, k, v, cu), {"window_size": (-2, 0)}, ValueError, "window_size left"),
        "window_right_minus_5": ((q, k, v, cu), {"window_size": (3, -5)}, ValueError, "window_size right"),
        "window_three": ((q, k, v, cu), {"window_size": (1, 2, 3)}, ValueError, "window_size"),
        "window_float": ((q, k, v, cu), {"window_size": (1.5, 0)}, TypeError, "window_size left"),
        "window_bool": ((q, k, v, cu), {"window_size": (True, 0)}, TypeError, "window_size left"),
        "window_int": ((q, k, v, cu), {"window_size": 4}, TypeError, "window_size"),
        "window_tensor_side": ((q, k, v, cu), {"window_size": (torch.tensor(2), 0)}, TypeError, "window_size left"),
        "softcap_nan": ((q, k, v, cu), {"softcap": float("nan")}, ValueError, "softcap"),
        "softcap_inf": ((q, k, v, cu), {"softcap": float("inf")}, ValueError, "softcap"),
        "softcap_negative": ((q, k, v, cu), {"softcap": -1.0}, ValueError, "softcap"),
        "softcap_str": ((q, k, v, cu), {"softcap": "30"}, TypeError, "softcap"),
        "softcap_none": ((q, k, v, cu), {"softcap": None}, TypeError, "softcap"),
        "cu_k_other_batch": ((q, k4, v4, cu), {"cu_seqlens_k": cu_from([2, 2, 4], DEVICE)}, ValueError,
                             "cu_seqlens_k must have one entry per cu_seqlens_q"),
        "cu_k_int64": ((q, k4, v4, cu), {"cu_seqlens_k": cu_k.long()}, ValueError, "cu_seqlens_k must be int32"),
        "cu_k_not_tensor": ((q, k4, v4, cu), {"cu_seqlens_k": [0, 4, 8]}, TypeError, "cu_seqlens_k"),
        "schedule_tuple": ((q, k, v, cu), {"schedule": longest_first(cu)}, TypeError, "LaunchSchedule"),
        "schedule_other_batch": ((q, k, v, cu), {"schedule": launch_schedule(cu_from([1, 2, 5], DEVICE))},
                                 ValueError, "schedule"),
    }
    if DEVICE == "cpu":  # values are only checked where that costs no device sync
        cases.update({
            "cu_not_monotone": ((q, k, v, torch.tensor([0, 5, 3, 8], dtype=torch.int32)), {}, ValueError,
                                "non-decreasing"),
            "cu_last_not_total": ((q, k, v, torch.tensor([0, 3, 7], dtype=torch.int32)), {}, ValueError,
                                  "total_tokens"),
            "cu_first_not_zero": ((q, k, v, torch.tensor([1, 3, 8], dtype=torch.int32)), {}, ValueError,
                                  r"cu_seqlens\[0\]"),
            "cu_k_last_not_total_k": ((q, k4, v4, cu), {"cu_seqlens_k": cu_from([4, 3])}, ValueError,
                                      r"cu_seqlens_k\[-1\]=7 must equal total_k=8"),
            "cu_q_cross_last": ((q, k4, v4, cu_from([3, 4])), {"cu_seqlens_k": cu_k}, ValueError,
                                r"cu_seqlens_q\[-1\]=7 must equal total_q=8"),
            "schedule_of_other_values": ((q, k, v, cu), {"schedule": launch_schedule(cu_from([5, 3]))}, ValueError,
                                         "does not belong"),
        })
    return cases


BAD = _bad_cases()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_argument(case):
    args, kwargs, error, pattern = BAD[case]
    with pytest.raises(error, match=pattern):
        varlen_attention(*args, **kwargs)


def test_window_normalisation_is_exact(path):
    """Causal sets the right side to 0, and sides as long as the tokens are unbounded: each
    spelling gives bit-identical results to its normal form."""
    q, k, v, cu = inputs((5, 9, 2), heads=2)
    run = lambda **kw: varlen_attention(q, k, v, cu, softmax_scale=1.0, **kw)  # noqa: E731
    assert torch.equal(run(causal=True), run(causal=True, window_size=(-1, 7)))
    assert torch.equal(run(causal=True), run(window_size=(-1, 0)))
    assert torch.equal(run(), run(window_size=(16, 16)))  # 16 = total tokens: nothing excluded
    assert torch.equal(run(), run(window_size=(2**40, 2**40)))  # far past int32: still unbounded
    assert torch.equal(run(causal=True, window_size=(3, -1)), run(window_size=(3, 0)))


# --- the launch schedule -------------------------------------------------------------------------

def test_head_dims_are_the_kernels():
    pytest.importorskip("triton")
    from elasticast_kernels.ops.varlen_attention import ATTENTION_HEAD_DIMS
    from elasticast_kernels.ops.varlen_attention_kernels import KERNEL_HEAD_DIMS

    assert ATTENTION_HEAD_DIMS == KERNEL_HEAD_DIMS


def test_launch_schedule_is_longest_first_of_each_side():
    cu_q, cu_k = cu_from([4, 9, 1], DEVICE), cu_from([2, 2, 7], DEVICE)
    self_schedule = launch_schedule(cu_q)
    assert isinstance(self_schedule, LaunchSchedule) and self_schedule.k is self_schedule.q
    same = launch_schedule(cu_q, cu_q)
    assert same.k is same.q
    cross = launch_schedule(cu_q, cu_k)
    for got, expected in zip((*cross.q, *cross.k), (*longest_first(cu_q), *longest_first(cu_k))):
        assert torch.equal(got, expected)


def test_given_schedule_gives_the_same_result(path):
    lengths_q, lengths_k = [4, 9, 1], [6, 3, 5]
    q, k, v, cu_q = inputs(lengths_q, heads=2, lengths_k=lengths_k)
    cu_k = cu_from(lengths_k, DEVICE)
    without = varlen_attention(q, k, v, cu_q, cu_seqlens_k=cu_k)
    given = varlen_attention(q, k, v, cu_q, cu_seqlens_k=cu_k, schedule=launch_schedule(cu_q, cu_k))
    assert torch.equal(without, given)


# --- flash-attn's interface ----------------------------------------------------------------------

FLASH_ATTN_FUNC_PARAMETERS = [
    ("q", inspect.Parameter.empty), ("k", inspect.Parameter.empty), ("v", inspect.Parameter.empty),
    ("dropout_p", 0.0), ("softmax_scale", None), ("causal", False), ("window_size", (-1, -1)), ("softcap", 0.0),
    ("alibi_slopes", None), ("deterministic", False), ("return_attn_probs", False),
]
FLASH_ATTN_VARLEN_FUNC_PARAMETERS = [
    *FLASH_ATTN_FUNC_PARAMETERS[:3], ("cu_seqlens_q", inspect.Parameter.empty),
    ("cu_seqlens_k", inspect.Parameter.empty), ("max_seqlen_q", inspect.Parameter.empty),
    ("max_seqlen_k", inspect.Parameter.empty), *FLASH_ATTN_FUNC_PARAMETERS[3:], ("block_table", None),
]


@pytest.mark.parametrize("fn, expected", [(flash_attn_func, FLASH_ATTN_FUNC_PARAMETERS),
                                          (flash_attn_varlen_func, FLASH_ATTN_VARLEN_FUNC_PARAMETERS)],
                         ids=["flash_attn_func", "flash_attn_varlen_func"])
def test_flash_attn_signatures(fn, expected):
    """flash-attn 2's parameter names, order and defaults: code (and transformers, which reads
    the signatures to decide what to pass) can call ours in place of theirs."""
    params = inspect.signature(fn).parameters
    assert [(name, p.default) for name, p in params.items()] == expected


def test_flash_attn_module_name_is_importable():
    import elasticast_kernels.ops.flash_attn_interface as interface

    assert interface.flash_attn_func is flash_attn_func and interface.flash_attn_varlen_func is flash_attn_varlen_func


def test_flash_attn_varlen_func_is_varlen_attention(path):
    lengths_q, lengths_k = [4, 9, 1], [6, 3, 5]
    q, k, v, cu_q = inputs(lengths_q, heads=4, heads_k=2, lengths_k=lengths_k)
    cu_k = cu_from(lengths_k, DEVICE)
    ours = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 9, 6, 0.0, softmax_scale=0.5, causal=True,
                                  window_size=(2, 1), softcap=3.0, deterministic=True)
    direct = varlen_attention(q, k, v, cu_q, 9, 0.5, True, cu_seqlens_k=cu_k, max_seqlen_k=6, window_size=(2, 1),
                              softcap=3.0)
    assert torch.equal(ours, direct)


def test_flash_attn_varlen_window_follows_flash_attn(path):
    """flash-attn treats a window side >= max_seqlen_k as unbounded; so do we (in its interface)."""
    q, k, v, cu = inputs((3, 8), heads=2)
    wide = flash_attn_varlen_func(q, k, v, cu, cu, 8, 8, window_size=(8, 100))
    assert torch.equal(wide, flash_attn_varlen_func(q, k, v, cu, cu, 8, 8))
    narrow = flash_attn_varlen_func(q, k, v, cu, cu, 8, 8, window_size=(7, 0))
    assert torch.equal(narrow, varlen_attention(q, k, v, cu, window_size=(7, 0)))


@pytest.mark.parametrize("kwargs", [
    {"dropout_p": 0.1}, {"alibi_slopes": torch.ones(1)}, {"return_attn_probs": True},
    {"block_table": torch.zeros(1, 1, dtype=torch.int32)},
], ids=["dropout", "alibi", "attn_probs", "block_table"])
def test_flash_attn_unsupported_features(kwargs):
    q, k, v, cu = inputs()
    with pytest.raises(NotImplementedError, match=next(iter(kwargs))):
        flash_attn_varlen_func(q, k, v, cu, cu, 5, 5, **kwargs)
    if "block_table" not in kwargs:
        with pytest.raises(NotImplementedError, match=next(iter(kwargs))):
            flash_attn_func(q[None], k[None], v[None], **kwargs)


def _dense_reference(q, k, v, scale, causal, window, softcap):
    """flash_attn_func's result, from the float64 varlen reference on the flattened batch."""
    batch, seqlen_q, seqlen_k = q.shape[0], q.shape[1], k.shape[1]
    flat = [x.reshape(-1, *x.shape[2:]).double() for x in (q, k, v)]
    out = reference_attention(*flat, cu_from([seqlen_q] * batch), scale, causal,
                              cu_seqlens_k=cu_from([seqlen_k] * batch), window=window, softcap=softcap)
    return out.view(batch, seqlen_q, *out.shape[1:])


@pytest.mark.parametrize("seqlen_q, seqlen_k, heads_k, causal, window, softcap", [
    (7, 7, 4, False, (-1, -1), 0.0),
    (7, 7, 2, True, (-1, -1), 0.0),
    (5, 9, 1, True, (2, -1), 0.0),
    (9, 5, 2, False, (1, 1), 2.0),
    (6, 6, 4, True, (3, 0), 5.0),
], ids=["full", "gqa_causal", "mqa_cross_causal_left", "cross_window_softcap", "window_softcap"])
def test_flash_attn_func_dense(seqlen_q, seqlen_k, heads_k, causal, window, softcap, path):
    q = torch.randn(3, seqlen_q, 4, 32, device=DEVICE, requires_grad=True)
    k, v = (torch.randn(3, seqlen_k, heads_k, 32, device=DEVICE, requires_grad=True) for _ in range(2))
    out = flash_attn_func(q, k, v, softmax_scale=0.4, causal=causal, window_size=window, softcap=softcap)
    assert out.shape == q.shape and out.dtype == q.dtype
    leaves = [x.detach().cpu().double().requires_grad_() for x in (q, k, v)]
    ref = _dense_reference(*leaves, 0.4, causal, window, softcap)
    assert_close(out.cpu(), ref, 1e-4, "out")
    grad = torch.randn_like(ref)
    out.backward(grad.to(out))
    ref.backward(grad)
    for name, x, leaf in zip("qkv", (q, k, v), leaves):
        assert_close(x.grad.cpu(), leaf.grad, 1e-4, f"d{name}")


def test_flash_attn_func_window_past_seqlen_k_is_unbounded(path):
    """flash-attn's rule for the dense call: a side >= seqlen_k is unbounded. With more queries
    than keys that differs from the literal window (early rows would see fewer keys)."""
    q = torch.randn(2, 9, 2, 32, device=DEVICE)
    k, v = (torch.randn(2, 3, 2, 32, device=DEVICE) for _ in range(2))
    assert torch.equal(flash_attn_func(q, k, v, window_size=(3, 3)), flash_attn_func(q, k, v))


@pytest.mark.parametrize("bad, error, pattern", [
    ({"q": "q_3d"}, ValueError, "q must have 4 dimensions"),
    ({"k": "k_batch"}, ValueError, "same batch size"),
    ({"v": "v_heads"}, ValueError, "v must have the shape of k"),
])
def test_flash_attn_func_bad_input(bad, error, pattern):
    q = torch.randn(2, 5, 2, 32, device=DEVICE)
    k = v = q
    variants = {"q_3d": q[0], "k_batch": q[:1], "v_heads": q[:, :, :1]}
    args = {"q": q, "k": k, "v": v}
    args.update({name: variants[key] for name, key in bad.items()})
    with pytest.raises(error, match=pattern):
        flash_attn_func(**args)


def test_flash_attn_func_empty_sequences():
    q = torch.randn(2, 0, 2, 32, device=DEVICE, requires_grad=True)
    out = flash_attn_func(q, q, q)
    assert out.shape == (2, 0, 2, 32)
    out.sum().backward()


# --- torch.compile(fullgraph=True) ----------------------------------------------------------------

def _compiled_matches_eager(causal, features=False):
    lengths_q, lengths_k = [3, 17, 6], [5, 9, 6]
    q, k, v, cu = inputs(lengths_q, heads=4, heads_k=2 if features else 4,
                         lengths_k=lengths_k if features else None)
    cu_k = cu_from(lengths_k, DEVICE) if features else None
    extra = {"cu_seqlens_k": cu_k, "window_size": (4, 2), "softcap": 3.0} if features else {}

    def attention(q, k, v, cu, cu_k):
        kwargs = dict(extra, cu_seqlens_k=cu_k) if features else {}
        return varlen_attention(q, k, v, cu, softmax_scale=1.0, causal=causal, **kwargs) * 2.0

    compiled = torch.compile(attention, fullgraph=True, backend="aot_eager")
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = compiled(*leaves, cu, cu_k)
    out.sum().backward()
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
    ref = reference_attention(*ref_leaves, cu.cpu(), 1.0, causal, cu_seqlens_k=None if cu_k is None else cu_k.cpu(),
                              window=extra.get("window_size", (-1, -1)), softcap=extra.get("softcap", 0.0)) * 2.0
    ref.sum().backward()
    torch.testing.assert_close(out.double().cpu(), ref, atol=1e-4, rtol=1e-4)
    for leaf, ref_leaf in zip(leaves, ref_leaves):
        torch.testing.assert_close(leaf.grad.double().cpu(), ref_leaf.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_torch_compile_fullgraph(causal):
    """Traced through the custom op and its fake/autograd registrations (the Triton kernels
    here: the interpreter on CPU, compiled on a GPU)."""
    torch._dynamo.reset()
    _compiled_matches_eager(causal)


def test_torch_compile_fullgraph_new_arguments(path):
    """GQA, cross-attention, a window and softcap through the compiled op."""
    torch._dynamo.reset()
    _compiled_matches_eager(causal=True, features=True)


def test_torch_compile_fullgraph_torch_cpu_path(torch_cpu_path):
    torch._dynamo.reset()
    if DEVICE != "cpu":
        pytest.skip("the torch path runs on CPU tensors")
    _compiled_matches_eager(causal=False)


def test_strided_cu_seqlens_gives_the_same_result():
    """The kernels read cu_seqlens with unit stride: a strided view must be made contiguous first."""
    cu_full = torch.tensor([0, 99, 5, 99, 14, 99, 17], dtype=torch.int32, device=DEVICE)
    q, k, v = (torch.randn(17, 2, 32, device=DEVICE) for _ in range(3))
    strided = varlen_attention(q, k, v, cu_full[::2], softmax_scale=1.0)
    compact = varlen_attention(q, k, v, cu_full[::2].contiguous(), softmax_scale=1.0)
    assert torch.equal(strided, compact)
