"""A PackedBatch is consistent or refused, and the model names the field that is wrong: seqlens
that disagree with cu_seqlens, a duplicate sample_index, a plan that is not a partition of the
samples, grid shapes the segments do not fit."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elasticast_kernels.layout import SeqLayout
from elasticast_kernels.models import ElasticAST
from elasticast_kernels.packing import PackedBatch, PackPlan, pack_spectrograms
from reference_elasticast import make_specs

CONFIG = dict(sample_size=(32, 256), patch_size=16, num_classes=5, dim=32, depth=1, heads=2, channels=1)


def packed(frames=(32, 64, 48)) -> PackedBatch:
    return pack_spectrograms([s.float() for s in make_specs(list(frames), freq_bins=32)], 16)


@pytest.mark.parametrize("change,match", [
    (lambda b: dict(sample_index=torch.tensor([0, 0, 2])), "sample_index must be a permutation"),
    (lambda b: dict(sample_index=torch.tensor([0, 1, 3])), "sample_index must be a permutation"),
    (lambda b: dict(sample_index=torch.tensor([0, 1])), "sample_index must be an int64 CPU"),
    (lambda b: dict(sample_index=torch.tensor([0, 1, 2], dtype=torch.int32)), "sample_index must be an int64"),
    (lambda b: dict(patches=b.patches[:-1]), "patches has 17 tokens but the layout covers 18"),
    (lambda b: dict(patches=b.patches[:, 0]), r"patches must be a \[total_tokens, patch_dim\]"),
    (lambda b: dict(freq_idx=b.freq_idx[:-1]), "freq_idx must be an int32 or int64"),
    (lambda b: dict(time_idx=b.time_idx.float()), "time_idx must be an int32 or int64"),
    (lambda b: dict(layout=SeqLayout((4, 8, 5))), "patches has 18 tokens but the layout covers 17"),
    (lambda b: dict(layout=(4, 8, 6)), "layout must be a SeqLayout"),
    (lambda b: dict(labels=torch.zeros(2)), "labels has 2 rows for 3 samples"),
    (lambda b: dict(grid_shapes=((2, 2), (2, 4))), r"grid_shapes must be None or one \(freq, time\) pair per segment"),
    (lambda b: dict(grid_shapes=((2, 2), (2, 4), (2, 2))), r"segment 2 holds 6 tokens, more than its grid 2 x 2"),
    (lambda b: dict(grid_shapes=((2, 2), (2, 4), (2, 0))), r"grid_shapes\[2\]\[1\] must be >= 1, got 0"),
    (lambda b: dict(grid_shapes=((2, 2), (2, 4), (2, True))), r"grid_shapes\[2\]\[1\] must be an int, got bool"),
    (lambda b: dict(grid_shapes="2x2"), "grid_shapes must be None"),
])
def test_inconsistent_fields_are_refused(change, match):
    batch = packed()
    with pytest.raises((ValueError, TypeError), match=match):
        replace(batch, **change(batch))


def test_grid_shapes_follow_the_segments():
    batch = packed((32, 64, 48))
    assert batch.grid_shapes == ((2, 2), (2, 4), (2, 3))
    assert replace(batch, grid_shapes=None).grid_shapes is None  # optional: caller-built batches


def test_seqlens_cannot_disagree_with_cu_seqlens():
    """One source of truth: seqlens come from the layout, and a layout checks cu_seqlens."""
    batch = packed()
    with pytest.raises(ValueError, match="cu_seqlens disagrees with seqlens"):
        SeqLayout((5, 8, 5), cu_seqlens=batch.cu_seqlens)
    assert batch.seqlens == (4, 8, 6) and batch.cu_seqlens.tolist() == [0, 4, 12, 18]


def test_model_revalidates_a_batch_changed_after_construction(torch_cpu_path):
    model = ElasticAST(**CONFIG).eval()
    batch = packed()
    batch.sample_index = torch.tensor([1, 1, 0])  # duplicate: would reorder logits through garbage
    with pytest.raises(ValueError, match="PackedBatch.sample_index must be a permutation"):
        model(batch)
    batch = packed()
    batch.freq_idx = batch.freq_idx + 5
    with pytest.raises(ValueError, match=r"PackedBatch.freq_idx holds values outside its segment.s grid"):
        model(batch)


def test_model_names_dtype_and_device_mismatches(torch_cpu_path):
    model = ElasticAST(**CONFIG).eval()
    specs = [s.half() for s in make_specs([32, 48], freq_bins=32)]
    with pytest.raises(ValueError, match="batched_samples is torch.float16 but the model's weights are torch.float32"):
        model(specs)
    with pytest.raises(ValueError, match="PackedBatch.patches is torch.float16"):
        model(pack_spectrograms(specs, 16))
    with pytest.raises(ValueError, match=r"group_max_seq_len must be in \[1, 2147483647\]"):
        model([s.float() for s in specs], group_max_seq_len=2**40)


@pytest.mark.parametrize("order,offsets,match", [
    ([0, 0, 2], [0, 1, 3], "not a partition"),  # duplicate sample
    ([0, 2], [0, 1, 2], "not a partition"),  # missing sample
    ([0, 1, 2], [0, 1, 1, 3], r"bins\[1\] is empty"),  # empty pack
    ([0, 1, 2], [0, 2, 5], "not a partition"),  # offsets past the end
    ([0, 1, 2], [0, 3, 2, 3], "not a partition"),  # decreasing offsets
])
def test_pack_spectrograms_refuses_a_plan_that_is_not_a_partition(order, offsets, match):
    specs = [s.float() for s in make_specs([32, 64, 48], freq_bins=32)]
    plan = PackPlan.from_order(order, offsets, np.array([4, 8, 6]), 2048, "custom")
    with pytest.raises(ValueError, match=match):
        pack_spectrograms(specs, 16, plan)


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_non_finite_spectrogram_poisons_its_sample_only(path, monkeypatch):
    """A NaN in one input gives that sample non-finite logits and a non-finite loss; every other
    sample's logits stay finite (attention and pooling keep samples apart)."""
    if path == "torch":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        backend = "torch"
    else:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        backend = "triton"
    model = ElasticAST(**CONFIG, attention_backend=backend).eval()
    specs = [s.float() for s in make_specs([32, 64, 48, 16], freq_bins=32)]
    specs[1][0, 5, 20] = float("nan")
    logits = model(specs, group_max_seq_len=64)
    assert not torch.isfinite(logits[1]).any()
    assert torch.isfinite(logits[[0, 2, 3]]).all()
    assert not torch.isfinite(F.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))).item()
