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


@pytest.mark.parametrize("causal, window", [(False, (-1, -1)), (True, (-1, -1)), (False, (2, 1)), (True, (3, -1)),
                                            (False, (0, 0))])
def test_reference_cross_gqa_window_against_dense_masked_sdpa(causal, window):
    """GQA (4 query heads on 2 key heads), cross-attention (other key lengths) and windows,
    against SDPA with an explicit mask built independently from flash-attn's rule: query ``i``
    of a sample sees key ``j`` iff ``i + Lk - Lq - left <= j <= i + Lk - Lq + right``."""
    lengths_q, lengths_k = [3, 5, 1, 4], [6, 2, 0, 4]
    cu_q, cu_k = cu_from(lengths_q), cu_from(lengths_k)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(sum(lengths_q), 4, 8, dtype=torch.float64, generator=generator)
    k, v = (torch.randn(sum(lengths_k), 2, 8, dtype=torch.float64, generator=generator) for _ in range(2))
    out = reference_attention(q, k, v, cu_q, 0.7, causal, cu_seqlens_k=cu_k, window=window)
    left, right = window[0], 0 if causal else window[1]
    for b, (lq, lk) in enumerate(zip(lengths_q, lengths_k)):
        qs = q[cu_q[b]:cu_q[b + 1]].transpose(0, 1)
        ks, vs = (t[cu_k[b]:cu_k[b + 1]].repeat_interleave(2, dim=1).transpose(0, 1) for t in (k, v))
        mask = torch.zeros(lq, lk, dtype=torch.bool)
        for i in range(lq):
            for j in range(lk):
                aligned = i + lk - lq
                mask[i, j] = (right < 0 or j <= aligned + right) and (left < 0 or j >= aligned - left)
        expected = torch.zeros(lq, 4, 8, dtype=torch.float64)
        rows = mask.any(1)
        if rows.any():
            attended = torch.nn.functional.scaled_dot_product_attention(
                qs[:, rows], ks, vs, attn_mask=mask[rows], scale=0.7).transpose(0, 1)
            expected[rows] = attended
        torch.testing.assert_close(out[cu_q[b]:cu_q[b + 1]], expected)


def test_reference_softcap():
    q, k, v = (torch.randn(5, 1, 4, dtype=torch.float64) for _ in range(3))
    out = reference_attention(q, k, v, cu_from([5]), 2.0, softcap=3.0)
    scores = 3.0 * torch.tanh(q[:, 0] @ k[:, 0].T * 2.0 / 3.0)
    torch.testing.assert_close(out[:, 0], scores.softmax(-1) @ v[:, 0])


def test_causal_alignment_is_flash_attn_documented_example():
    """flash-attn's docstring: causal masks align bottom-right; for seqlen_q=2, seqlen_k=5 the
    mask is [[1,1,1,1,0],[1,1,1,1,1]], for seqlen_q=5, seqlen_k=2 it is
    [[0,0],[0,0],[0,0],[1,0],[1,1]], and a row with no key gives output 0."""
    from helpers import visible_keys

    assert visible_keys(2, 5, causal=True).int().tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert visible_keys(5, 2, causal=True).int().tolist() == [[0, 0], [0, 0], [0, 0], [1, 0], [1, 1]]
    q = torch.randn(5, 1, 4, dtype=torch.float64)
    k, v = (torch.randn(2, 1, 4, dtype=torch.float64) for _ in range(2))
    out = reference_attention(q, k, v, cu_from([5]), 1.0, True, cu_seqlens_k=cu_from([2]))
    assert not out[:3].any() and torch.allclose(out[3, 0], v[0, 0])


def test_window_is_flash_attn_documented_rule():
    """flash-attn's docstring: query i sees keys [i + Lk - Lq - left, i + Lk - Lq + right]."""
    from helpers import visible_keys

    assert visible_keys(3, 6, window=(1, 0)).int().tolist() == [
        [0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1]]
    assert visible_keys(4, 4, window=(0, 1)).int().tolist() == [
        [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1]]
