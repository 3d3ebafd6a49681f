"""PackedBatch: packed patches, their positions and the packed layout they follow."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from elasticast_kernels._checks import check_int
from elasticast_kernels.layout import SeqLayout

_INDEX_DTYPES = (torch.int32, torch.int64)


@dataclass(eq=False)
class PackedBatch:
    """Patches of several spectrograms laid end to end (one segment per sample).

    Attributes:
        patches: ``[total_tokens, C*p*p]``, dtype and device of the input spectrograms.
        freq_idx: int32 ``[total_tokens]``, frequency patch index of every token (same device).
        time_idx: int32 ``[total_tokens]``, time patch index of every token (same device).
        layout: the segments and packs (`elasticast_kernels.layout.SeqLayout`); its
            ``cu_seqlens`` lives on the patches' device. ``cu_seqlens``, ``seqlens``,
            ``max_seqlen``, ``pack_offsets`` and ``pack_tokens()`` read through to it.
        sample_index: int64 CPU ``[num_samples]``, a permutation: segment j holds input sample
            ``sample_index[j]``.
        labels: optional per-segment labels ``[num_samples, ...]``, in segment order (set by the
            data collate function).
        grid_shapes: optional host ints, per segment the ``(freq_patches, time_patches)`` grid of
            its sample (before any token dropout, so a segment holds at most ``f * t`` tokens);
            set by `pack_spectrograms`. A model reads a sample's time extent here without a
            device sync (e.g. to extend its time positions past the table).

    The fields are checked against each other when the batch is built (host facts only, no
    device sync): token counts, dtypes, devices, that ``sample_index`` is a permutation and that
    every segment fits its grid shape.

    Raises:
        TypeError / ValueError: a field of the wrong type, dtype, shape or device, naming it.
    """

    patches: torch.Tensor
    freq_idx: torch.Tensor
    time_idx: torch.Tensor
    layout: SeqLayout
    sample_index: torch.Tensor
    labels: torch.Tensor | None = None
    grid_shapes: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the fields against each other (host facts only; the model calls it again,
        since fields can be reassigned after construction). Raises TypeError / ValueError."""
        if not isinstance(self.layout, SeqLayout):
            raise TypeError(f"PackedBatch.layout must be a SeqLayout, got {type(self.layout).__name__}")
        patches = self.patches
        if not isinstance(patches, torch.Tensor) or patches.dim() != 2:
            shape = tuple(patches.shape) if isinstance(patches, torch.Tensor) else type(patches).__name__
            raise ValueError(f"PackedBatch.patches must be a [total_tokens, patch_dim] tensor, got {shape}")
        total = self.layout.total_tokens
        if patches.shape[0] != total:
            raise ValueError(f"PackedBatch.patches has {patches.shape[0]} tokens but the layout covers {total}")
        if self.layout.device != patches.device:
            raise ValueError(f"PackedBatch.layout.cu_seqlens is on {self.layout.device}, patches on {patches.device}")
        for name in ("freq_idx", "time_idx"):
            index = getattr(self, name)
            if not isinstance(index, torch.Tensor) or index.dtype not in _INDEX_DTYPES or tuple(index.shape) != (total,):
                got = f"{index.dtype} {tuple(index.shape)}" if isinstance(index, torch.Tensor) else type(index).__name__
                raise ValueError(f"PackedBatch.{name} must be an int32 or int64 [total_tokens={total}] tensor, got {got}")
            if index.device != patches.device:
                raise ValueError(f"PackedBatch.{name} is on {index.device}, patches on {patches.device}")
        self._check_sample_index()
        if self.labels is not None:
            if not isinstance(self.labels, torch.Tensor) or self.labels.dim() < 1:
                raise ValueError("PackedBatch.labels must be None or a tensor [num_samples, ...]")
            if self.labels.shape[0] != self.num_samples:
                raise ValueError(
                    f"PackedBatch.labels has {self.labels.shape[0]} rows for {self.num_samples} samples"
                )
        if self.grid_shapes is not None:
            self._check_grid_shapes()

    def _check_sample_index(self) -> None:
        index = self.sample_index
        if (not isinstance(index, torch.Tensor) or index.dtype != torch.int64 or index.device.type != "cpu"
                or tuple(index.shape) != (self.num_samples,)):
            got = f"{index.dtype} {tuple(index.shape)} on {index.device}" if isinstance(index, torch.Tensor) \
                else type(index).__name__
            raise ValueError(f"PackedBatch.sample_index must be an int64 CPU [num_samples={self.num_samples}] "
                             f"tensor, got {got}")
        values = index.numpy()
        seen = np.zeros(len(values), dtype=bool)
        in_range = (values >= 0) & (values < len(values))
        if in_range.all():
            seen[values] = True
        if not seen.all():
            raise ValueError("PackedBatch.sample_index must be a permutation of range(num_samples) "
                             "(every input sample exactly once)")

    def _check_grid_shapes(self) -> None:
        shapes = self.grid_shapes
        if not isinstance(shapes, (tuple, list)) or len(shapes) != self.num_samples:
            got = len(shapes) if isinstance(shapes, (tuple, list)) else type(shapes).__name__
            raise ValueError(f"PackedBatch.grid_shapes must be None or one (freq, time) pair per segment "
                             f"({self.num_samples}), got {got}")
        for j, (shape, tokens) in enumerate(zip(shapes, self.seqlens)):
            if not isinstance(shape, (tuple, list)) or len(shape) != 2:
                raise TypeError(f"PackedBatch.grid_shapes[{j}] must be a pair of positive ints, got {shape!r}")
            check_int(f"PackedBatch.grid_shapes[{j}][0]", shape[0], 1)
            check_int(f"PackedBatch.grid_shapes[{j}][1]", shape[1], 1)
            if tokens > shape[0] * shape[1]:
                raise ValueError(f"PackedBatch segment {j} holds {tokens} tokens, more than its grid "
                                 f"{shape[0]} x {shape[1]} (grid_shapes[{j}])")

    # --- the layout, read through -------------------------------------------------------------
    @property
    def cu_seqlens(self) -> torch.Tensor:
        return self.layout.cu_seqlens

    @property
    def seqlens(self) -> tuple[int, ...]:
        return self.layout.seqlens

    @property
    def max_seqlen(self) -> int:
        return self.layout.max_seqlen

    @property
    def pack_offsets(self) -> tuple[int, ...]:
        return self.layout.pack_offsets

    @property
    def num_samples(self) -> int:
        return self.layout.num_samples

    @property
    def total_tokens(self) -> int:
        return int(self.patches.shape[0])

    @property
    def num_packs(self) -> int:
        return self.layout.num_packs

    @property
    def device(self) -> torch.device:
        return self.patches.device

    def pack_tokens(self) -> tuple[int, ...]:
        """Tokens in each pack (host values)."""
        return self.layout.pack_tokens()

    # --- moving -------------------------------------------------------------------------------
    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PackedBatch":
        """Move the device tensors (not ``sample_index``, which stays on the CPU) to ``device``."""
        def move(t):
            return t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            patches=move(self.patches),
            freq_idx=move(self.freq_idx),
            time_idx=move(self.time_idx),
            layout=self.layout.to(device, non_blocking=non_blocking),
            labels=None if self.labels is None else move(self.labels),
        )

    def pin_memory(self) -> "PackedBatch":
        """Page-locked copies of the CPU tensors (what a DataLoader with pin_memory=True calls)."""
        def pin(t):
            return t if t.is_pinned() else t.pin_memory()

        return replace(
            self,
            patches=pin(self.patches),
            freq_idx=pin(self.freq_idx),
            time_idx=pin(self.time_idx),
            layout=self.layout.pin_memory(),
            labels=None if self.labels is None else pin(self.labels),
        )
