"""The float64 reference the varlen attention tests trust (``helpers.reference_attention``),
checked against torch SDPA run on each sample separately."""
from __future__ import annotations

import pytest
import torch

from helpers import cu_from, reference_attention


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_reference_matches_per_sample_sdpa(causal):
    lengths = [3, 0, 7, 1]
    cu_seqlens = cu_from(lengths)
    q, k, v = (torch.randn(11, 2, 8, dtype=torch.float64) for _ in range(3))
    out = reference_attention(q, k, v, cu_seqlens, 0.5, causal)
    assert out.shape == q.shape
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        if end == start:
            continue
        expected = torch.nn.functional.scaled_dot_product_attention(
            *(x[start:end].transpose(0, 1) for x in (q, k, v)), is_causal=causal, scale=0.5
        ).transpose(0, 1)
        assert torch.allclose(out[start:end], expected), (causal, start, end)


def test_reference_with_negative_scale():
    """A negative scale flips which key dominates: the reference must follow softmax, not a max trick."""
    q = torch.tensor([[[1.0]]], dtype=torch.float64).expand(2, 1, 1).contiguous()
    k = torch.tensor([[[1.0]], [[-1.0]]], dtype=torch.float64)
    v = torch.tensor([[[10.0]], [[20.0]]], dtype=torch.float64)
    out = reference_attention(q, k, v, cu_from([2]), -3.0)
    weights = torch.softmax(torch.tensor([-3.0, 3.0], dtype=torch.float64), 0)
    assert torch.allclose(out[:, 0, 0], (weights * torch.tensor([10.0, 20.0], dtype=torch.float64)).sum().expand(2))
