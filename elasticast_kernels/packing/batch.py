"""PackedBatch: packed patches plus everything a model needs about the packed layout."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(eq=False)
class PackedBatch:
    """Patches of several spectrograms laid end to end (one segment per sample).

    Attributes:
        patches: ``[total_tokens, C*p*p]``, dtype and device of the input spectrograms.
        freq_idx: int32 ``[total_tokens]``, frequency patch index of every token (same device).
        time_idx: int32 ``[total_tokens]``, time patch index of every token (same device).
        cu_seqlens: int32 ``[num_samples + 1]``, segment boundaries (same device).
        max_seqlen: longest segment, in tokens.
        seqlens: host copy of the tokens per segment (no device sync needed to read it).
        sample_index: int64 CPU ``[num_samples]``; segment j holds input sample sample_index[j].
        pack_offsets: ``num_packs + 1`` segment offsets; segments ``pack_offsets[p]:pack_offsets[p+1]``
            share pack p (segments are in plan order).
        labels: optional per-segment labels, in segment order (set by the data collate function).
    """

    patches: torch.Tensor
    freq_idx: torch.Tensor
    time_idx: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    seqlens: tuple[int, ...]
    sample_index: torch.Tensor
    pack_offsets: tuple[int, ...]
    labels: torch.Tensor | None = None

    @property
    def num_samples(self) -> int:
        return len(self.seqlens)

    @property
    def total_tokens(self) -> int:
        return int(self.patches.shape[0])

    @property
    def num_packs(self) -> int:
        return len(self.pack_offsets) - 1

    @property
    def device(self) -> torch.device:
        return self.patches.device

    def pack_tokens(self) -> tuple[int, ...]:
        """Tokens in each pack (host values)."""
        return tuple(
            sum(self.seqlens[self.pack_offsets[p] : self.pack_offsets[p + 1]]) for p in range(self.num_packs)
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PackedBatch":
        """Move the device tensors (not ``sample_index``, which stays on the CPU) to ``device``."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(
            self,
            patches=move(self.patches),
            freq_idx=move(self.freq_idx),
            time_idx=move(self.time_idx),
            cu_seqlens=move(self.cu_seqlens),
            labels=None if self.labels is None else move(self.labels),
        )

    def pin_memory(self) -> "PackedBatch":
        """Page-locked copies of the CPU tensors (what a DataLoader with pin_memory=True calls)."""
        pin = lambda t: t if t.is_pinned() else t.pin_memory()  # noqa: E731
        return replace(
            self,
            patches=pin(self.patches),
            freq_idx=pin(self.freq_idx),
            time_idx=pin(self.time_idx),
            cu_seqlens=pin(self.cu_seqlens),
            labels=None if self.labels is None else pin(self.labels),
        )
