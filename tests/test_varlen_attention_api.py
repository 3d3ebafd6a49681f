"""varlen_attention's public surface: input validation, flash_attn_varlen_func, torch.compile."""
from __future__ import annotations

import pytest
import torch

from elasticast_kernels.ops import flash_attn_varlen_func, varlen_attention
from helpers import cu_from, reference_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(lengths=(3, 5), heads=1, head_dim=32, dtype=torch.float32):
    total = sum(lengths)
    q, k, v = (torch.randn(total, heads, head_dim, device=DEVICE, dtype=dtype) for _ in range(3))
    return q, k, v, cu_from(lengths, DEVICE)


# --- bad input: a ValueError/TypeError that names the argument -----------------------------------

def _bad_cases():
    q, k, v, cu = inputs()
    cases = {
        "cu_int64": ((q, k, v, cu.long()), {}, ValueError, "cu_seqlens"),
        "cu_2d": ((q, k, v, cu[None]), {}, ValueError, "cu_seqlens"),
        "cu_not_tensor": ((q, k, v, [0, 3, 8]), {}, TypeError, "cu_seqlens"),
        "q_int": ((q.long(), k, v, cu), {}, ValueError, "q"),
        "q_2d": ((q[:, 0], k, v, cu), {}, ValueError, "q"),
        "k_shape": ((q, k[:-1], v, cu), {}, ValueError, "k"),
        "v_heads": ((q, k, torch.cat([v, v], 1), cu), {}, ValueError, "v"),
        "v_dtype": ((q, k, v.half(), cu), {}, ValueError, "v"),
        "k_device": ((q, k.to("meta"), v, cu), {}, ValueError, "k"),
        "cu_device": ((q, k, v, cu.to("meta")), {}, ValueError, "cu_seqlens"),
        "head_dim_256": (tuple(inputs(head_dim=256)), {}, ValueError, "head_dim"),
        "max_seqlen_float": ((q, k, v, cu), {"max_seqlen": 5.0}, ValueError, "max_seqlen"),
        "max_seqlen_negative": ((q, k, v, cu), {"max_seqlen": -1}, ValueError, "max_seqlen"),
        "scale_nan": ((q, k, v, cu), {"softmax_scale": float("nan")}, ValueError, "softmax_scale"),
    }
    if DEVICE == "cpu":  # values are only checked where that costs no device sync
        cases.update({
            "cu_not_monotone": ((q, k, v, torch.tensor([0, 5, 3, 8], dtype=torch.int32)), {}, ValueError,
                                "non-decreasing"),
            "cu_last_not_total": ((q, k, v, torch.tensor([0, 3, 7], dtype=torch.int32)), {}, ValueError,
                                  "total_tokens"),
            "cu_first_not_zero": ((q, k, v, torch.tensor([1, 3, 8], dtype=torch.int32)), {}, ValueError,
                                  r"cu_seqlens\[0\]"),
        })
    return cases


BAD = _bad_cases()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_argument(case):
    args, kwargs, error, pattern = BAD[case]
    with pytest.raises(error, match=pattern):
        varlen_attention(*args, **kwargs)


# --- flash_attn_varlen_func ----------------------------------------------------------------------

def test_flash_attn_signature_matches_varlen_attention():
    q, k, v, cu = inputs((4, 9, 1), heads=2)
    ours = flash_attn_varlen_func(q, k, v, cu, cu, 9, 9, 0.0, softmax_scale=1.0, causal=True)
    assert torch.equal(ours, varlen_attention(q, k, v, cu, 9, 1.0, True))
    # equal values in a different tensor object are accepted too
    same = flash_attn_varlen_func(q, k, v, cu, cu.clone(), 9, 9, softmax_scale=1.0, causal=True,
                                  deterministic=True)
    assert torch.equal(ours, same)


@pytest.mark.parametrize("kwargs", [
    {"dropout_p": 0.1}, {"window_size": (8, 0)}, {"softcap": 30.0}, {"alibi_slopes": torch.ones(1)},
    {"return_attn_probs": True}, {"block_table": torch.zeros(1, 1, dtype=torch.int32)},
], ids=["dropout", "window", "softcap", "alibi", "attn_probs", "block_table"])
def test_flash_attn_unsupported_features(kwargs):
    q, k, v, cu = inputs()
    with pytest.raises(NotImplementedError, match=next(iter(kwargs))):
        flash_attn_varlen_func(q, k, v, cu, cu, 5, 5, **kwargs)


def test_flash_attn_unequal_q_k_lengths():
    q, k, v, cu = inputs((3, 5))
    with pytest.raises(ValueError, match="cu_seqlens_k"):
        flash_attn_varlen_func(q, k, v, cu, cu_from([5, 3], DEVICE), 5, 5)
    with pytest.raises(ValueError, match="cu_seqlens_k"):
        flash_attn_varlen_func(q, k, v, cu, cu_from([8], DEVICE), 5, 5)
    with pytest.raises(ValueError, match="max_seqlen"):
        flash_attn_varlen_func(q, k, v, cu, cu, 5, 7)


# --- torch.compile(fullgraph=True) ----------------------------------------------------------------

def _compiled_matches_eager(causal):
    q, k, v, cu = inputs((3, 17, 6), heads=2)

    def attention(q, k, v, cu):
        return varlen_attention(q, k, v, cu, softmax_scale=1.0, causal=causal) * 2.0

    compiled = torch.compile(attention, fullgraph=True, backend="aot_eager")
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = compiled(*leaves, cu)
    out.sum().backward()
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
    ref = reference_attention(*ref_leaves, cu.cpu(), 1.0, causal) * 2.0
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
