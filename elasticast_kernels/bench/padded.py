"""The published model's padded layout, kept as benchmark baselines.

The published ElasticAST pads every pack to the longest pack and runs dense masked attention over
the rows; AST-style models pad every sample to the longest sample. Both give the same results as
the packed backends (on finite inputs) at the cost of the padding, which is what the benchmarks
measure. They live here, not in `elasticast_kernels.backends`, because no user needs padding:

- `sdpa_masked_attention`: each pack one row padded to the longest pack, a dense block-diagonal
  bool mask, one fused SDPA call (the denominator of every speedup).
- `padded_attention`: each sample one row padded to the longest sample, a key-padding mask.
- `PaddedElasticAST`: the drop-in model whose whole encoder runs on the padded pack rows, so
  every layer, not only the attention, pays for the padding as in the published model.
- `SamplePaddedElasticAST`: the drop-in model with `padded_attention` in every block (AST style).

Neither baseline isolates non-finite values: masked-out keys get probability 0, but 0 x NaN = NaN,
so a NaN/inf in one sample reaches the other samples of its row.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from elasticast_kernels.layout import SeqLayout, host_to_device
from elasticast_kernels.models import ElasticAST

__all__ = ["sdpa_masked_attention", "padded_attention", "row_padded", "PaddedElasticAST", "SamplePaddedElasticAST"]


def _pad_index(row_lengths: Sequence[int], row_len: int, device: torch.device) -> torch.Tensor:
    """int64 ``[sum(row_lengths)]``: flat position ``row * row_len + offset`` of each packed token,
    when consecutive runs of ``row_lengths`` tokens are laid out as rows padded to ``row_len``."""
    lengths = torch.tensor(list(row_lengths), dtype=torch.int64)
    row = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    row_start = torch.cumsum(lengths, 0) - lengths  # first packed token of each row
    index = torch.arange(int(lengths.sum())) - row_start[row] + row * row_len
    return host_to_device(index, device)


def _to_rows(x: torch.Tensor, index: torch.Tensor, rows: int, row_len: int) -> torch.Tensor:
    """Packed ``[total, heads, head_dim]`` -> zero-padded ``[rows, heads, row_len, head_dim]``."""
    padded = x.new_zeros(rows * row_len, *x.shape[1:])
    padded.index_copy_(0, index, x)
    return padded.view(rows, row_len, *x.shape[1:]).transpose(1, 2)


def _from_rows(out: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Inverse of `_to_rows`: ``[rows, heads, row_len, head_dim]`` -> packed ``[total, heads, head_dim]``."""
    rows, heads, row_len, head_dim = out.shape
    return out.transpose(1, 2).reshape(rows * row_len, heads, head_dim).index_select(0, index)


def sdpa_masked_attention(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    """The published model's attention: packs as rows padded to the longest, a block-diagonal mask.

    Padding tokens form a block of their own, so that no row of the mask is empty (an empty row
    gives NaN). Same signature as the backends of `elasticast_kernels.backends`.
    """
    device = q.device
    pack_lengths = layout.pack_tokens()
    rows, row_len = len(pack_lengths), max(pack_lengths, default=0)
    already_rows = all(n == row_len for n in pack_lengths)  # PaddedElasticAST padded the rows itself

    def build() -> tuple[torch.Tensor | None, torch.Tensor]:
        ids = torch.full((rows, row_len), -1, dtype=torch.int32)
        offsets, starts = layout.pack_offsets, layout.segment_starts()
        for p in range(rows):
            for segment in range(offsets[p], offsets[p + 1]):
                begin = starts[segment] - starts[offsets[p]]
                ids[p, begin:begin + layout.seqlens[segment]] = segment
        mask = (ids[:, :, None] == ids[:, None, :]).unsqueeze(1)  # [rows, 1, row_len, row_len]
        index = None if already_rows else _pad_index(pack_lengths, row_len, device)
        return index, host_to_device(mask, device)

    index, mask = layout.cached(("sdpa_masked", device), build)
    if index is None:
        def to_rows(x):
            return x.view(rows, row_len, *x.shape[1:]).transpose(1, 2)
    else:
        def to_rows(x):
            return _to_rows(x, index, rows, row_len)
    out = F.scaled_dot_product_attention(to_rows(q), to_rows(k), to_rows(v), attn_mask=mask, scale=softmax_scale)
    if index is None:
        return out.transpose(1, 2).reshape(q.shape)
    return _from_rows(out, index)


def padded_attention(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    """AST style: every sample its own row, padded to the longest sample; a key-padding mask."""
    device = q.device
    rows, row_len = layout.num_samples, layout.max_seqlen

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor(layout.seqlens, dtype=torch.int64)
        key_valid = torch.arange(row_len)[None, :] < lengths[:, None]  # [rows, row_len]
        key_mask = host_to_device(key_valid[:, None, None, :].contiguous(), device)
        return _pad_index(layout.seqlens, row_len, device), key_mask

    index, key_mask = layout.cached(("padded", device), build)
    out = F.scaled_dot_product_attention(
        *(_to_rows(x, index, rows, row_len) for x in (q, k, v)), attn_mask=key_mask, scale=softmax_scale
    )
    return _from_rows(out, index)


def row_padded(layout: SeqLayout) -> tuple[SeqLayout, torch.Tensor]:
    """The published model's layout of a packed batch: each pack one row, padded to the longest.

    Returns:
        ``(rows_layout, index)``: ``rows_layout`` covers ``num_packs * row_len`` tokens, with each
        row's padding as one extra segment (padding attends only to padding, so its values never
        reach a real token); ``index`` (int64 ``[total_tokens]``, on the layout's device) is where
        every packed token sits in the padded buffer (``padded[index] = packed``).
    """
    def build() -> tuple[SeqLayout, torch.Tensor]:
        pack_lengths = layout.pack_tokens()
        row_len = max(pack_lengths, default=0)
        seqlens, offsets = [], [0]
        for p, used in enumerate(pack_lengths):
            seqlens.extend(layout.seqlens[layout.pack_offsets[p]:layout.pack_offsets[p + 1]])
            if used < row_len:
                seqlens.append(row_len - used)
            offsets.append(len(seqlens))
        rows_layout = SeqLayout(seqlens, offsets, device=layout.device)
        return rows_layout, _pad_index(pack_lengths, row_len, layout.device)

    return layout.cached("row_padded", build)


class PaddedElasticAST(ElasticAST):
    """`ElasticAST` whose encoder runs the published model's way: on the packs padded to the
    longest pack, with `sdpa_masked_attention` in every block. Same weights, same logits (on finite
    inputs); every layer pays for the padding. A benchmark baseline, not a model to train with.
    """

    def _encode(self, x: torch.Tensor, layout: SeqLayout, attend) -> torch.Tensor:
        rows_layout, index = row_padded(layout)
        padded = x.new_zeros(rows_layout.total_tokens, x.shape[1]).index_copy(0, index, x)
        return self.blocks(padded, rows_layout, sdpa_masked_attention).index_select(0, index)


class SamplePaddedElasticAST(ElasticAST):
    """`ElasticAST` whose blocks attend AST style: every sample padded to the longest sample with
    a key-padding mask (`padded_attention`). Same logits; the yardstick for equal-length batches,
    where padding costs nothing and only the attention call pattern differs."""

    def _attention_fn(self, x: torch.Tensor):
        return padded_attention
