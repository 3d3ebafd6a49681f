"""collate_packed / PackedCollator: PackedBatch contents, label order, DataLoader use, model forward."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from elasticast_kernels.data import PackedBatchSampler, PackedCollator, collate_packed
from elasticast_kernels.packing import pack_spectrograms


def make_items(n: int, seed: int = 0, channels: int = 1, freq: int = 64):
    rng = np.random.default_rng(seed)
    return [(torch.randn(channels, freq, 16 * int(rng.integers(1, 7))), int(rng.integers(0, 10))) for _ in range(n)]


def tokens_of(spec: torch.Tensor, patch: int = 16) -> int:
    return (spec.shape[1] // patch) * (spec.shape[2] // patch)


def test_one_pack_matches_pack_spectrograms():
    items = make_items(7)
    batch = collate_packed(items)
    reference = pack_spectrograms([spec for spec, _ in items], 16, None)
    torch.testing.assert_close(batch.patches, reference.patches, rtol=0, atol=0)
    assert torch.equal(batch.cu_seqlens, reference.cu_seqlens) and batch.seqlens == reference.seqlens
    assert batch.sample_index.tolist() == list(range(7)) and batch.num_packs == 1
    assert batch.labels.dtype == torch.int64 and batch.labels.tolist() == [label for _, label in items]


@pytest.mark.parametrize("max_tokens", [24, 40, 100])
def test_token_budget_splits_in_order_and_keeps_labels_with_segments(max_tokens):
    items = make_items(12, seed=max_tokens)
    batch = collate_packed(items, max_tokens=max_tokens)
    assert batch.sample_index.tolist() == list(range(12))  # in-order next fit keeps the input order
    seqlens = np.array(batch.seqlens)
    for first, last in zip(batch.pack_offsets[:-1], batch.pack_offsets[1:]):
        assert seqlens[first:last].sum() <= max_tokens
    for segment, sample in enumerate(batch.sample_index.tolist()):
        assert batch.labels[segment] == items[sample][1]
        assert batch.seqlens[segment] == tokens_of(items[sample][0])


def test_sampler_step_needs_at_most_packs_per_step_packs():
    items = make_items(200, seed=3)
    lengths = [tokens_of(spec) for spec, _ in items]
    sampler = PackedBatchSampler(lengths, 48, packs_per_step=3, seed=1)
    collator = PackedCollator(max_tokens=48)
    for step in sampler:
        batch = collator([items[i] for i in step])
        assert 1 <= batch.num_packs <= 3 and batch.num_samples == len(step)


@pytest.mark.parametrize(
    "labels, dtype, shape",
    [
        ([1, 2, 3], torch.int64, (3,)),
        ([0.5, 1.0, 2.0], torch.float32, (3,)),
        ([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])], torch.float32, (3, 2)),
        ([np.int64(4), np.int64(5), np.int64(6)], torch.int64, (3,)),
    ],
)
def test_label_kinds(labels, dtype, shape):
    specs = [torch.randn(1, 32, 32) for _ in labels]
    batch = collate_packed(list(zip(specs, labels)))
    assert batch.labels.dtype == dtype and tuple(batch.labels.shape) == shape


def test_bare_spectrograms_have_no_labels():
    batch = collate_packed([torch.randn(1, 32, 16), torch.randn(1, 32, 48)])
    assert batch.labels is None and batch.seqlens == (2, 6)


@pytest.mark.parametrize(
    "batch, error",
    [
        ([], ValueError),
        ([(torch.randn(1, 32, 16), 1), torch.randn(1, 32, 16)], TypeError),
        ([(torch.randn(1, 32, 16), 1, 2)], ValueError),
        ([(torch.randn(32, 16), 1)], TypeError),
        ([("not a tensor", 1)], TypeError),
        ([(torch.randn(1, 32, 16), torch.zeros(2)), (torch.randn(1, 32, 16), torch.zeros(3))], ValueError),
        ([(torch.randn(1, 32, 16), "cat")], TypeError),
    ],
)
def test_bad_batches(batch, error):
    with pytest.raises(error):
        collate_packed(batch)


def test_oversize_sample_gets_a_pack_of_its_own():
    """A sample over the budget (the sampler's oversize="own_pack") is alone in its pack; the
    others are packed by in-order next-fit as the budget allows, and the labels follow."""
    tokens = [2, 8, 1, 1, 9, 3]  # budget 4: [0] [1] [2, 3] [4] [5]
    batch = [(torch.randn(1, 16, 16 * t), i) for i, t in enumerate(tokens)]  # one frequency patch
    packed = collate_packed(batch, max_tokens=4)
    assert list(packed.seqlens) == tokens and packed.labels.tolist() == list(range(6))
    assert list(packed.pack_offsets) == [0, 1, 2, 4, 5, 6]
    assert list(packed.pack_tokens()) == [2, 8, 2, 9, 3]


@pytest.mark.parametrize("options,error,match", [
    (dict(patch_size=0), ValueError, "patch_size must be >= 1, got 0"),
    (dict(patch_size=16.0), TypeError, "patch_size must be an int, got float"),
    (dict(max_tokens=0), ValueError, "max_tokens must be >= 1, got 0"),
    (dict(max_tokens=True), TypeError, "max_tokens must be an int, got bool"),
])
def test_bad_options_name_the_argument(options, error, match):
    with pytest.raises(error, match=match):
        collate_packed(make_items(2), **options)
    with pytest.raises(error, match=match):
        PackedCollator(**options)


def test_collator_binds_options_and_pickles():
    items = make_items(5)
    collator = PackedCollator(patch_size=16, max_tokens=30)
    clone = pickle.loads(pickle.dumps(collator))
    a, b = clone(items), collate_packed(items, 16, False, 30)
    assert torch.equal(a.patches, b.patches) and a.pack_offsets == b.pack_offsets and torch.equal(a.labels, b.labels)
    assert "max_tokens=30" in repr(collator)
    with pytest.raises(ValueError):
        PackedCollator(patch_size=0)
    with pytest.raises(ValueError):
        PackedCollator(max_tokens=0)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_dataloader_with_packed_sampler(num_workers):
    items = make_items(60, seed=5)
    lengths = [tokens_of(spec) for spec, _ in items]
    sampler = PackedBatchSampler(lengths, 64, seed=2)
    loader = DataLoader(items, batch_sampler=sampler, collate_fn=PackedCollator(), num_workers=num_workers,
                        multiprocessing_context="fork" if num_workers else None)
    seen = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(sampler)
        for batch, step in zip(batches, sampler):
            assert batch.total_tokens <= 64
            assert batch.labels.tolist() == [items[i][1] for i in step]
        seen.append(sorted(i for step in sampler for i in step))
    assert seen[0] == seen[1] == list(range(60))


@pytest.mark.gpu
def test_pinned_labels_and_patches():
    batch = collate_packed(make_items(4), pin_memory=True)
    assert batch.patches.is_pinned() and batch.labels.is_pinned()


def test_model_forward_takes_the_packed_batch(torch_cpu_path):
    models = pytest.importorskip("elasticast_kernels.models")
    items = make_items(6, seed=9, freq=32)
    model = models.ElasticAST(sample_size=(32, 96), patch_size=16, num_classes=5, dim=32, depth=1, heads=2,
                              channels=1).eval()
    batch = collate_packed(items, max_tokens=12)
    with torch.no_grad():
        from_batch = model(batch)
        from_list = model([spec for spec, _ in items])
    assert from_batch.shape == (6, 5)
    torch.testing.assert_close(from_batch, from_list, rtol=1e-4, atol=1e-5)
