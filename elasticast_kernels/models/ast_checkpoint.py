"""Hugging Face AST checkpoints -> `PackedAST`: the config, the weights (both layouts), local files.

Nothing here downloads anything, and reading a ``save_pretrained`` directory does not need
``transformers`` (only ``safetensors`` for ``.safetensors`` weights): the files are read directly.

Weight names. `PackedAST` uses transformers 5's names. A transformers 4 state dict is renamed
key by key (``N`` is the layer; ``P`` is ``weight`` or ``bias``), under the common prefix
``audio_spectrogram_transformer.``:

=============================================================  =========================================
transformers 4                                                 transformers 5 / `PackedAST`
=============================================================  =========================================
``encoder.layer.N.attention.attention.query.P``                ``layers.N.attention.q_proj.P``
``encoder.layer.N.attention.attention.key.P``                  ``layers.N.attention.k_proj.P``
``encoder.layer.N.attention.attention.value.P``                ``layers.N.attention.v_proj.P``
``encoder.layer.N.attention.output.dense.P``                   ``layers.N.attention.o_proj.P``
``encoder.layer.N.intermediate.dense.P``                       ``layers.N.mlp.fc1.P``
``encoder.layer.N.output.dense.P``                             ``layers.N.mlp.fc2.P``
``encoder.layer.N.layernorm_before.P``                         ``layers.N.layernorm_before.P``
``encoder.layer.N.layernorm_after.P``                          ``layers.N.layernorm_after.P``
=============================================================  =========================================

Unchanged in both: ``embeddings.{cls_token, distillation_token, position_embeddings}``,
``embeddings.patch_embeddings.projection.P``, ``layernorm.P`` (all under the prefix) and
``classifier.{layernorm, dense}.P``.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from typing import Any, Mapping

import torch

from elasticast_kernels._optional import import_optional

__all__ = [
    "AST_CONFIG_DEFAULTS", "AST_MODEL_TYPE", "T4_TO_T5", "class_names", "hf_state_dict", "packed_kwargs", "read_hf_directory",
]

AST_MODEL_TYPE = "audio-spectrogram-transformer"
PREFIX = "audio_spectrogram_transformer."

#: ``ASTConfig``'s defaults (the AudioSet AST: ViT-B, 16x16 patches, stride 10, 1024 frames x 128
#: mel bins), for config.json files that leave a field out; a test checks them against ASTConfig.
AST_CONFIG_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    "layer_norm_eps": 1e-12, "patch_size": 16, "qkv_bias": True, "frequency_stride": 10, "time_stride": 10,
    "max_length": 1024, "num_mel_bins": 128,
}
#: ``PretrainedConfig``'s default number of labels, when a config has neither num_labels nor id2label.
DEFAULT_NUM_LABELS = 2

#: transformers 4 key (after the prefix) -> transformers 5 key; see the module docstring.
T4_TO_T5: tuple[tuple[str, str], ...] = (
    (r"encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.attention.q_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.attention.k_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.attention.v_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"encoder\.layer\.(\d+)\.(layernorm_before|layernorm_after)\.", r"layers.\1.\2."),
)
_T4_PATTERNS = [(re.compile("^" + re.escape(PREFIX) + source + r"(weight|bias)$"), target) for source, target in T4_TO_T5]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------
def packed_kwargs(config: Any, where: str = "config") -> dict[str, Any]:
    """`PackedAST` constructor arguments from an AST config (an ``ASTConfig`` or its dict).

    Raises:
        TypeError: ``config`` is neither.
        ValueError: not an AST config (``model_type``), or ``patch_size`` is not one int (an AST
            with a patch pair does not build in transformers either).
    """
    values = _config_dict(config, where)
    model_type = values.get("model_type")
    if model_type != AST_MODEL_TYPE:
        raise ValueError(f"{where} describes a {model_type!r} model, not an Audio Spectrogram Transformer "
                         f"(model_type {AST_MODEL_TYPE!r})")
    merged = {**AST_CONFIG_DEFAULTS, **{k: v for k, v in values.items() if k in AST_CONFIG_DEFAULTS}}
    if isinstance(merged["patch_size"], (list, tuple)):
        raise ValueError(f"{where}: patch_size={merged['patch_size']!r}; only square patches (one int) are supported")
    if merged["attention_probs_dropout_prob"]:
        warnings.warn(f"{where} has attention_probs_dropout_prob={merged['attention_probs_dropout_prob']}: the "
                      "packed attention backends apply no dropout to attention probabilities, so it is ignored "
                      "(inference is unaffected; fine-tuning runs without it)", stacklevel=3)
    kwargs = {key: merged[key] for key in AST_CONFIG_DEFAULTS if key != "attention_probs_dropout_prob"}
    if values.get("head_dim") is not None:
        kwargs["head_dim"] = values["head_dim"]
    kwargs["num_classes"] = _num_labels(values, where)
    return kwargs


def class_names(config: Any) -> tuple[str, ...]:
    """Label names in logit order from a config's ``id2label`` (empty when it has none)."""
    id2label = _config_dict(config, "config").get("id2label") or {}
    try:
        return tuple(str(id2label[key]) for key in sorted(id2label, key=int))
    except (TypeError, ValueError):
        return ()


def _config_dict(config: Any, where: str) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    raise TypeError(f"{where} must be an ASTConfig or a dict, got {type(config).__name__}")


def _num_labels(values: Mapping[str, Any], where: str) -> int:
    id2label = values.get("id2label")
    count = values.get("num_labels", len(id2label) if isinstance(id2label, Mapping) and id2label else DEFAULT_NUM_LABELS)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{where}: num_labels must be a positive int (PackedAST needs a classifier), got {count!r}")
    return count


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------
def hf_state_dict(state_dict: Mapping[str, torch.Tensor], where: str = "state_dict") -> dict[str, torch.Tensor]:
    """``state_dict`` of an ``ASTForAudioClassification`` in either layout -> transformers 5 keys.

    Keys already in the transformers 5 layout pass unchanged; transformers 4 keys are renamed by
    :data:`T4_TO_T5`. Whether every expected key is there is checked where the model is known
    (`PackedAST.load_hf_state_dict`).

    Raises:
        TypeError: not a mapping of names to tensors.
        ValueError: keys of both layouts at once (two checkpoints merged by mistake).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{where} must be a mapping of parameter names to tensors, got {type(state_dict).__name__}")
    renamed, layouts = {}, set()
    for key, tensor in state_dict.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{where} must map str names to tensors; {key!r} maps to a {type(tensor).__name__}")
        renamed[key] = _t5_name(key)
        if renamed[key] != key:
            layouts.add("transformers 4")
        elif key.startswith(PREFIX + "layers."):
            layouts.add("transformers 5")
    if len(layouts) > 1:
        raise ValueError(f"{where} mixes transformers 4 (encoder.layer.N...) and transformers 5 (layers.N...) keys")
    return {renamed[key]: tensor for key, tensor in state_dict.items()}


def _t5_name(key: str) -> str:
    for pattern, target in _T4_PATTERNS:
        match = pattern.match(key)
        if match:
            return PREFIX + match.expand(target) + match.group(match.lastindex)
    return key


# --------------------------------------------------------------------------------------------------
# a save_pretrained directory
# --------------------------------------------------------------------------------------------------
def read_hf_directory(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(config dict, state dict, preprocessor config dict or None)`` of a local ``save_pretrained``
    directory: ``config.json``, the weights (``model.safetensors``, ``pytorch_model.bin`` or their
    sharded ``.index.json`` forms, on the CPU) and ``preprocessor_config.json`` when present.

    Raises:
        FileNotFoundError: no such directory, no ``config.json``, no weights file (the message lists
            the names looked for), a shard named by an index but missing.
        ValueError: a file that is not valid JSON (file and line), not an AST config, corrupt weights
            (the file named).
        ImportError: ``.safetensors`` weights without the ``safetensors`` package (names the extra).
    """
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        what = "a file" if os.path.exists(folder) else "nothing"
        raise FileNotFoundError(f"{folder} is {what}, not a save_pretrained directory (config.json + weights)")
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{folder} has no config.json: not a save_pretrained directory")
    config = _read_json(config_file)
    packed_kwargs(config, config_file)  # refuse a foreign config before reading weights
    preprocessor_file = os.path.join(folder, "preprocessor_config.json")
    preprocessor = _read_json(preprocessor_file) if os.path.isfile(preprocessor_file) else None
    for name in WEIGHT_FILES:
        weights = os.path.join(folder, name)
        if os.path.isfile(weights):
            return config, _read_weights(weights), preprocessor
    raise FileNotFoundError(f"{folder} has no weights: looked for {', '.join(WEIGHT_FILES)}")


def _read_json(file: str) -> dict[str, Any]:
    try:
        with open(file, encoding="utf-8") as handle:
            values = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}, line {error.lineno}: not valid JSON ({error.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{file}: not a UTF-8 text file") from None
    if not isinstance(values, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(values).__name__}")
    return values


def _read_weights(file: str) -> dict[str, torch.Tensor]:
    if file.endswith(".index.json"):
        weight_map = _read_json(file).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{file} has no weight_map of parameter names to shard files")
        state: dict[str, torch.Tensor] = {}
        folder = os.path.dirname(file)
        for shard in sorted(set(weight_map.values())):
            if os.path.basename(shard) != shard:
                raise ValueError(f"{file} names a shard outside its directory: {shard!r}")
            shard_file = os.path.join(folder, shard)
            if not os.path.isfile(shard_file):
                raise FileNotFoundError(f"{file} names the shard {shard}, which is missing")
            state.update(_read_weights(shard_file))
        return state
    if file.endswith(".safetensors"):
        safetensors_torch = import_optional("safetensors.torch", f"reading {os.path.basename(file)}")
        try:
            return safetensors_torch.load_file(file, device="cpu")
        except Exception as error:  # safetensors raises its own SafetensorError (and OSError, ...)
            raise ValueError(f"{file}: not a readable safetensors file ({error})") from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors all mean the same here
        raise ValueError(f"{file}: not a readable PyTorch weights file ({error})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{file} holds a {type(state).__name__}, not a state dict")
    return state

