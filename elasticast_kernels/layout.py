"""The packed layout: samples as segments of one token axis, grouped into packs.

Every packed tensor in this package is ``[total_tokens, ...]`` with the samples laid end to end.
`SeqLayout` is the one description of that layout: the tokens of each segment (``seqlens``, on the
host), the segments of each pack (``pack_offsets``, on the host) and ``cu_seqlens`` (int32, on the
data's device) for the kernels. Everything else is derived from those facts here, once:
``max_seqlen``, ``total_tokens``, tokens per pack, segment ids, equal-length groups.

Host facts stay on the host, so no op or backend ever needs a device-to-host sync to learn the
layout. Tensors derived from the layout (masks, index tensors) are cached on the layout object,
so the encoder builds them once per forward, not once per layer.

The invariants are checked once, when a layout is built: lengths are non-negative ints,
``pack_offsets`` rise from 0 to the number of segments, ``cu_seqlens`` is int32 ``[n + 1]`` and
(where reading it is free: on the CPU) equals the running sum of ``seqlens``.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = [
    "SeqLayout", "host_to_device", "check_offsets", "cumulative_lengths", "pack_token_counts", "segment_ids",
    "MAX_TOTAL_TOKENS",
]

MAX_TOTAL_TOKENS = 2**31 - 1  # cu_seqlens are int32


def host_to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy a small CPU tensor of host facts to ``device`` without a host-device sync.

    A plain ``.to("cuda")`` from pageable memory waits for the stream (every queued kernel);
    a copy from pinned memory with ``non_blocking=True`` just queues (the caching host allocator
    keeps the pinned block alive until the copy is done).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def cumulative_lengths(lengths: Any) -> np.ndarray:
    """int64 ``[n + 1]``: ``0`` followed by the running sum of ``lengths`` (non-negative, each below
    2^31, as `SeqLayout` and `PackPlan` check, so the int64 sum cannot wrap)."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def pack_token_counts(seqlens: Any, pack_offsets: Any) -> np.ndarray:
    """int64 ``[num_packs]``: tokens in each pack, where pack ``p`` holds the segments
    ``pack_offsets[p]:pack_offsets[p + 1]`` and segment ``j`` holds ``seqlens[j]`` tokens."""
    cum = cumulative_lengths(seqlens)
    offsets = np.asarray(pack_offsets, dtype=np.int64)
    return cum[offsets[1:]] - cum[offsets[:-1]]


def check_offsets(values: Sequence[int], total: int, name: str = "cu_seqlens", total_name: str = "total_tokens") -> None:
    """Raise ValueError unless ``values`` (host ints) start at 0, never decrease and end at ``total``."""
    if values[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {values[0]}")
    for i in range(1, len(values)):
        if values[i] < values[i - 1]:
            raise ValueError(
                f"{name} must be non-decreasing, but {name}[{i}]={values[i]} < {name}[{i - 1}]={values[i - 1]}"
            )
    if values[-1] != total:
        raise ValueError(f"{name}[-1]={values[-1]} must equal {total_name}={total}")


def segment_ids(cu_seqlens: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """int64 ``[total_tokens]``: the segment of every token, computed where ``cu_seqlens`` lives
    (``total_tokens`` is passed so that a CUDA ``repeat_interleave`` needs no sync)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    ids = torch.arange(lengths.numel(), device=cu_seqlens.device)
    return torch.repeat_interleave(ids, lengths, output_size=total_tokens)


def _as_int_tuple(name: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    try:
        items = list(values)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {type(values).__name__}") from None
    out = []
    for i, value in enumerate(items):
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name}[{i}] must be an int, got bool")
        try:
            out.append(operator.index(value))
        except TypeError:
            raise TypeError(f"{name}[{i}] must be an int, got {type(value).__name__}") from None
    return tuple(out)


@dataclass(frozen=True, eq=False, init=False)
class SeqLayout:
    """Segments (one per sample) of a packed token axis and the packs that group them.

    Build one with ``SeqLayout(seqlens, pack_offsets, device=...)`` (``cu_seqlens`` derived from
    ``seqlens`` and copied to ``device`` without a sync) or ``SeqLayout(seqlens, pack_offsets,
    cu_seqlens)`` with a ``cu_seqlens`` already on its device. A packing plan gives its layout
    with `elasticast_kernels.packing.PackPlan.layout`.

    Attributes:
        seqlens: tokens per segment (host ints).
        pack_offsets: ``num_packs + 1`` segment offsets: segments ``pack_offsets[p]:pack_offsets[p + 1]``
            share pack ``p`` (one pack holding every segment when not given).
        cu_seqlens: int32 ``[num_samples + 1]`` segment offsets, on the data's device.

    Raises:
        TypeError: a length or offset that is not an int; ``cu_seqlens`` not a tensor.
        ValueError: a negative length, more than 2^31 - 1 tokens (one segment or all of them),
            ``pack_offsets`` that do not rise from 0 to ``num_samples``, ``cu_seqlens`` of the
            wrong dtype or shape, or (on the CPU) values that disagree with ``seqlens``. A layout
            restored from a pickle is checked the same way.
    """

    seqlens: tuple[int, ...]
    pack_offsets: tuple[int, ...]
    cu_seqlens: torch.Tensor
    _cache: dict = field(repr=False)

    def __init__(
        self,
        seqlens: Sequence[int],
        pack_offsets: Sequence[int] | None = None,
        cu_seqlens: torch.Tensor | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        lengths = _as_int_tuple("seqlens", seqlens)
        for i, n in enumerate(lengths):
            if n < 0:
                raise ValueError(f"seqlens[{i}] = {n} is negative")
            if n > MAX_TOTAL_TOKENS:  # checked one by one first, so the running sum below cannot wrap
                raise ValueError(f"seqlens[{i}] = {n} is more than int32 cu_seqlens allow (2**31 - 1)")
        total = sum(lengths)
        if total > MAX_TOTAL_TOKENS:
            raise ValueError(f"seqlens hold {total} tokens in all, more than int32 cu_seqlens allow (2**31 - 1)")
        cum = cumulative_lengths(lengths)
        offsets = (0, len(lengths)) if pack_offsets is None else _as_int_tuple("pack_offsets", pack_offsets)
        if (len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(lengths)
                or any(b < a for a, b in zip(offsets, offsets[1:]))):
            raise ValueError(f"pack_offsets must rise from 0 to num_samples={len(lengths)}, got {list(offsets)}")
        if cu_seqlens is None:
            cu_seqlens = host_to_device(torch.from_numpy(cum.astype(np.int32)), device or "cpu")
        else:
            self._check_cu_seqlens(cu_seqlens, cum, device)
        for name, value in (("seqlens", lengths), ("pack_offsets", offsets), ("cu_seqlens", cu_seqlens),
                            ("_cache", {})):
            object.__setattr__(self, name, value)  # the frozen dataclass way of initialising

    @staticmethod
    def _check_cu_seqlens(cu_seqlens: Any, cum: np.ndarray, device: torch.device | str | None) -> None:
        if not isinstance(cu_seqlens, torch.Tensor):
            raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
        if cu_seqlens.dtype != torch.int32 or tuple(cu_seqlens.shape) != (len(cum),):
            raise ValueError(
                f"cu_seqlens must be int32 of shape ({len(cum)},) for {len(cum) - 1} segments, "
                f"got {cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}"
            )
        if device is not None and cu_seqlens.device != torch.device(device):
            raise ValueError(f"cu_seqlens is on {cu_seqlens.device}, not on device={device}")
        # Reading the values is free on the CPU; on a GPU it would be a sync, and there
        # cu_seqlens comes from these very seqlens (pack_spectrograms, SeqLayout.to).
        if cu_seqlens.device.type == "cpu" and not np.array_equal(cu_seqlens.numpy(), cum):
            bad = int(np.argmax(cu_seqlens.numpy() != cum))
            raise ValueError(
                f"cu_seqlens disagrees with seqlens: cu_seqlens[{bad}] = {int(cu_seqlens[bad])}, "
                f"but the running sum of seqlens is {int(cum[bad])} there"
            )

    # --- derived host facts -----------------------------------------------------------------
    @property
    def max_seqlen(self) -> int:
        return max(self.seqlens, default=0)

    @property
    def total_tokens(self) -> int:
        return sum(self.seqlens)

    @property
    def num_samples(self) -> int:
        return len(self.seqlens)

    @property
    def num_packs(self) -> int:
        return len(self.pack_offsets) - 1

    @property
    def device(self) -> torch.device:
        return self.cu_seqlens.device

    def pack_tokens(self) -> tuple[int, ...]:
        """Tokens in each pack."""
        return tuple(int(n) for n in pack_token_counts(self.seqlens, self.pack_offsets))

    def segment_starts(self) -> tuple[int, ...]:
        """First token of each segment (host copy of ``cu_seqlens[:-1]``)."""
        return tuple(int(s) for s in cumulative_lengths(self.seqlens)[:-1])

    def segment_ids(self) -> torch.Tensor:
        """int64 ``[total_tokens]``: the segment of every token, on the layout's device (cached)."""
        return self.cached("segment_ids", lambda: segment_ids(self.cu_seqlens, self.total_tokens))

    def cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """``build()`` once per layout and key (masks, index tensors shared by every layer)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    # --- moving -----------------------------------------------------------------------------
    def to(self, device: torch.device | str, non_blocking: bool = False) -> "SeqLayout":
        """The same layout with ``cu_seqlens`` on ``device`` (``self`` when it is there already)."""
        device = torch.device(device)
        if self.cu_seqlens.device == device:
            return self
        moved = self.cu_seqlens.to(device, non_blocking=non_blocking)
        return SeqLayout(self.seqlens, self.pack_offsets, moved)

    def pin_memory(self) -> "SeqLayout":
        """The same layout with a page-locked CPU ``cu_seqlens``."""
        if self.cu_seqlens.is_pinned():
            return self
        return SeqLayout(self.seqlens, self.pack_offsets, self.cu_seqlens.pin_memory())

    def __getstate__(self) -> dict:
        # The cache holds device tensors derived from the layout: rebuilt where the layout lands.
        return {"seqlens": self.seqlens, "pack_offsets": self.pack_offsets, "cu_seqlens": self.cu_seqlens}

    def __setstate__(self, state: Any) -> None:
        # A pickle is input like any other: the restored layout passes the constructor's checks.
        keys = ("seqlens", "pack_offsets", "cu_seqlens")
        if not isinstance(state, dict) or set(state) != set(keys):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"a pickled SeqLayout must hold {list(keys)}, got {got}")
        SeqLayout.__init__(self, *(state[key] for key in keys))

    def __repr__(self) -> str:
        return (f"SeqLayout(num_samples={self.num_samples}, num_packs={self.num_packs}, "
                f"total_tokens={self.total_tokens}, max_seqlen={self.max_seqlen}, device={self.device})")
