"""ElasticAST on the packed varlen layout: a drop-in for the published model.

Same constructor, same ``forward``, same state-dict keys and the same logits as the model of
Feng et al. (Interspeech 2024), but the samples of a batch are packed into one
``[total_tokens, dim]`` tensor with ``cu_seqlens`` instead of rows padded to the longest row with
a dense block-diagonal mask. Every per-token layer runs once on the packed tensor; attention runs
per sample through the backend chosen in `elasticast_kernels.backends`; pooling is the fused
per-sample `AttentionPool`.

Data flow of ``forward``::

    list of [C, F, T]  --pack_lengths + pack_spectrograms-->  PackedBatch (patches, freq/time idx)
      --token dropout (gather)-->  patch_embed + pos_embed_freq[f] + pos_embed_time[t]
      --blocks (varlen attention)-->  norm  --AttentionPool / segment_mean-->  mlp_norm  --> head
      --> logits in input order
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from elasticast_kernels.backends import BACKENDS, BackendFn, backend_name, resolve_backend
from elasticast_kernels.layout import SeqLayout, host_to_device
from elasticast_kernels.models.inputs import (
    check_group_limit,
    flatten_samples,
    patch_grid,
    token_keep_counts,
)
from elasticast_kernels.models.layers import LAYER_NORM_EPS, Encoder
from elasticast_kernels.modules import AttentionPool
from elasticast_kernels.ops import segment_mean
from elasticast_kernels.packing import STRATEGIES, PackedBatch, pack_lengths, pack_spectrograms

# Keywords of the published constructor that download weights; here the transfer is explicit.
_PRETRAIN_KEYWORDS = {
    "imagenet_pretrain": "elasticast_kernels.convert.from_timm_vit(model, 'vit_b16.pth')",
    "SSAST_pretrain": "elasticast_kernels.convert.from_ssast(model, 'ssast.pth')",
    "AST_pretrain": "elasticast_kernels.convert.from_ssast(model, 'ast.pth', grid=(12, 101))",
}


def _host_side(fn: Callable) -> Callable:
    """``torch.compiler.disable(fn)``, applied at the first call: host-side planning and packing is
    never traced, and importing the model does not pay for importing torch._dynamo (~2 s, in
    every process of a distributed run) until something runs."""
    disabled = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal disabled
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return call


def _pair(value: object, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


class ElasticAST(nn.Module):
    """Audio Spectrogram Transformer on packed variable-length inputs (drop-in for the published model).

    Args (all keyword-only; the first group is the published constructor):
        sample_size: ``(F_max, T_max)`` (or one int for both): sizes of the frequency and time
            positional tables, ``F_max / patch_size`` and ``T_max / patch_size`` rows.
        patch_size: square patch side (16 in every recipe).
        num_classes: logits per sample.
        dim, depth, heads: transformer width, number of blocks, attention heads
            (``head_dim = dim // heads``).
        channels: C of the ``[C, F, T]`` inputs (1 for audio).
        dim_head: accepted and ignored, as in the published model.
        dropout: after the MLP's GELU and after its ``fc2``.
        emb_dropout: on the token embeddings.
        token_dropout_prob: fraction of tokens dropped per sample in training (None/0: none).
        avg_pool_tk: mean-pool the tokens instead of attention pooling.
        random_token_dropout: > 0 draws the dropout fraction per sample from U(0, value) in
            training (replaces ``token_dropout_prob``).
        eval_token_dropout: > 0 keeps this FRACTION of the tokens in eval mode.
        attention_backend: a name of `elasticast_kernels.backends.BACKEND_NAMES` ("auto": the
            fastest correct one for the device and dtype, resolved once per forward).
        packing: strategy of `elasticast_kernels.packing.pack_lengths` used to group samples
            into packs of at most ``group_max_seq_len`` tokens (changes speed, not logits).
        softmax_scale: score scale of every attention (1.0 = the published, unscaled scores).
        pos_embed_interpolation: a sample longer than ``T_max`` gets the time table linearly
            interpolated to its length instead of a ValueError.

    Raises:
        ValueError / TypeError: bad sizes or options; ``imagenet_pretrain``, ``SSAST_pretrain`` or
            ``AST_pretrain`` set (nothing is downloaded: use `elasticast_kernels.convert`).
    """

    def __init__(
        self,
        *,
        sample_size,
        patch_size: int,
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        token_dropout_prob: float | None = None,
        avg_pool_tk: bool = False,
        random_token_dropout: float = 0,
        eval_token_dropout: float = 0,
        attention_backend: str = "auto",
        packing: str = "next_fit",
        softmax_scale: float = 1.0,
        pos_embed_interpolation: bool = False,
        **kwargs,
    ) -> None:
        super().__init__()
        for keyword, replacement in _PRETRAIN_KEYWORDS.items():
            if kwargs.pop(keyword, False):
                raise ValueError(
                    f"{keyword}=True downloads weights in the published model; elasticast-kernels downloads "
                    f"nothing. Build the model without it, then load a local checkpoint: {replacement}"
                )
        if kwargs:
            warnings.warn(f"ElasticAST ignores unknown keyword arguments {sorted(kwargs)}", stacklevel=2)
        max_freq, max_time = _pair(sample_size, "sample_size")
        for name, value in (("patch_size", patch_size), ("num_classes", num_classes), ("dim", dim),
                            ("depth", depth), ("heads", heads), ("channels", channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if max_freq % patch_size or max_time % patch_size or max_freq < patch_size or max_time < patch_size:
            raise ValueError(f"sample_size={sample_size} must be positive multiples of patch_size={patch_size}")
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        for name, value in (("dropout", dropout), ("emb_dropout", emb_dropout),
                            ("random_token_dropout", random_token_dropout), ("eval_token_dropout", eval_token_dropout),
                            ("token_dropout_prob", token_dropout_prob or 0.0)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        attention_backend = backend_name(attention_backend, "attention_backend")
        if packing not in STRATEGIES:
            raise ValueError(f"packing must be one of the pack_lengths strategies {list(STRATEGIES)}, got {packing!r}")

        # the constructor's arguments, as a saved model rebuilds it (`elasticast_kernels.saved_model`)
        self._config = dict(
            sample_size=[max_freq, max_time], patch_size=patch_size, num_classes=num_classes, dim=dim, depth=depth,
            heads=heads, channels=channels, dropout=float(dropout), emb_dropout=float(emb_dropout),
            token_dropout_prob=None if token_dropout_prob is None else float(token_dropout_prob),
            avg_pool_tk=bool(avg_pool_tk), random_token_dropout=float(random_token_dropout),
            eval_token_dropout=float(eval_token_dropout), attention_backend=attention_backend, packing=packing,
            softmax_scale=float(softmax_scale), pos_embed_interpolation=bool(pos_embed_interpolation),
        )
        self.patch_size = patch_size
        self.channels = channels
        self.num_classes = num_classes
        self.token_dropout_prob = token_dropout_prob
        self.random_token_dropout = float(random_token_dropout)
        self.eval_token_dropout = float(eval_token_dropout)
        self.avg_pool_tk = bool(avg_pool_tk)
        self.attention_backend = attention_backend
        self.packing = packing
        self.softmax_scale = float(softmax_scale)
        self.pos_embed_interpolation = bool(pos_embed_interpolation)

        patch_dim = channels * patch_size * patch_size
        self.patch_embed = nn.Sequential(nn.Linear(patch_dim, dim))
        self.pos_embed_freq = nn.Parameter(torch.randn(max_freq // patch_size, dim))
        self.pos_embed_time = nn.Parameter(torch.randn(max_time // patch_size, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.blocks = Encoder(dim, depth, heads, 4 * dim, dropout, self.softmax_scale)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

        self.attn_pool_queries = nn.Parameter(torch.randn(dim))
        self.attn_pool = AttentionPool(dim, heads, softmax_scale=self.softmax_scale, learnable_query=False)
        self.mlp_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(dim, num_classes)

    @property
    def config(self) -> dict:
        """The constructor's keyword arguments (plain Python values): ``ElasticAST(**model.config)``
        builds the same architecture with the same softmax scale and options."""
        return {key: list(value) if isinstance(value, list) else value for key, value in self._config.items()}

    # --------------------------------------------------------------------------------------------
    def forward(self, batched_samples, group_samples: bool = True, group_max_seq_len: int = 2048) -> torch.Tensor:
        """Logits ``[num_samples, num_classes]`` in the input order.

        Args:
            batched_samples: a list of ``[C, F, T]`` tensors (F, T multiples of ``patch_size``;
                same dtype and device); with ``group_samples=False`` a list of rows, each a list of
                such tensors, packed as given (no length limit); or a `PackedBatch`.
            group_samples: pack the samples with ``self.packing`` (True) or take the caller's rows.
            group_max_seq_len: most tokens per pack (after token dropout).

        Raises:
            TypeError / ValueError: malformed samples (the message names the sample), a sample of
                more than ``group_max_seq_len`` tokens, a sample longer than the time positional
                table without ``pos_embed_interpolation``.
        """
        return self.head(self.embed(batched_samples, group_samples, group_max_seq_len))

    def embed(self, batched_samples, group_samples: bool = True, group_max_seq_len: int = 2048) -> torch.Tensor:
        """The pooled, normalised embedding of every sample, ``[num_samples, dim]`` in the input
        order: what the classifier ``head`` sees (``forward(x) == head(embed(x))``). Arguments
        and errors as `forward`."""
        if isinstance(batched_samples, PackedBatch):
            batch, time_table = self._prepare_packed(batched_samples), self.pos_embed_time
        else:
            batch, time_table = self._pack(batched_samples, group_samples, group_max_seq_len)
        embeddings = self.embed_packed(batch, time_table)
        return self._to_input_order(embeddings, batch.sample_index)

    def forward_packed(self, batch: PackedBatch, time_table: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[num_samples, num_classes]`` of a `PackedBatch`, in its segment order.

        ``time_table`` replaces ``pos_embed_time`` (the forward passes an interpolated one).
        """
        return self.head(self.embed_packed(batch, time_table))

    def embed_packed(self, batch: PackedBatch, time_table: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings ``[num_samples, dim]`` of a `PackedBatch` in its segment order (see `embed`)."""
        layout = batch.layout
        time_table = self.pos_embed_time if time_table is None else time_table
        x = (
            self.patch_embed(batch.patches)
            + self.pos_embed_freq.index_select(0, batch.freq_idx)
            + time_table.index_select(0, batch.time_idx)
        )
        x = self.dropout(x)
        x = self._encode(x, layout, self._attention_fn(x))
        x = self.norm(x)
        if self.avg_pool_tk:
            pooled = segment_mean(x, layout.cu_seqlens, layout.max_seqlen)
        else:
            pooled = self.attn_pool(x, layout.cu_seqlens, layout.max_seqlen, query=self.attn_pool_queries)
        return self.mlp_norm(pooled)

    def _encode(self, x: torch.Tensor, layout: SeqLayout, attend: BackendFn) -> torch.Tensor:
        """The blocks on the packed tokens ``x [total_tokens, dim]``."""
        return self.blocks(x, layout, attend)

    def _attention_fn(self, x: torch.Tensor) -> BackendFn:
        """The attention backend for this forward, resolved once for all blocks. The dtype it
        sees is autocast's when autocast is on (the projections' outputs), else ``x``'s."""
        device_type = x.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
        return BACKENDS[self.resolved_backend(x.device, dtype)].fn

    def resolved_backend(self, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
        """The concrete attention backend this model uses for tensors on ``device``/``dtype``."""
        return resolve_backend(self.attention_backend, device, dtype)

    # --------------------------------------------------------------------------------------------
    def _keep_counts(self, lengths: Sequence[int]) -> list[int] | None:
        return token_keep_counts(
            lengths,
            training=self.training,
            token_dropout_prob=self.token_dropout_prob,
            random_token_dropout=self.random_token_dropout,
            eval_token_dropout=self.eval_token_dropout,
        )

    @_host_side
    def _pack(self, batched_samples, group_samples: bool, group_max_seq_len: int):
        """Validate, drop tokens, pack. Returns ``(PackedBatch, time positional table)``."""
        specs, rows = flatten_samples(batched_samples, group_samples)
        grid = patch_grid(specs, self.channels, self.patch_size, self.pos_embed_freq.shape[0])
        self._check_input_tensor("batched_samples", specs[0])  # patch_grid: all share dtype and device
        self._check_time_lengths([time for _, time in grid])
        lengths = [freq * time for freq, time in grid]
        keep = self._keep_counts(lengths)
        final_lengths = lengths if keep is None else keep

        if rows is None:
            check_group_limit(final_lengths, group_max_seq_len)
            plan = pack_lengths(np.asarray(final_lengths, dtype=np.int64), group_max_seq_len, strategy=self.packing)
            bins = [np.asarray(b, dtype=np.int64) for b in plan.bins]
        else:
            plan, bins = None, [np.asarray(row, dtype=np.int64) for row in rows]

        if keep is None and plan is not None:
            batch = pack_spectrograms(specs, self.patch_size, plan=plan)
        else:
            # Pack the full samples in plan order as one run of segments, then set the packs.
            order = np.concatenate(bins)
            batch = pack_spectrograms([specs[i] for i in order], self.patch_size)
            pack_offsets = np.cumsum([0] + [len(b) for b in bins]).tolist()
            batch = replace(batch, sample_index=torch.from_numpy(order),
                            layout=SeqLayout(batch.seqlens, pack_offsets, batch.cu_seqlens))
            if keep is not None:
                batch = self._drop_tokens(batch, order, lengths, keep)
        return self._time_table(batch, [grid[int(i)][1] for i in batch.sample_index.tolist()])

    def _drop_tokens(self, batch, order: np.ndarray, lengths: Sequence[int], keep: Sequence[int]):
        """Keep ``keep[i]`` random tokens of sample ``i`` (with their positions).

        Draws ``torch.randperm(lengths[i])[:keep[i]]`` for every sample in input order with
        torch's CPU generator, so a seeded run picks the same tokens on any device, and the
        gather index reaches the GPU in one copy that does not sync. The kept tokens come in
        random order, which attention and pooling do not see.
        """
        device = batch.patches.device
        picks = [torch.randperm(n)[:k] for n, k in zip(lengths, keep)]
        starts = np.cumsum([0] + [lengths[i] for i in order])[:-1]
        index = host_to_device(torch.cat([picks[i] + int(start) for i, start in zip(order, starts)]), device)
        kept = [int(keep[i]) for i in order]
        return replace(
            batch,
            patches=batch.patches.index_select(0, index),
            freq_idx=batch.freq_idx.index_select(0, index),
            time_idx=batch.time_idx.index_select(0, index),
            layout=SeqLayout(kept, batch.pack_offsets, device=device),
        )

    @_host_side
    def _prepare_packed(self, batch: PackedBatch) -> PackedBatch:
        """Checks on a caller's `PackedBatch`, then token dropout within its segments."""
        batch.validate()  # fields may have been reassigned since it was built
        patch_dim = self.patch_embed[0].in_features
        if batch.patches.shape[1] != patch_dim:
            raise ValueError(f"PackedBatch.patches must be [total_tokens, {patch_dim}], got {tuple(batch.patches.shape)}")
        self._check_input_tensor("PackedBatch.patches", batch.patches)
        if batch.patches.device.type == "cpu" and batch.total_tokens > 0:
            # Free on the CPU; on CUDA an out-of-range index trips the device-side assert instead.
            for name, table in (("freq_idx", self.pos_embed_freq), ("time_idx", self.pos_embed_time)):
                index = getattr(batch, name)
                if int(index.min()) < 0 or int(index.max()) >= table.shape[0]:
                    hint = "; pass the list of spectrograms to use pos_embed_interpolation" if name == "time_idx" else ""
                    raise ValueError(
                        f"PackedBatch.{name} holds values outside [0, {table.shape[0]}) (the rows of its positional "
                        f"table){hint}"
                    )
        keep = self._keep_counts(batch.seqlens)
        if keep is None:
            return batch
        # Segments are in pack order already; draw per segment (the caller's "input order").
        order = np.arange(batch.num_samples)
        dropped = self._drop_tokens(batch, order, batch.seqlens, keep)
        return dropped

    def _check_input_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Same device as the model, and its dtype unless autocast will cast both anyway."""
        weight = self.patch_embed[0].weight
        if tensor.device != weight.device:
            raise ValueError(f"{name} is on {tensor.device} but the model is on {weight.device}; move one of them")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
        if tensor.dtype != weight.dtype and not torch.is_autocast_enabled(tensor.device.type):
            raise ValueError(
                f"{name} is {tensor.dtype} but the model's weights are {weight.dtype}: cast the inputs "
                f"(or the model) to one dtype, or run the model under torch.autocast"
            )

    def _check_time_lengths(self, time_patches: Sequence[int]) -> None:
        table = self.pos_embed_time.shape[0]
        if self.pos_embed_interpolation:
            return
        for i, time in enumerate(time_patches):
            if time > table:
                raise ValueError(
                    f"sample {i} has T={time * self.patch_size} frames, more than the time positional table "
                    f"covers ({table * self.patch_size}, sample_size[1]); crop it, or build the model with "
                    "pos_embed_interpolation=True"
                )

    def _time_table(self, batch, segment_time_patches: Sequence[int]):
        """The time positional table for this batch: ``pos_embed_time``, extended by linearly
        interpolated copies for samples longer than it (their ``time_idx`` is shifted onto them)."""
        table = self.pos_embed_time
        rows = table.shape[0]
        longer = sorted({t for t in segment_time_patches if t > rows})
        if not longer:
            return batch, table
        tables, start, offset = [table], {}, rows
        for length in longer:
            stretched = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear", align_corners=False)
            tables.append(stretched.squeeze(0).t())
            start[length] = offset
            offset += length
        segment_shift = torch.tensor([start.get(t, 0) for t in segment_time_patches], dtype=torch.int32)
        token_shift = torch.repeat_interleave(segment_shift, torch.tensor(batch.seqlens, dtype=torch.int64))
        time_idx = batch.time_idx + host_to_device(token_shift.to(torch.int32), batch.time_idx.device)
        return replace(batch, time_idx=time_idx), torch.cat(tables)

    @staticmethod
    @_host_side
    def _to_input_order(logits: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
        order = np.asarray(sample_index, dtype=np.int64)
        if np.array_equal(order, np.arange(len(order))):
            return logits
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return logits.index_select(0, host_to_device(torch.from_numpy(inverse), logits.device))
