"""Hugging Face's Audio Spectrogram Transformer, padding-free, on clips of any length.

``ASTForAudioClassification`` pads or cuts every clip to ``max_length`` frames (1024 = 10.24 s)
and adds one fixed-size position table to a fixed-size batch. `PackedAST` has the same parameters
(same names, shapes and math: `elasticast_kernels.models.ast_layers`) but runs each clip at its
own length, all clips of a batch packed into one ``[total_tokens, hidden]`` tensor::

    list of [frames, num_mel_bins] (or a PackedBatch)
      --to_spectrogram, models.inputs.prepare_*--> patches (16x16, stride 10: a Conv2d's order)
      --> projection + position grid cut to the clip's time extent
      --> per clip: [CLS] and distillation tokens in front of its patches (one segment each)
      --> layers (varlen attention, scale 1/sqrt(head_dim)) --> layernorm of the two special tokens
      --> their mean (the embedding) --> classifier (LayerNorm + Linear) --> logits in input order

Positions. AST's table is ``[1, 2 + f*t, hidden]``: rows 0 and 1 for the special tokens, then the
``[f, t]`` grid (time fastest) of a ``max_length``-frame input. A clip of ``t' <= t`` time patches
gets the grid's first ``t'`` columns: exactly what the HF model gives the same frames padded to
``max_length``, minus the padding's tokens (and what an AST built with ``max_length`` = the clip's
length and that sliced table computes). A longer clip (``past_time_table="interpolate"``, the
default) gets the grid linearly interpolated along time to ``t'`` columns, each frequency row on its
own (`elasticast_kernels.models.positions`); ``"error"`` refuses it instead.

Short clips. A clip of fewer than ``patch_size`` frames (even 0) is padded to ``patch_size``
frames with ``pad_value``, the extractor's padding after normalisation (`ASTFeatures.pad_value`):
its logits are those of an AST with ``max_length = patch_size`` on the extractor's output. Frames
past the last whole stride are unused, as in the HF model's Conv2d.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from elasticast_kernels._checks import check_int, check_number
from elasticast_kernels.backends import BACKENDS, BackendFn, backend_name, resolve_backend
from elasticast_kernels.data.features import num_tokens
from elasticast_kernels.layout import SeqLayout, cumulative_lengths, host_to_device
from elasticast_kernels.models.ast_checkpoint import (
    AST_MODEL_TYPE, class_names, hf_state_dict, packed_kwargs, read_hf_directory,
)
from elasticast_kernels.models.ast_features import ASTFeatures
from elasticast_kernels.models.ast_layers import ASTBackbone, ASTHead, activation
from elasticast_kernels.models.inputs import PatchGrid, host_side, prepare_packed, prepare_spectrograms
from elasticast_kernels.models.positions import PAST_TIME_TABLE
from elasticast_kernels.packing import STRATEGIES, PackedBatch

__all__ = ["PackedAST"]

SPECIAL_TOKENS = 2  # [CLS] and distillation, in front of every clip's patches
_HEAD_PREFIX = "classifier.dense."  # the label-specific weights


def _probability(name: str, value: object) -> float:
    value = check_number(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


class PackedAST(nn.Module):
    """``ASTForAudioClassification`` on packed variable-length inputs.

    Build it from a Hugging Face model or a local checkpoint with :meth:`from_hf`; the constructor
    takes the ``ASTConfig`` fields of the same names (random initialisation).

    Args (keyword-only):
        num_classes: logits per clip (``ASTConfig.num_labels``).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act,
        layer_norm_eps, qkv_bias, patch_size, frequency_stride, time_stride, max_length,
        num_mel_bins, hidden_dropout_prob: as in ``ASTConfig`` (defaults: the AudioSet AST).
            ``max_length`` sets the time extent of the position table, not a limit on clips.
        head_dim: per-head width (default ``hidden_size // num_attention_heads``); scores are
            scaled by ``1 / sqrt(head_dim)`` as in AST.
        pad_value: value of the frames added to a clip shorter than ``patch_size`` frames (the
            extractor's normalised padding by default; `ASTFeatures.pad_value`).
        attention_backend: a name of `elasticast_kernels.backends.BACKEND_NAMES` ("auto": the
            fastest correct one for the device and dtype, resolved once per forward).
        packing: `elasticast_kernels.packing.pack_lengths` strategy grouping clips into packs
            (changes speed, never logits).
        past_time_table: ``"interpolate"`` (default) or ``"error"`` for clips longer than the
            position table (see the module docstring).

    Raises:
        ValueError: a size that is not a positive int, a dropout outside [0, 1], an unsupported
            ``hidden_act``, a ``max_length`` or ``num_mel_bins`` below ``patch_size``, a non-finite
            ``pad_value``, an unknown backend, strategy or rule.
    """

    #: label names in logit order (``config.id2label``), set by `from_hf`; not part of ``config``
    #: (a saved model keeps them in its card's ``classes``).
    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        num_classes: int,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        qkv_bias: bool = True,
        patch_size: int = 16,
        frequency_stride: int = 10,
        time_stride: int = 10,
        max_length: int = 1024,
        num_mel_bins: int = 128,
        hidden_dropout_prob: float = 0.0,
        head_dim: int | None = None,
        pad_value: float | None = None,
        attention_backend: str = "auto",
        packing: str = "next_fit",
        past_time_table: str = "interpolate",
    ) -> None:
        super().__init__()
        sizes = dict(num_classes=num_classes, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                     num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                     patch_size=patch_size, frequency_stride=frequency_stride, time_stride=time_stride,
                     max_length=max_length, num_mel_bins=num_mel_bins)
        sizes = {name: check_int(name, value, 1) for name, value in sizes.items()}
        head_dim = sizes["hidden_size"] // sizes["num_attention_heads"] if head_dim is None else \
            check_int("head_dim", head_dim, 1)
        for name in ("max_length", "num_mel_bins"):
            if sizes[name] < sizes["patch_size"]:
                raise ValueError(f"{name}={sizes[name]} must be >= patch_size={sizes['patch_size']}")
        eps = float(layer_norm_eps)
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"layer_norm_eps must be a finite number > 0, got {layer_norm_eps!r}")
        activation(hidden_act)  # a clear error before any module is built
        pad_value = ASTFeatures().pad_value if pad_value is None else float(pad_value)
        if not math.isfinite(pad_value):
            raise ValueError(f"pad_value must be finite, got {pad_value!r}")
        if packing not in STRATEGIES:
            raise ValueError(f"packing must be one of the pack_lengths strategies {list(STRATEGIES)}, got {packing!r}")
        if past_time_table not in PAST_TIME_TABLE:
            raise ValueError(f"past_time_table must be one of {PAST_TIME_TABLE}, got {past_time_table!r}")

        # the constructor's arguments, as a saved model rebuilds it (`elasticast_kernels.saved_model`)
        self._config = dict(
            sizes, hidden_act=str(hidden_act), layer_norm_eps=eps, qkv_bias=bool(qkv_bias),
            hidden_dropout_prob=_probability("hidden_dropout_prob", hidden_dropout_prob), head_dim=head_dim,
            pad_value=pad_value, attention_backend=backend_name(attention_backend, "attention_backend"),
            packing=packing, past_time_table=past_time_table,
        )
        # plain attributes the forward reads at every call (so ``model.packing = ...`` works)
        for key in ("num_classes", "patch_size", "num_mel_bins", "pad_value", "attention_backend", "packing",
                    "past_time_table"):
            setattr(self, key, self._config[key])
        self.stride = (sizes["frequency_stride"], sizes["time_stride"])
        self.grid = ((sizes["num_mel_bins"] - patch_size) // frequency_stride + 1,
                     (sizes["max_length"] - patch_size) // time_stride + 1)

        self.audio_spectrogram_transformer = ASTBackbone(
            hidden_size=sizes["hidden_size"], num_hidden_layers=sizes["num_hidden_layers"],
            num_attention_heads=sizes["num_attention_heads"], head_dim=head_dim,
            intermediate_size=sizes["intermediate_size"], hidden_act=hidden_act, qkv_bias=bool(qkv_bias),
            layer_norm_eps=eps, patch_size=sizes["patch_size"], stride=self.stride, grid=self.grid,
            hidden_dropout_prob=self._config["hidden_dropout_prob"],
        )
        self.classifier = ASTHead(sizes["hidden_size"], sizes["num_classes"], eps)
        for module in self.modules():  # ASTPreTrainedModel's initialisation (initializer_range 0.02)
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # --------------------------------------------------------------------------------------------
    # building from Hugging Face
    # --------------------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, model_or_path: Any, *, features: ASTFeatures | Any | None = None, **options: Any) -> "PackedAST":
        """The `PackedAST` of an ``ASTForAudioClassification``, with its weights, in eval mode.

        Args:
            model_or_path: an ``ASTForAudioClassification`` (its parameters' dtype and device are
                kept), or a local ``save_pretrained`` directory (config.json + model.safetensors /
                pytorch_model.bin, transformers 4 or 5 names; read directly, never downloaded;
                float32 on the CPU; ``transformers`` need not be installed).
            features: the `ASTFeatures` (or an ``ASTFeatureExtractor``) the clips come from, for
                the padding of short clips. Default: the directory's ``preprocessor_config.json``
                when there is one, else the extractor's defaults (AudioSet normalisation).
            options: constructor options: ``attention_backend``, ``packing``, ``past_time_table``,
                ``pad_value`` (overrides ``features``), ``hidden_dropout_prob`` (fine-tuning with
                another dropout than the config's), and ``num_classes`` to fine-tune on other
                labels: when it differs from the checkpoint's, ``classifier.dense`` is newly
                initialised (every other weight is loaded and checked) and ``class_names`` is empty.

        The label names (``config.id2label``) are on ``model.class_names``.

        Raises:
            TypeError: not an ``ASTForAudioClassification`` nor a path (an ``ASTModel`` has no
                classifier), an unknown option.
            FileNotFoundError / ValueError / ImportError: see
                `elasticast_kernels.models.ast_checkpoint.read_hf_directory`; a foreign config;
                weights that do not fit the config (`load_hf_state_dict`).
        """
        allowed = {"attention_backend", "packing", "past_time_table", "pad_value", "num_classes", "hidden_dropout_prob"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise TypeError(f"from_hf got unknown options {unknown}; allowed: {sorted(allowed)}")
        source, dtype, device = None, torch.float32, torch.device("cpu")
        if isinstance(model_or_path, (str, os.PathLike)):
            config, state, preprocessor = read_hf_directory(model_or_path)
            where = os.path.join(os.fspath(model_or_path), "config.json")
            if features is None and preprocessor is not None:
                features = ASTFeatures.from_dict(preprocessor, os.path.join(os.fspath(model_or_path),
                                                                            "preprocessor_config.json"))
        elif isinstance(model_or_path, nn.Module) and getattr(getattr(model_or_path, "config", None), "model_type",
                                                              None) == AST_MODEL_TYPE:
            if not hasattr(model_or_path, "classifier"):
                raise TypeError(f"from_hf needs an ASTForAudioClassification; a {type(model_or_path).__name__} "
                                "has no classifier")
            source, config, where = model_or_path, model_or_path.config, "model.config"
            state = model_or_path.state_dict()
            parameter = next(model_or_path.parameters())
            dtype, device = parameter.dtype, parameter.device
        else:
            raise TypeError("from_hf takes an ASTForAudioClassification or a save_pretrained directory path, "
                            f"got {type(model_or_path).__name__}")
        if features is not None and not isinstance(features, ASTFeatures):
            features = ASTFeatures.from_extractor(features)
        if features is not None:
            options.setdefault("pad_value", features.pad_value)
        kwargs = packed_kwargs(config, where)
        new_head = options.get("num_classes", kwargs["num_classes"]) != kwargs["num_classes"]
        model = cls(**{**kwargs, **options})
        model.load_hf_state_dict(state, where=where if source is None else type(source).__name__,
                                 new_head=new_head)
        model.class_names = () if new_head else class_names(config)
        return model.to(device=device, dtype=dtype).eval()

    def load_hf_state_dict(self, state_dict: Any, where: str = "state_dict", *, new_head: bool = False) -> None:
        """Load an ``ASTForAudioClassification`` state dict, transformers 4 or 5 names
        (`elasticast_kernels.models.ast_checkpoint`), checked key by key. ``new_head=True`` leaves
        ``classifier.dense`` as it is (a head for other labels) and ignores the checkpoint's.

        Raises:
            TypeError: not a mapping of names to tensors.
            ValueError: missing keys, unknown keys or shapes that differ from this model's (up to
                five of each named, with counts), both layouts mixed.
        """
        state = hf_state_dict(state_dict, where)
        own = self.state_dict()
        if new_head:
            head = {key: value for key, value in own.items() if key.startswith(_HEAD_PREFIX)}
            state = {**{k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIX)}, **head}
        missing = [key for key in own if key not in state]
        unknown = [key for key in state if key not in own]
        shapes = [f"{key}: {tuple(state[key].shape)} here {tuple(own[key].shape)}"
                  for key in own if key in state and state[key].shape != own[key].shape]
        problems = []
        for what, keys in (("missing", missing), ("unknown", unknown), ("shape mismatch", shapes)):
            if keys:
                problems.append(f"{len(keys)} {what}: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}")
        if problems:
            hint = " (an ASTModel's weights have no classifier; the prefix audio_spectrogram_transformer. must be " \
                   "kept)" if any(key.startswith("classifier.") for key in missing) else ""
            raise ValueError(f"{where} does not fit this PackedAST: " + "; ".join(problems) + hint)
        self.load_state_dict(state, strict=True)

    # --------------------------------------------------------------------------------------------
    # facts for callers
    # --------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """The constructor's keyword arguments (plain Python values): ``PackedAST(**model.config)``
        builds the same architecture and options."""
        return dict(self._config)

    @property
    def patch_grid(self) -> PatchGrid:
        """How this model cuts ``[1, num_mel_bins, frames]`` spectrograms (patch, stride, the
        extent of its position grid), for `elasticast_kernels.models.inputs`."""
        return PatchGrid(1, self.patch_size, self.grid[0], self.grid[1], self.past_time_table, self.stride)

    def num_tokens(self, frames: int | np.ndarray) -> int | np.ndarray:
        """Patch tokens of a clip of ``frames`` frames (``frames < patch_size`` counts as
        ``patch_size``): ``f * ((frames - p) // stride_t + 1)``, as the packer, plans and
        ``group_max_seq_len`` count them. The encoder sees 2 more per clip (the special tokens)."""
        return num_tokens(frames, self.num_mel_bins, self.patch_size, self.stride)

    def to_spectrogram(self, features: torch.Tensor, name: str = "features") -> torch.Tensor:
        """``[frames, num_mel_bins]`` (``ASTFeatureExtractor``'s per-clip layout) -> the
        ``[1, num_mel_bins, max(frames, patch_size)]`` spectrogram the packer takes (a view unless a
        short clip is padded with ``pad_value``). For pipelines that build a `PackedBatch` themselves:
        ``pack_spectrograms(specs, model.patch_size, stride=model.stride)``.

        Raises:
            TypeError: not a floating-point tensor.
            ValueError: not 2-D, or not ``num_mel_bins`` mel bins (naming ``name``).
        """
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [frames, {self.num_mel_bins}], got {type(features).__name__}")
        if features.dim() != 2 or features.shape[1] != self.num_mel_bins:
            hint = " (transposed? AST features are [frames, mel])" if features.dim() == 2 and \
                features.shape[0] == self.num_mel_bins else ""
            hint = hint or (" (one clip per list item, without a batch axis)" if features.dim() == 3 else "")
            raise ValueError(f"{name} must be [frames, num_mel_bins={self.num_mel_bins}] as ASTFeatureExtractor "
                             f"gives them, got shape {tuple(features.shape)}{hint}")
        if not features.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {features.dtype}")
        spec = features.t().unsqueeze(0)
        frames = features.shape[0]
        if frames < self.patch_size:
            spec = nn.functional.pad(spec, (0, self.patch_size - frames), value=self.pad_value)
        return spec

    # --------------------------------------------------------------------------------------------
    # forward
    # --------------------------------------------------------------------------------------------
    def forward(self, batched_samples, group_samples: bool = True, group_max_seq_len: int = 2048) -> torch.Tensor:
        """Logits ``[num_clips, num_classes]`` in the input order.

        Args:
            batched_samples: a list of ``[frames, num_mel_bins]`` tensors (one per clip, any number
                of frames; one dtype and device); with ``group_samples=False`` a list of rows, each
                a list of such tensors, packed as given; or a `PackedBatch` of
                ``[1, num_mel_bins, frames]`` spectrograms cut with ``patch_size`` and ``stride``.
            group_samples: pack the clips with ``self.packing`` (True) or take the caller's rows.
            group_max_seq_len: most patch tokens per pack (a longer clip gets a pack of its own).
                Packs only group the work: logits are the same for any value.

        Raises:
            TypeError / ValueError: malformed clips (the message names the clip), a bad
                ``group_max_seq_len``, a clip past the position table with
                ``past_time_table="error"``, a device or dtype mismatch with the model.
        """
        return self.classifier(self.embed(batched_samples, group_samples, group_max_seq_len))

    def embed(self, batched_samples, group_samples: bool = True, group_max_seq_len: int = 2048) -> torch.Tensor:
        """The pooled embedding of every clip, ``[num_clips, hidden_size]`` in the input order:
        the mean of the [CLS] and distillation tokens after the final LayerNorm (``pooler_output``
        of ``ASTModel``), what the classifier sees (``forward(x) == classifier(embed(x))``)."""
        like = self.audio_spectrogram_transformer.embeddings.patch_embeddings.projection.weight
        if isinstance(batched_samples, PackedBatch):
            for j, (freq, _) in enumerate(batched_samples.grid_shapes or ()):
                if freq != self.grid[0]:
                    raise ValueError(f"PackedBatch.grid_shapes[{j}] has {freq} frequency patches; this model reads "
                                     f"{self.grid[0]} ({self.num_mel_bins} mel bins, patch {self.patch_size}, "
                                     f"stride {self.stride[0]})")
            prepared = prepare_packed(batched_samples, self.patch_grid, like=like)
        else:
            specs = self._spectrograms(batched_samples, group_samples)
            prepared = prepare_spectrograms(specs, self.patch_grid, group_samples=group_samples,
                                            max_tokens=group_max_seq_len, strategy=self.packing, like=like)
        time_table = prepared.time_table(self.audio_spectrogram_transformer.embeddings.time_major_grid())
        return prepared.in_input_order(self.embed_packed(prepared.batch, time_table))

    def embed_packed(self, batch: PackedBatch, time_table: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings ``[num_clips, hidden_size]`` of a prepared `PackedBatch` in its segment order
        (no checks: `embed` does those). ``batch.time_idx`` indexes ``time_table`` ``[t, f, hidden]``
        (default: the position grid; `embed` passes it extended past the table)."""
        backbone = self.audio_spectrogram_transformer
        embeddings = backbone.embeddings
        if time_table is None:
            time_table = embeddings.time_major_grid()
        freq_rows = time_table.shape[1]
        rows = batch.time_idx.long() * freq_rows + batch.freq_idx.long()
        positions = time_table.reshape(-1, time_table.shape[-1]).index_select(0, rows)
        patches = embeddings.patch_embeddings(batch.patches) + positions
        layout, gather, specials = _with_special_tokens(batch.layout)
        x = torch.cat([patches, embeddings.special_tokens().to(patches.dtype)]).index_select(0, gather)
        x = embeddings.dropout(x)
        x = backbone.encode(x, layout, self._attention_fn(x))
        # The final LayerNorm is per token: only the special tokens' outputs are pooled.
        special = backbone.layernorm(x.index_select(0, specials)).view(-1, SPECIAL_TOKENS, x.shape[-1])
        return (special[:, 0] + special[:, 1]) / 2

    # --------------------------------------------------------------------------------------------
    def _spectrograms(self, samples: Any, group_samples: bool) -> list:
        """The caller's ``[frames, mel]`` clips as packer spectrograms, same nesting."""
        if not isinstance(samples, (list, tuple)):
            raise TypeError("batched_samples must be a list of [frames, num_mel_bins] tensors or a PackedBatch, "
                            f"got {type(samples).__name__}")
        if group_samples:
            return [self.to_spectrogram(clip, f"clip {i}") for i, clip in enumerate(samples)]
        return [[self.to_spectrogram(clip, f"clip [{r}][{c}]") for c, clip in enumerate(row)]
                if isinstance(row, (list, tuple)) else row for r, row in enumerate(samples)]

    def _attention_fn(self, x: torch.Tensor) -> BackendFn:
        """The backend for this forward, resolved once for all layers (autocast's dtype when on)."""
        device_type = x.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
        return BACKENDS[self.resolved_backend(x.device, dtype)].fn

    def resolved_backend(self, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
        """The concrete attention backend this model uses for tensors on ``device``/``dtype``."""
        return resolve_backend(self.attention_backend, device, dtype)


@host_side
def _with_special_tokens(layout: SeqLayout) -> tuple[SeqLayout, torch.Tensor, torch.Tensor]:
    """The layout with 2 special tokens in front of every segment, and two indices on its device:

    - ``gather [total + 2 * segments]``: row of ``cat([patch tokens, cls, distillation])`` that each
      position of the new layout takes (patches keep their order; the specials are rows
      ``total`` and ``total + 1``, shared by every segment);
    - ``specials [2 * segments]``: positions of each segment's [CLS] and distillation tokens.

    Host arithmetic on ``seqlens``, copied without a sync (cached on the layout).
    """
    def build():
        seqlens = np.asarray(layout.seqlens, dtype=np.int64)
        total, segments = int(seqlens.sum()), len(seqlens)
        starts = cumulative_lengths(seqlens + SPECIAL_TOKENS)[:-1]
        specials = (starts[:, None] + np.arange(SPECIAL_TOKENS)).reshape(-1)
        gather = np.empty(total + SPECIAL_TOKENS * segments, dtype=np.int64)
        is_patch = np.ones(len(gather), dtype=bool)
        is_patch[specials] = False
        gather[is_patch] = np.arange(total)
        gather[specials] = total + np.tile(np.arange(SPECIAL_TOKENS), segments)
        device = layout.device
        with_specials = SeqLayout((seqlens + SPECIAL_TOKENS).tolist(), layout.pack_offsets, device=device)
        return (with_specials, host_to_device(torch.from_numpy(gather), device),
                host_to_device(torch.from_numpy(specials), device))

    return layout.cached("ast_special_tokens", build)
