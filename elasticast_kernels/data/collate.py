"""Collate ``(spectrogram, label)`` samples into a :class:`~elasticast_kernels.packing.PackedBatch`.

Runs in the data-loader worker, so patch gathering (the native packer) overlaps with the model
step in the main process, and the model's ``forward`` takes the ``PackedBatch`` as it is.
Typical use::

    sampler = PackedBatchSampler(lengths, max_tokens=2048)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=4,
                        collate_fn=PackedCollator(patch_size=16), pin_memory=True)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            logits = model(batch.to("cuda", non_blocking=True))
            loss = F.cross_entropy(logits, batch.labels.to("cuda"))
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch

from elasticast_kernels._checks import check_int, check_optional_int
from elasticast_kernels.packing import PackedBatch, pack_lengths, pack_spectrograms

__all__ = ["collate_packed", "PackedCollator"]


def _check_options(patch_size: object, max_tokens: object) -> None:
    """Raises TypeError/ValueError for a patch size or token budget that is not a positive int."""
    check_int("patch_size", patch_size, 1)
    check_optional_int("max_tokens", max_tokens, 1)


def _split_items(batch: Sequence[Any]) -> tuple[list[torch.Tensor], list[Any] | None]:
    """Samples are ``(spectrogram, label)`` pairs (tuple/list) or bare spectrograms (no labels)."""
    if len(batch) == 0:
        raise ValueError("batch is empty: a packed step needs at least one sample")
    first_is_pair = isinstance(batch[0], (tuple, list))
    specs, labels = [], []
    for position, item in enumerate(batch):
        if isinstance(item, (tuple, list)) != first_is_pair:
            raise TypeError("batch mixes (spectrogram, label) pairs and bare spectrograms")
        if first_is_pair:
            if len(item) != 2:
                raise ValueError(f"batch[{position}] must be (spectrogram, label), got {len(item)} items")
            spec, label = item
            labels.append(label)
        else:
            spec = item
        if not isinstance(spec, torch.Tensor) or spec.dim() != 3:
            shape = tuple(spec.shape) if isinstance(spec, torch.Tensor) else type(spec).__name__
            raise TypeError(f"batch[{position}]'s spectrogram must be a [C, F, T] tensor, got {shape}")
        specs.append(spec)
    return specs, (labels if first_is_pair else None)


def _stack_labels(labels: list[Any]) -> torch.Tensor:
    """ints -> int64 ``[N]``; floats -> float32 ``[N]``; tensors (e.g. multi-hot) -> stacked ``[N, ...]``."""
    if all(isinstance(label, torch.Tensor) for label in labels):
        shapes = {tuple(label.shape) for label in labels}
        if len(shapes) != 1:
            raise ValueError(f"tensor labels must share one shape, got shapes {sorted(shapes)}")
        return torch.stack([label.detach() for label in labels])
    try:
        stacked = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"labels must be numbers or tensors of one shape: {error}") from None
    return stacked.float() if stacked.is_floating_point() else stacked


def collate_packed(
    batch: Sequence[Any],
    patch_size: int = 16,
    pin_memory: bool = False,
    max_tokens: int | None = None,
) -> PackedBatch:
    """Pack one step's samples into a ``PackedBatch`` with ``labels`` in segment order.

    Args:
        batch: the samples of one step, in sampler order: ``(spectrogram, label)`` pairs or bare
            spectrograms; each spectrogram ``[C, F, T]`` with F and T multiples of ``patch_size``
            (same C, dtype and device for all).
        patch_size: patch side ``p``.
        pin_memory: gather the patches straight into pinned host memory.
        max_tokens: ``None`` puts the whole step in one pack (what a
            :class:`~elasticast_kernels.data.PackedBatchSampler` step with ``packs_per_step=1``
            is). With a budget, the samples are split into packs by in-order next-fit, the
            reference's grouping rule; for a sampler step of ``packs_per_step`` packs, given in
            pack order, that yields at most ``packs_per_step`` packs, each within the budget
            except a sample longer than the budget, which gets a pack of its own (as the
            sampler's ``oversize="own_pack"`` planned it).

    Returns:
        ``PackedBatch``; ``labels``: int64 ``[N]`` for int labels, float32 ``[N]`` for float
        labels, stacked ``[N, ...]`` for tensor labels, ``None`` without labels; ``labels[j]``
        belongs to segment ``j`` (sample ``sample_index[j]`` of ``batch``). Both plans used here
        (one pack, or in-order next-fit) keep the input order, so ``sample_index`` is
        ``arange(N)`` and ``labels`` also lines up with the model's logits, which come back in
        input order: ``F.cross_entropy(model(batch), batch.labels)``.

    Raises:
        ValueError / TypeError: empty batch, malformed items or labels; the errors of
        :func:`~elasticast_kernels.packing.pack_spectrograms`.
    """
    _check_options(patch_size, max_tokens)
    specs, labels = _split_items(batch)
    plan = None
    if max_tokens is not None:
        tokens = [(spec.shape[1] // patch_size) * (spec.shape[2] // patch_size) for spec in specs]
        plan = pack_lengths(tokens, max_tokens, "next_fit")
    packed = pack_spectrograms(specs, patch_size, plan, pin_memory=pin_memory)
    if labels is not None:
        stacked = _stack_labels(labels)
        # Segments follow the plan order; sample_index maps segment -> position in `batch`.
        stacked = stacked.index_select(0, packed.sample_index)
        packed = replace(packed, labels=stacked.pin_memory() if pin_memory else stacked)
    return packed


class PackedCollator:
    """``collate_fn`` with bound options (picklable, so it works with spawned loader workers).

    ``PackedCollator(patch_size=16, pin_memory=False, max_tokens=None)(batch)`` is
    ``collate_packed(batch, patch_size, pin_memory, max_tokens)``.
    """

    def __init__(self, patch_size: int = 16, pin_memory: bool = False, max_tokens: int | None = None) -> None:
        _check_options(patch_size, max_tokens)
        self.patch_size = patch_size
        self.pin_memory = bool(pin_memory)
        self.max_tokens = max_tokens

    def __call__(self, batch: Sequence[Any]) -> PackedBatch:
        return collate_packed(batch, self.patch_size, self.pin_memory, self.max_tokens)

    def __repr__(self) -> str:
        return f"PackedCollator(patch_size={self.patch_size}, pin_memory={self.pin_memory}, max_tokens={self.max_tokens})"
