"""A trained classifier on disk: its weights plus everything needed to use them.

A file saved here (or a training checkpoint that embeds the same card) rebuilds the exact model
with one call; nothing has to be remembered or re-typed:

    save_model("model.pt", model, classes=["dog", "cat"], features=FeatureSettings(normalize=(-4.3, 4.6)))
    model, card = load_model("model.pt")        # eval mode, same constructor arguments and scale
    card.classes, card.features                 # label names, fbank settings and normalisation

The :class:`ModelCard` holds the architecture's name, its constructor arguments (softmax scale
included: a wrong scale loads without an error and silently predicts differently), the class
names, whether the labels are multi-label, the :class:`FeatureSettings` the model was trained on,
and the package version that wrote it. Files are written atomically with a content digest and
read with ``weights_only=True`` (`elasticast_kernels.serialization`).

Published ElasticAST state dicts (bare ``{name: tensor}``) still load with
``ElasticAST.load_state_dict`` as before; they carry no card, so :func:`load_model` refuses them
with a message that says how to wrap one (:func:`save_model` after building the model by hand).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from elasticast_kernels._checks import check_bool, check_int, check_number
from elasticast_kernels.serialization import CheckpointError, atomic_save, read_file

__all__ = ["ARCHITECTURES", "FeatureSettings", "ModelCard", "MODEL_FORMAT", "build_model", "load_model",
           "model_card", "save_model"]

#: Marker of an exported model file: ``(name, version)``.
MODEL_FORMAT = ("elasticast-model", 1)
#: Key under which a training checkpoint embeds the card (its weights are under ``"model"``).
CARD_KEY = "model_card"

#: Architecture name -> ``"module:Class"``; the class takes its ``config`` as keyword arguments.
ARCHITECTURES: dict[str, str] = {"ElasticAST": "elasticast_kernels.models:ElasticAST"}
ARCHITECTURES["PackedAST"] = "elasticast_kernels.models:PackedAST"


@dataclass(frozen=True)
class FeatureSettings:
    """How audio becomes the model's input: Kaldi fbank options, time resolution, normalisation.

    The fields are the arguments of `elasticast_kernels.data.fbank` /
    `elasticast_kernels.data.audio_to_spectrogram` (see there); ``normalize`` is ``(mean, std)``
    applied as ``(x - mean) / std`` (the AST recipes' ``2 * std`` is folded into ``std``), or None.
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    quality: float = 1.0
    low_freq: float = 20.0
    high_freq: float = 0.0
    preemphasis: float = 0.97
    normalize: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        check_int("FeatureSettings.sample_rate", self.sample_rate, 1)
        check_int("FeatureSettings.num_mel_bins", self.num_mel_bins, 4)
        for name in ("frame_shift_ms", "frame_length_ms", "quality", "low_freq", "high_freq", "preemphasis"):
            positive = name in ("frame_shift_ms", "frame_length_ms", "quality")
            object.__setattr__(self, name, check_number(f"FeatureSettings.{name}", getattr(self, name), positive=positive))
        if self.normalize is not None:
            try:
                mean, std = (float(v) for v in self.normalize)
            except (TypeError, ValueError):
                raise ValueError(f"FeatureSettings.normalize must be None or (mean, std), got {self.normalize!r}") from None
            if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
                raise ValueError(f"FeatureSettings.normalize needs a finite mean and a finite std > 0, got {self.normalize!r}")
            object.__setattr__(self, "normalize", (mean, std))

    def fbank_options(self) -> dict[str, float]:
        """Keyword options of `elasticast_kernels.data.fbank` besides ``sample_rate``/``quality``/``normalize``."""
        return {"frame_shift_ms": self.frame_shift_ms, "frame_length_ms": self.frame_length_ms,
                "low_freq": self.low_freq, "high_freq": self.high_freq, "preemphasis": self.preemphasis}

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["normalize"] = None if self.normalize is None else list(self.normalize)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "FeatureSettings":
        """Raises ValueError naming an unknown or bad field."""
        if not isinstance(values, Mapping):
            raise ValueError(f"feature settings must be a mapping, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown feature settings {unknown}")
        return cls(**dict(values))


@dataclass(frozen=True)
class ModelCard:
    """What a saved model is and how to use it.

    Attributes:
        architecture: a key of :data:`ARCHITECTURES` ("ElasticAST").
        config: the constructor's keyword arguments (``model.config``).
        classes: label names in logit order (``len == config["num_classes"]`` when given).
        multi_label: sigmoid scores per class (True) or a softmax over classes (False).
        features: the :class:`FeatureSettings` of the training data.
        version: the elasticast-kernels version that wrote the file.
    """

    architecture: str
    config: dict
    classes: tuple[str, ...]
    multi_label: bool = False
    features: FeatureSettings = field(default_factory=FeatureSettings)
    version: str = ""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; known: {sorted(ARCHITECTURES)}")
        if not isinstance(self.config, dict) or not all(isinstance(key, str) for key in self.config):
            raise ValueError(f"config must be a dict of keyword arguments, got {type(self.config).__name__}")
        classes = tuple(self.classes)
        if not all(isinstance(name, str) for name in classes):
            raise ValueError("classes must be label names (str)")
        if len(set(classes)) != len(classes):
            raise ValueError("classes must not repeat a name")
        num_classes = self.config.get("num_classes")
        if classes and num_classes is not None and len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names for a model with num_classes={num_classes}")
        object.__setattr__(self, "classes", classes)
        check_bool("multi_label", self.multi_label)
        if not isinstance(self.features, FeatureSettings):
            raise TypeError(f"features must be FeatureSettings, got {type(self.features).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "config": dict(self.config), "classes": list(self.classes),
                "multi_label": self.multi_label, "features": self.features.to_dict(), "version": self.version}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelCard":
        """Raises ValueError naming the missing or bad field."""
        if not isinstance(values, Mapping):
            raise ValueError(f"a model card must be a mapping, got {type(values).__name__}")
        missing = [key for key in ("architecture", "config", "classes") if key not in values]
        if missing:
            raise ValueError(f"model card lacks {missing}")
        features = values.get("features")
        return cls(
            architecture=values["architecture"], config=values["config"], classes=tuple(values["classes"]),
            multi_label=values.get("multi_label", False),
            features=FeatureSettings() if features is None else FeatureSettings.from_dict(features),
            version=str(values.get("version", "")),
        )


def _architecture_of(model: nn.Module) -> str:
    for name, target in ARCHITECTURES.items():
        module, _, attribute = target.partition(":")
        if type(model) is getattr(importlib.import_module(module), attribute):
            return name
    raise TypeError(f"cannot save a {type(model).__name__}: known architectures are {sorted(ARCHITECTURES)}")


def model_card(model: nn.Module, *, classes: Sequence[str] = (), features: FeatureSettings | None = None,
               multi_label: bool = False) -> ModelCard:
    """The card of ``model`` (its ``config``), with the label names and feature settings given.

    Raises:
        TypeError: ``model`` is not one of :data:`ARCHITECTURES`.
        ValueError: bad classes (repeated, or not ``num_classes`` of them) or settings.
    """
    from elasticast_kernels import __version__

    return ModelCard(architecture=_architecture_of(model), config=model.config, classes=tuple(classes),
                     multi_label=multi_label, features=features or FeatureSettings(), version=__version__)


def save_model(path: str | os.PathLike, model: nn.Module, *, classes: Sequence[str] = (),
               features: FeatureSettings | None = None, multi_label: bool = False) -> ModelCard:
    """Write ``model``'s weights and card to ``path`` (atomic, with a content digest).

    The weights are the model's own ``state_dict()`` (for `ElasticAST`: the published keys), on
    the CPU. A model wrapped by DDP/FSDP must be unwrapped first
    (`elasticast_kernels.training.full_model_state` gives the full state of a sharded one; build
    a plain model from it).

    Returns:
        The :class:`ModelCard` written.
    """
    card = model_card(model, classes=classes, features=features, multi_label=multi_label)
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    atomic_save(path, {"format": MODEL_FORMAT, "card": card.to_dict(), "state_dict": state})
    return card


def build_model(card: ModelCard, **overrides: Any) -> nn.Module:
    """A freshly initialised model of ``card``'s architecture and config (``overrides`` replace
    config entries, e.g. ``attention_backend="torch"``)."""
    module, _, attribute = ARCHITECTURES[card.architecture].partition(":")
    cls = getattr(importlib.import_module(module), attribute)
    return cls(**{**card.config, **overrides})


def _is_export(payload: dict) -> bool:
    marker = payload.get("format")
    return isinstance(marker, (tuple, list)) and tuple(marker) == MODEL_FORMAT


def _has_card(payload: dict) -> bool:
    """Files that carry a card were written with a digest: require it there."""
    return _is_export(payload) or CARD_KEY in payload


def load_model(path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
               **overrides: Any) -> tuple[nn.Module, ModelCard]:
    """Rebuild the exact model from an exported file or a training checkpoint that embeds a card.

    Args:
        path: a file from :func:`save_model`, or a training checkpoint (``last.pt`` of
            ``examples/train.py``) holding ``"model_card"`` and ``"model"``.
        map_location: device of the loaded weights; the model is moved there too.
        overrides: config entries to replace (e.g. ``attention_backend="torch"``); never the
            shape-defining ones, which must match the weights.

    Returns:
        ``(model in eval mode, its ModelCard)``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: an unreadable, truncated, corrupt or foreign file, a bare state dict
            without a card, a card that does not describe the weights (the message names the file).
    """
    payload = read_file(path, "model file", map_location, require_digest=_has_card)
    where = os.fspath(path)
    if _is_export(payload):
        card_dict, state = payload.get("card"), payload.get("state_dict")
    elif CARD_KEY in payload:
        card_dict, state = payload[CARD_KEY], payload.get("model")
    else:
        raise CheckpointError(
            f"{where} carries no model card (constructor arguments, classes, feature settings): it is a bare "
            "state dict or another program's file. Build the model by hand, load_state_dict it, then "
            "elasticast_kernels.saved_model.save_model(path, model, classes=..., features=...) once."
        )
    try:
        card = ModelCard.from_dict(card_dict)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{where}: invalid model card: {error}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where}: the weights are missing or not a state dict of tensors")
    try:
        model = build_model(card, **overrides)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{where}: the model card's config does not build a model: {error}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{where}: the weights do not fit the card's architecture: {error}") from None
    return model.to(map_location).eval(), card
