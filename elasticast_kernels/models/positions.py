"""Time positions past a model's positional table.

A model with a learned time table of ``rows`` positions (ElasticAST's ``pos_embed_time``; the
time axis of AST's grid) must decide what a sample whose patch grid is longer than that gets.
Samples within the table always keep their own rows unchanged. For the longer ones, the rule
``past_time_table`` is one of:

``"interpolate"`` (the default)
    the sample gets the table linearly interpolated to its length (``F.interpolate``,
    ``mode="linear"``, ``align_corners=False``): every token's time embedding is a blend of two
    neighbouring learned rows, the first and last rows stay at the ends, and a sample one patch
    longer than the table moves each position by less than a row, so predictions change smoothly
    with length. This is how ViT/AST position tables are fitted to longer inputs.
``"error"``
    the published model's behaviour: such a sample is an error (ValueError naming it).

The work is split so that nothing here syncs with the device or is traced by torch.compile on
the host side: `stretch_time_positions` moves the ``time_idx`` of long segments onto copies of the
table appended after it (host facts: the batch's ``grid_shapes``), and `extended_time_table`
builds those copies from the (differentiable) table itself.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
import torch.nn.functional as F

from elasticast_kernels.layout import host_to_device
from elasticast_kernels.packing import PackedBatch

PAST_TIME_TABLE = ("interpolate", "error")

__all__ = ["PAST_TIME_TABLE", "check_time_extents", "extended_time_table", "stretch_time_positions"]


def check_time_extents(time_patches: Sequence[int], table_rows: int, rule: str, what: str = "sample") -> None:
    """Apply the ``"error"`` rule: ValueError naming the first ``what`` whose time extent
    (``time_patches[i]`` patches) is longer than the table. Nothing to check for ``"interpolate"``."""
    if rule not in PAST_TIME_TABLE:
        raise ValueError(f"past_time_table must be one of {PAST_TIME_TABLE}, got {rule!r}")
    if rule != "error":
        return
    for i, time in enumerate(time_patches):
        if time > table_rows:
            raise ValueError(
                f"{what} {i} spans {time} time patches, more than the {table_rows} rows of the time "
                "positional table; crop it, or build the model with past_time_table='interpolate'"
            )


def stretch_time_positions(batch: PackedBatch, table_rows: int) -> tuple[PackedBatch, tuple[int, ...]]:
    """Point the ``time_idx`` of every segment longer than the table at its own interpolated copy.

    Returns the batch (unchanged when no segment is longer, or when it has no ``grid_shapes``)
    and the lengths of the copies, ascending: `extended_time_table` appends one copy per length
    after the table's own ``table_rows`` rows, and a segment of ``t > table_rows`` time patches
    has its ``time_idx`` shifted by the start of the copy of length ``t``.
    """
    if batch.grid_shapes is None:
        return batch, ()
    time_patches = [t for _, t in batch.grid_shapes]
    stretched = tuple(sorted({t for t in time_patches if t > table_rows}))
    if not stretched:
        return batch, ()
    start, offset = {}, table_rows
    for length in stretched:
        start[length] = offset
        offset += length
    segment_shift = torch.tensor([start.get(t, 0) for t in time_patches], dtype=torch.int32)
    token_shift = torch.repeat_interleave(segment_shift, torch.tensor(batch.seqlens, dtype=torch.int64))
    time_idx = batch.time_idx + host_to_device(token_shift.to(batch.time_idx.dtype), batch.time_idx.device)
    return replace(batch, time_idx=time_idx), stretched


def extended_time_table(table: torch.Tensor, stretched: Sequence[int]) -> torch.Tensor:
    """``table [rows, ...]`` followed by its linear interpolation to each length of ``stretched``
    (along the first axis; trailing axes are features): the table `stretch_time_positions`
    pointed the long segments at. Differentiable in ``table``; ``table`` itself when nothing is
    stretched."""
    if not stretched:
        return table
    flat = table.reshape(table.shape[0], -1).t().unsqueeze(0)  # [1, features, rows]
    copies = [F.interpolate(flat, size=length, mode="linear", align_corners=False)[0].t()
              .reshape(length, *table.shape[1:]) for length in stretched]
    return torch.cat([table, *copies])
