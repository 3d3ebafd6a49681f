"""ElasticAST on the packed varlen layout: a drop-in for the published model.

Same constructor, ``forward``, state-dict keys and logits as the model of Feng et al.
(Interspeech 2024), but a batch is one ``[total_tokens, dim]`` tensor with ``cu_seqlens`` instead
of rows padded to the longest row under a block-diagonal mask. This file holds the network; the
host-side preparation (checks, plan, patch gather, token dropout, positions past the time table,
input order) is `elasticast_kernels.models.inputs`::

    list of [C, F, T] or PackedBatch  --inputs.prepare_*-->  PreparedBatch
      --embed_packed: patch_embed + pos_embed_freq[f] + time table[t] --> blocks (varlen attention)
      --> norm --> AttentionPool / segment_mean --> mlp_norm  --in_input_order--> head --> logits
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

from elasticast_kernels.backends import BACKENDS, BackendFn, backend_name, resolve_backend
from elasticast_kernels.layout import SeqLayout
from elasticast_kernels.models.inputs import PatchGrid, prepare_packed, prepare_spectrograms, token_keep_counts
from elasticast_kernels.models.layers import LAYER_NORM_EPS, Encoder
from elasticast_kernels._checks import check_int
from elasticast_kernels.models.positions import PAST_TIME_TABLE
from elasticast_kernels.modules import AttentionPool
from elasticast_kernels.ops import segment_mean
from elasticast_kernels.packing import STRATEGIES, PackedBatch

# Keywords of the published constructor that download weights; here the transfer is explicit.
_PRETRAIN_KEYWORDS = {
    "imagenet_pretrain": "elasticast_kernels.convert.from_timm_vit(model, 'vit_b16.pth')",
    "SSAST_pretrain": "elasticast_kernels.convert.from_ssast(model, 'ssast.pth')",
    "AST_pretrain": "elasticast_kernels.convert.from_ssast(model, 'ast.pth', grid=(12, 101))",
}


def _pair(value: object, name: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return check_int(f"{name}[0]", value[0], 1), check_int(f"{name}[1]", value[1], 1)
    if isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    value = check_int(name, value, 1)
    return value, value


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
        past_time_table: what a sample longer than the time table (``T > T_max``) gets:
            ``"interpolate"`` (default): the table linearly interpolated to its length, so audio of
            any length runs; ``"error"``: a ValueError, as in the published model. Samples within
            the table keep exactly their published positions either way (see
            `elasticast_kernels.models.positions` for why interpolation).
        pos_embed_interpolation: deprecated; True is ``past_time_table="interpolate"``, False
            ``"error"``.

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
        past_time_table: str = "interpolate",
        pos_embed_interpolation: bool | None = None,
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
        for name, value in dict(patch_size=patch_size, num_classes=num_classes, dim=dim, depth=depth, heads=heads,
                                channels=channels).items():
            check_int(name, value, 1)
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
        if pos_embed_interpolation is not None:
            warnings.warn("pos_embed_interpolation is deprecated: pass past_time_table='interpolate' (the default) "
                          "or 'error'", DeprecationWarning, stacklevel=2)
            past_time_table = "interpolate" if pos_embed_interpolation else "error"
        if past_time_table not in PAST_TIME_TABLE:
            raise ValueError(f"past_time_table must be one of {PAST_TIME_TABLE}, got {past_time_table!r}")

        # the constructor's arguments, as a saved model rebuilds it (`elasticast_kernels.saved_model`)
        self._config = dict(
            sample_size=[max_freq, max_time], patch_size=patch_size, num_classes=num_classes, dim=dim, depth=depth,
            heads=heads, channels=channels, dropout=float(dropout), emb_dropout=float(emb_dropout),
            token_dropout_prob=None if token_dropout_prob is None else float(token_dropout_prob),
            avg_pool_tk=bool(avg_pool_tk), random_token_dropout=float(random_token_dropout),
            eval_token_dropout=float(eval_token_dropout), attention_backend=attention_backend, packing=packing,
            softmax_scale=float(softmax_scale), past_time_table=past_time_table,
        )
        # plain attributes the forward reads at every call (so ``model.packing = ...`` works)
        for key in ("patch_size", "channels", "num_classes", "token_dropout_prob", "random_token_dropout",
                    "eval_token_dropout", "avg_pool_tk", "attention_backend", "packing", "softmax_scale",
                    "past_time_table"):
            setattr(self, key, self._config[key])

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

    @property
    def patch_grid(self) -> PatchGrid:
        """How this model reads its inputs (patch size, table extents, the rule past the time
        table), for `elasticast_kernels.models.inputs`."""
        return PatchGrid(self.channels, self.patch_size, self.pos_embed_freq.shape[0], self.pos_embed_time.shape[0],
                         self.past_time_table)

    # --------------------------------------------------------------------------------------------
    def forward(self, batched_samples, group_samples: bool = True, group_max_seq_len: int = 2048) -> torch.Tensor:
        """Logits ``[num_samples, num_classes]`` in the input order.

        Args:
            batched_samples: a list of ``[C, F, T]`` tensors (F, T multiples of ``patch_size``;
                same dtype and device); with ``group_samples=False`` a list of rows, each a list of
                such tensors, packed as given (no length limit); or a `PackedBatch`.
            group_samples: pack the samples with ``self.packing`` (True) or take the caller's rows.
            group_max_seq_len: most tokens per pack (after token dropout); a longer sample gets a
                pack of its own (the published model raised).

        Raises:
            TypeError / ValueError: malformed samples (the message names the sample), a bad
                ``group_max_seq_len``, a sample longer than the time positional table with
                ``past_time_table="error"``, a device or dtype mismatch with the model.
        """
        return self.head(self.embed(batched_samples, group_samples, group_max_seq_len))

    def embed(self, batched_samples, group_samples: bool = True, group_max_seq_len: int = 2048) -> torch.Tensor:
        """The pooled, normalised embedding of every sample, ``[num_samples, dim]`` in the input
        order: what the classifier ``head`` sees (``forward(x) == head(embed(x))``). Arguments
        and errors as `forward`."""
        options = dict(keep_counts=self._keep_counts, like=self.patch_embed[0].weight)
        if isinstance(batched_samples, PackedBatch):
            prepared = prepare_packed(batched_samples, self.patch_grid, **options)
        else:
            prepared = prepare_spectrograms(batched_samples, self.patch_grid, group_samples=group_samples,
                                            max_tokens=group_max_seq_len, strategy=self.packing, **options)
        embeddings = self.embed_packed(prepared.batch, prepared.time_table(self.pos_embed_time))
        return prepared.in_input_order(embeddings)

    def forward_packed(self, batch: PackedBatch, time_table: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[num_samples, num_classes]`` of a prepared `PackedBatch` in its segment order."""
        return self.head(self.embed_packed(batch, time_table))

    def embed_packed(self, batch: PackedBatch, time_table: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings ``[num_samples, dim]`` of a prepared `PackedBatch` (no checks, no token
        dropout: `embed` does those) in its segment order. ``batch.time_idx`` indexes
        ``time_table`` (default ``pos_embed_time``; `embed` passes it extended past the table)."""
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

    def _keep_counts(self, lengths: Sequence[int]) -> list[int] | None:
        """Token dropout: tokens kept per sample (None: all), from the current options and mode."""
        return token_keep_counts(lengths, training=self.training, token_dropout_prob=self.token_dropout_prob,
                                 random_token_dropout=self.random_token_dropout,
                                 eval_token_dropout=self.eval_token_dropout)
