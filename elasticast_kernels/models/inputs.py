"""Host-side batch preparation for a patch model on the packed layout.

A model describes how it reads spectrograms (`PatchGrid`: channels, patch size, the extent of its
positional tables and the rule past the time table); these functions turn a caller's input into
the `PackedBatch` its network runs on, and the network's per-segment output back into the input
order::

    prepared = prepare_spectrograms(specs, grid, max_tokens=2048, strategy="next_fit", like=weight)
    x = embed(prepared.batch.patches) + freq_table[prepared.batch.freq_idx] \\
        + prepared.time_table(time_table)[prepared.batch.time_idx]
    ... encoder on x with prepared.batch.layout, one output row per segment ...
    out = prepared.in_input_order(per_segment)

Nothing here knows a model's parameters: `ElasticAST` uses it, and so can any ViT-style model on
the packed layout. Everything works on Python ints and on the inputs' shapes, never on their
values (except free checks of CPU tensors), so it costs no host-device sync, and it is never
traced by torch.compile.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from elasticast_kernels._checks import check_int
from elasticast_kernels.layout import MAX_TOTAL_TOKENS, SeqLayout, host_to_device
from elasticast_kernels.models.positions import (
    PAST_TIME_TABLE,
    check_time_extents,
    extended_time_table,
    stretch_time_positions,
)
from elasticast_kernels.packing import PackedBatch, PackPlan, pack_lengths, pack_spectrograms
from elasticast_kernels.packing.tensors import axis_patches, stride_pair

KeepCounts = Callable[[Sequence[int]], "list[int] | None"]

__all__ = ["PatchGrid", "PreparedBatch", "prepare_packed", "prepare_spectrograms", "token_keep_counts"]


def host_side(fn: Callable) -> Callable:
    """``torch.compiler.disable(fn)``, applied at the first call: host-side planning and packing is
    never traced, and importing a model does not pay for importing torch._dynamo (~2 s, in every
    process of a distributed run) until something runs."""
    disabled = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal disabled
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return call


@dataclass(frozen=True)
class PatchGrid:
    """How a model cuts ``[C, F, T]`` spectrograms into tokens, and where its position tables end.

    Attributes:
        channels: C of every input.
        patch_size: p, the side of the square patches.
        freq_rows: rows of the frequency position table: the most frequency patches an input may have.
        time_rows: rows of the time position table.
        past_time_table: what an input longer than ``time_rows`` time patches gets (one of
            `elasticast_kernels.models.positions.PAST_TIME_TABLE`).
        stride: ``(stride_f, stride_t)`` between patches (None: p, non-overlapping, and then F and
            T must be multiples of p); the token counts and order of `pack_spectrograms`.
    """

    channels: int
    patch_size: int
    freq_rows: int
    time_rows: int
    past_time_table: str = "interpolate"
    stride: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.past_time_table not in PAST_TIME_TABLE:
            raise ValueError(f"past_time_table must be one of {PAST_TIME_TABLE}, got {self.past_time_table!r}")
        object.__setattr__(self, "stride", stride_pair(self.stride, self.patch_size))

    @property
    def patch_dim(self) -> int:
        """Elements of one token's patch vector: ``C * p * p``."""
        return self.channels * self.patch_size * self.patch_size

    def shape_of(self, i: int, spec: torch.Tensor) -> tuple[int, int]:
        """``(freq_patches, time_patches)`` of sample ``i``; ValueError naming it unless it is
        ``[channels, F, T]`` that the patches fit (see `pack_spectrograms`) with no more frequency
        patches than the frequency table has rows."""
        if spec.dim() != 3 or spec.shape[0] != self.channels:
            raise ValueError(f"sample {i} must be [C={self.channels}, F, T], got shape {tuple(spec.shape)}")
        _, freq, time = spec.shape
        try:
            freq_patches = axis_patches(freq, self.patch_size, self.stride[0], "F")
            time_patches = axis_patches(time, self.patch_size, self.stride[1], "T")
        except ValueError as error:
            hint = " (crop T to a multiple of the patch size)" if "multiple" in str(error) else ""
            raise ValueError(f"sample {i}: {error}{hint}") from None
        if freq_patches > self.freq_rows:
            raise ValueError(f"sample {i} has F={freq} mel bins: {freq_patches} frequency patches, more than the "
                             f"{self.freq_rows} rows of the frequency positional table")
        return freq_patches, time_patches


@dataclass(frozen=True)
class PreparedBatch:
    """A batch ready for a model's network.

    Attributes:
        batch: the packed tokens in segment order, token dropout applied; ``batch.time_idx``
            indexes ``time_table(table)``.
        stretched: lengths (in time patches) of the interpolated table copies that the long
            samples' ``time_idx`` point at; empty when every sample is within the table.
    """

    batch: PackedBatch
    stretched: tuple[int, ...] = ()

    def time_table(self, table: torch.Tensor) -> torch.Tensor:
        """The model's time table ``[rows, ...]``, extended with the copies this batch needs."""
        return extended_time_table(table, self.stretched)

    @host_side
    def in_input_order(self, values: torch.Tensor) -> torch.Tensor:
        """``values [num_samples, ...]`` in segment order -> the same rows in the input order."""
        order = self.batch.sample_index.numpy()
        if np.array_equal(order, np.arange(len(order))):
            return values
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return values.index_select(0, host_to_device(torch.from_numpy(inverse), values.device))


def token_keep_counts(
    lengths: Sequence[int],
    *,
    training: bool,
    token_dropout_prob: float | None,
    random_token_dropout: float,
    eval_token_dropout: float,
) -> list[int] | None:
    """How many tokens each sample keeps, or None when no token dropout applies.

    Training: ``max(1, int(n * (1 - p)))`` with the fixed ``p = token_dropout_prob``, or with
    ``p ~ U(0, random_token_dropout)`` drawn per sample (torch's CPU generator) when that is > 0.
    Eval: ``max(1, int(n * eval_token_dropout))`` when ``eval_token_dropout > 0`` (the fraction KEPT).
    """
    if training:
        if random_token_dropout > 0:
            probs = [float(torch.rand(())) * random_token_dropout for _ in lengths]
        elif token_dropout_prob:
            probs = [float(token_dropout_prob)] * len(lengths)
        else:
            return None
        return [max(1, int(n * (1 - p))) for n, p in zip(lengths, probs)]
    if eval_token_dropout > 0:
        return [max(1, int(n * eval_token_dropout)) for n in lengths]
    return None


# --------------------------------------------------------------------------------------------------
# A list of spectrograms
# --------------------------------------------------------------------------------------------------
@host_side
def prepare_spectrograms(
    samples: object,
    grid: PatchGrid,
    *,
    group_samples: bool = True,
    max_tokens: int = 2048,
    strategy: str = "next_fit",
    keep_counts: KeepCounts | None = None,
    like: torch.Tensor | None = None,
) -> PreparedBatch:
    """Check, plan, pack and drop tokens: ``samples`` -> a `PreparedBatch`.

    Args:
        samples: a list of ``[C, F, T]`` tensors (one dtype and device); with
            ``group_samples=False`` a list of rows, each a non-empty list of such tensors, every row
            one pack as given (no token limit).
        grid: the model's `PatchGrid`.
        max_tokens: most tokens per pack (after token dropout), an int in ``[1, 2**31 - 1]``; a
            longer sample gets a pack of its own.
        strategy: the `elasticast_kernels.packing.pack_lengths` strategy.
        keep_counts: tokens kept per sample from the full counts (input order), or None for all
            (token dropout; the kept tokens are drawn with ``torch.randperm`` per sample in input
            order, on torch's CPU generator, so a seeded run keeps the same tokens on any device).
        like: a tensor (e.g. the model's first weight) the samples must share the device with,
            and the dtype unless autocast is on for that device.

    Raises:
        TypeError: ``samples`` is not a list of tensors (or rows of them), a non-float sample.
        ValueError: an empty batch or row, a malformed sample (named), a bad ``max_tokens``, a
            sample past the time table under the ``"error"`` rule, a device or dtype mismatch.
    """
    specs, rows = _flatten(samples, group_samples)
    shapes = [grid.shape_of(i, spec) for i, spec in enumerate(specs)]
    first = specs[0]
    for i, spec in enumerate(specs):
        if spec.dtype != first.dtype or spec.device != first.device:
            raise ValueError(f"sample {i} is {spec.dtype} on {spec.device} but sample 0 is {first.dtype} on {first.device}")
    _check_like("batched_samples", first, like)
    check_time_extents([t for _, t in shapes], grid.time_rows, grid.past_time_table)
    lengths = [f * t for f, t in shapes]
    keep = None if keep_counts is None else keep_counts(lengths)
    plan = _plan(lengths if keep is None else keep, rows, max_tokens, strategy)
    if keep is None:
        batch = pack_spectrograms(specs, grid.patch_size, plan=plan, stride=grid.stride)
    else:  # every sample whole, in plan order, then the kept tokens in the plan's layout
        full = pack_spectrograms([specs[i] for i in plan.order.tolist()], grid.patch_size, stride=grid.stride)
        full = replace(full, sample_index=torch.from_numpy(plan.order.copy()))
        batch = _drop_tokens(full, keep, plan.layout(first.device))
    return PreparedBatch(*stretch_time_positions(batch, grid.time_rows))


def _flatten(samples: object, group_samples: bool) -> tuple[list[torch.Tensor], list[list[int]] | None]:
    """The samples as one flat list, plus the caller's rows (sample indices) when not grouping."""
    if not isinstance(samples, (list, tuple)):
        raise TypeError(f"batched_samples must be a list of [C, F, T] tensors or a PackedBatch, got {type(samples).__name__}")
    if group_samples:
        specs, rows = list(samples), None
    else:
        specs, rows = [], []
        for r, row in enumerate(samples):
            if not isinstance(row, (list, tuple)) or len(row) == 0:
                raise ValueError(f"with group_samples=False, batched_samples[{r}] must be a non-empty list of samples")
            rows.append(list(range(len(specs), len(specs) + len(row))))
            specs.extend(row)
    if not specs:
        raise ValueError("batched_samples is empty")
    for i, spec in enumerate(specs):
        if not isinstance(spec, torch.Tensor):
            raise TypeError(f"sample {i} must be a torch.Tensor, got {type(spec).__name__}")
    return specs, rows


def _plan(lengths: list[int], rows: list[list[int]] | None, max_tokens: int, strategy: str) -> PackPlan:
    """The packing plan: ``pack_lengths`` over ``lengths``, or the caller's rows as given."""
    if rows is not None:
        largest = max(sum(lengths[i] for i in row) for row in rows)
        return PackPlan(rows, lengths, max_tokens=largest, strategy="given")
    max_tokens = check_int("group_max_seq_len", max_tokens, 1, MAX_TOTAL_TOKENS)  # cu_seqlens are int32
    return pack_lengths(lengths, max_tokens, strategy=strategy)


def _check_like(name: str, tensor: torch.Tensor, like: torch.Tensor | None) -> None:
    """Same device as ``like``, and its dtype unless autocast will cast both anyway."""
    if like is None:
        return
    if tensor.device != like.device:
        raise ValueError(f"{name} is on {tensor.device} but the model is on {like.device}; move one of them")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if tensor.dtype != like.dtype and not torch.is_autocast_enabled(tensor.device.type):
        raise ValueError(
            f"{name} is {tensor.dtype} but the model's weights are {like.dtype}: cast the inputs "
            f"(or the model) to one dtype, or run the model under torch.autocast"
        )


def _drop_tokens(batch: PackedBatch, keep: Sequence[int], layout: SeqLayout) -> PackedBatch:
    """Keep ``keep[s]`` random tokens of input sample ``s`` (with their positions), laid out as
    ``layout`` (segments in the batch's order, ``keep`` tokens each).

    Draws ``torch.randperm(n_s)[:keep[s]]`` for every sample in input order with torch's CPU
    generator, so a seeded run keeps the same tokens on any device, and the gather index reaches
    the device in one copy that does not sync. The kept tokens come in random order, which
    attention and pooling do not see.
    """
    order = batch.sample_index.tolist()
    full = [0] * len(order)
    for segment, sample in enumerate(order):
        full[sample] = batch.seqlens[segment]
    picks = [torch.randperm(n)[:k] for n, k in zip(full, keep)]
    starts = batch.layout.segment_starts()
    index = torch.cat([picks[sample] + start for sample, start in zip(order, starts)])
    index = host_to_device(index, batch.patches.device)
    return replace(
        batch,
        patches=batch.patches.index_select(0, index),
        freq_idx=batch.freq_idx.index_select(0, index),
        time_idx=batch.time_idx.index_select(0, index),
        layout=layout,
    )


# --------------------------------------------------------------------------------------------------
# A PackedBatch
# --------------------------------------------------------------------------------------------------
@host_side
def prepare_packed(
    batch: PackedBatch,
    grid: PatchGrid,
    *,
    keep_counts: KeepCounts | None = None,
    like: torch.Tensor | None = None,
) -> PreparedBatch:
    """Checks on a caller's `PackedBatch`, then token dropout within its segments and the time
    positions past the table. Arguments as for `prepare_spectrograms`; ``keep_counts`` sees the
    segments' token counts in input order (``sample_index``).

    Raises:
        TypeError / ValueError: inconsistent fields (named), patches that are not
            ``[total_tokens, C*p*p]``, a device or dtype mismatch, (CPU batches) positions outside
            the tables or the segment's grid, a sample past the time table under ``"error"``.
    """
    batch.validate()  # fields may have been reassigned since it was built
    if batch.patches.shape[1] != grid.patch_dim:
        raise ValueError(f"PackedBatch.patches must be [total_tokens, {grid.patch_dim}], got {tuple(batch.patches.shape)}")
    _check_like("PackedBatch.patches", batch.patches, like)
    if batch.grid_shapes is not None:
        for j, (freq, _) in enumerate(batch.grid_shapes):
            if freq > grid.freq_rows:
                raise ValueError(f"PackedBatch.grid_shapes[{j}] has {freq} frequency patches, more than the "
                                 f"{grid.freq_rows} rows of the frequency positional table")
        check_time_extents([t for _, t in batch.grid_shapes], grid.time_rows, grid.past_time_table, "segment")
    if batch.patches.device.type == "cpu" and batch.total_tokens > 0:
        _check_positions(batch, grid)
    if keep_counts is not None and batch.num_samples > 0:
        by_sample = [0] * batch.num_samples
        for segment, sample in enumerate(batch.sample_index.tolist()):
            by_sample[sample] = batch.seqlens[segment]
        keep = keep_counts(by_sample)
        if keep is not None:
            kept = [keep[sample] for sample in batch.sample_index.tolist()]
            batch = _drop_tokens(batch, keep, SeqLayout(kept, batch.pack_offsets, device=batch.patches.device))
    return PreparedBatch(*stretch_time_positions(batch, grid.time_rows))


def _check_positions(batch: PackedBatch, grid: PatchGrid) -> None:
    """On the CPU (free there; on CUDA an out-of-range index trips the device-side assert
    instead): every position within its table, or within its segment's grid when known."""
    if batch.grid_shapes is not None:
        freq_bound, time_bound = (np.repeat(np.asarray([s[axis] for s in batch.grid_shapes], dtype=np.int64),
                                            batch.seqlens) for axis in (0, 1))
        where = "its segment's grid (grid_shapes)"
    else:
        freq_bound, time_bound = grid.freq_rows, grid.time_rows
        where = "the rows of its positional table"
    for name, bound in (("freq_idx", freq_bound), ("time_idx", time_bound)):
        index = getattr(batch, name).numpy()
        if (index < 0).any() or (index >= bound).any():
            hint = "; pass the list of spectrograms (or set grid_shapes) to go past the time table" \
                if name == "time_idx" and batch.grid_shapes is None else ""
            raise ValueError(f"PackedBatch.{name} holds values outside {where}{hint}")
