"""The padded baselines of the benchmarks: same results as the packed layout, padding aside."""
from __future__ import annotations

import pytest
import torch

from elasticast_kernels.bench.padded import PaddedElasticAST, padded_attention, row_padded, sdpa_masked_attention
from elasticast_kernels.layout import SeqLayout
from elasticast_kernels.models import ElasticAST
from helpers import reference_attention
from reference_elasticast import make_specs, quality_frames

BASELINES = {"sdpa_masked": sdpa_masked_attention, "padded": padded_attention}


@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize("seqlens,pack_offsets", [((7,), (0, 1)), ((5, 12, 1, 9), (0, 2, 3, 4)),
                                                  ((33, 3, 17, 17, 8), (0, 1, 3, 5))])
def test_baseline_matches_reference(name, seqlens, pack_offsets):
    layout = SeqLayout(seqlens, pack_offsets)
    q, k, v = (torch.randn(layout.total_tokens, 2, 8) for _ in range(3))
    out = BASELINES[name](q, k, v, layout, 0.5)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, layout.cu_seqlens, 0.5), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_gradients(name):
    layout = SeqLayout((3, 8, 5), (0, 1, 3))
    inputs = [torch.randn(16, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    grads = torch.autograd.grad(BASELINES[name](*inputs, layout, 0.5).square().sum(), inputs)
    expected = torch.autograd.grad(reference_attention(*inputs, layout.cu_seqlens, 0.5).square().sum(), inputs)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_row_padded_layout_reproduces_packed_attention():
    """The published model's layout (packs padded to the longest pack) gives the same real outputs."""
    layout = SeqLayout((5, 12, 1, 9, 4), (0, 2, 4, 5))  # packs of 17, 10 and 4 tokens
    rows_layout, index = row_padded(layout)
    assert rows_layout.seqlens == (5, 12, 1, 9, 7, 4, 13)  # each row's padding is one extra segment
    assert rows_layout.pack_offsets == (0, 2, 5, 7) and rows_layout.total_tokens == 3 * 17
    assert index.tolist() == list(range(17)) + list(range(17, 27)) + list(range(34, 38))
    q, k, v = (torch.randn(layout.total_tokens, 2, 8) for _ in range(3))
    padded = [torch.zeros(51, 2, 8).index_copy(0, index, t) for t in (q, k, v)]
    out = sdpa_masked_attention(*padded, rows_layout, 1.0).index_select(0, index)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, layout.cu_seqlens, 1.0), atol=2e-5, rtol=2e-5)


def test_masks_are_cached_on_the_layout():
    layout = SeqLayout((3, 2, 4), (0, 2, 3))
    q = torch.randn(9, 1, 4)
    sdpa_masked_attention(q, q, q, layout, 1.0)
    cached = dict(layout._cache)
    sdpa_masked_attention(q, q, q, layout, 1.0)
    assert cached and all(layout._cache[key] is value for key, value in cached.items())


def test_padded_model_gives_the_packed_logits(torch_cpu_path):
    config = dict(sample_size=(32, 256), patch_size=16, num_classes=7, dim=64, depth=2, heads=4, channels=1)
    model = ElasticAST(**config).eval()
    padded = PaddedElasticAST(**config).eval()
    padded.load_state_dict(model.state_dict())
    specs = [s.float() for s in make_specs(quality_frames(200) + [16, 48], freq_bins=32)]
    with torch.no_grad():
        want, got = model(specs, group_max_seq_len=96), padded(specs, group_max_seq_len=96)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
