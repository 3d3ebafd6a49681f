"""``ASTFeatureExtractor``'s features without its padding: one ``[frames, num_mel_bins]`` per clip.

``ASTFeatureExtractor`` (transformers 5) computes, per clip:

1. Kaldi fbank of the float32 waveform (not rescaled): torchaudio's ``kaldi.fbank`` with its
   defaults except ``window_type="hanning"`` and ``num_mel_bins``: 25 ms windows every 10 ms,
   only whole windows (snip_edges), DC offset removed, pre-emphasis 0.97, symmetric Hann window,
   512-point power spectrum, mel filters 20 Hz .. Nyquist, ``log(max(energy, float32 eps))``, no
   dither, no energy term. Without torchaudio it runs a numpy version of the same (float64).
2. zero-padding (the log-mel value 0, whatever ``padding_value`` says) or truncation to
   ``max_length`` frames;
3. ``(x - mean) / (2 * std)`` when ``do_normalize`` (AudioSet defaults -4.2677393, 4.5689974).

`ASTFeatures` does 1 and 3 with `elasticast_kernels.data.fbank` (Kaldi-compatible, computed in
float64 and returned in float32) and skips 2: a clip keeps all its frames, so no padding ever
reaches `PackedAST`. Where the extractor's frames are real (the first ``min(frames, max_length)``)
the two agree to float32 rounding with its numpy path (measured: at most 1.5e-7) and to ~1e-3 with
its torchaudio path (torchaudio builds its mel filters in float32). A clip shorter than one 25 ms
window has 0 frames (the extractor gives all padding); `PackedAST` pads clips shorter than one
patch with `ASTFeatures.pad_value`, the extractor's padding after normalisation.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from elasticast_kernels._checks import check_int, check_number
from elasticast_kernels.data.features import fbank, num_frames
from elasticast_kernels.saved_model import FeatureSettings

__all__ = ["ASTFeatures", "AUDIOSET_MEAN", "AUDIOSET_STD"]

#: ``ASTFeatureExtractor``'s default normalisation statistics (AudioSet log-mel mean and std).
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974

# The extractor's fbank options besides sample rate and mel bins (torchaudio's defaults); a
# FeatureSettings with other values describes features an AST checkpoint was not trained on.
_KALDI = {"frame_shift_ms": 10.0, "frame_length_ms": 25.0, "quality": 1.0, "low_freq": 20.0, "high_freq": 0.0,
          "preemphasis": 0.97}


@dataclass(frozen=True)
class ASTFeatures:
    """Unpadded ``ASTFeatureExtractor`` features.

    Attributes (the extractor's, same names and defaults):
        sampling_rate: Hz the waveforms must have (no resampling here: `elasticast_kernels.data.audio`
            reads and resamples files).
        num_mel_bins: mel filters, the model's ``num_mel_bins``.
        mean, std: normalisation ``(x - mean) / (2 * std)``.
        do_normalize: apply it.
        max_length: the extractor's fixed length in frames; used only by ``max_frames="extractor"``.

    Raises:
        TypeError / ValueError: a field of the wrong type or out of range (named).
    """

    sampling_rate: int = 16000
    num_mel_bins: int = 128
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD
    do_normalize: bool = True
    max_length: int = 1024

    def __post_init__(self) -> None:
        for name, low in (("sampling_rate", 1), ("num_mel_bins", 4), ("max_length", 1)):
            value = getattr(self, name)
            object.__setattr__(self, name, check_int(f"ASTFeatures.{name}", value, low))
        for name in ("mean", "std"):
            object.__setattr__(self, name, check_number(f"ASTFeatures.{name}", getattr(self, name)))
        if self.std <= 0:
            raise ValueError(f"ASTFeatures.std must be > 0, got {self.std}")
        if not isinstance(self.do_normalize, (bool, np.bool_)):
            raise ValueError(f"ASTFeatures.do_normalize must be a bool, got {self.do_normalize!r}")
        object.__setattr__(self, "do_normalize", bool(self.do_normalize))

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_extractor(cls, extractor: Any) -> "ASTFeatures":
        """The settings of an ``ASTFeatureExtractor`` instance (read from its attributes)."""
        fields = ("sampling_rate", "num_mel_bins", "mean", "std", "do_normalize", "max_length")
        missing = [name for name in fields if not hasattr(extractor, name)]
        if missing:
            raise TypeError(f"extractor must be an ASTFeatureExtractor; a {type(extractor).__name__} lacks {missing}")
        return cls(**{name: getattr(extractor, name) for name in fields})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "preprocessor config") -> "ASTFeatures":
        """From a ``preprocessor_config.json`` dict; absent fields take the extractor's defaults.

        Raises ValueError for another extractor type or a bad value (naming ``where``)."""
        if not isinstance(values, Mapping):
            raise ValueError(f"{where} must be a mapping, got {type(values).__name__}")
        kind = values.get("feature_extractor_type", "ASTFeatureExtractor")
        if kind != "ASTFeatureExtractor":
            raise ValueError(f"{where} is for a {kind}, not an ASTFeatureExtractor")
        known = ("sampling_rate", "num_mel_bins", "mean", "std", "do_normalize", "max_length")
        try:
            return cls(**{name: values[name] for name in known if name in values})
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "ASTFeatures":
        """From ``preprocessor_config.json`` in a local ``save_pretrained`` directory (or that file).

        Raises FileNotFoundError when it is not there, ValueError for invalid JSON (file and line)."""
        file = os.fspath(path)
        if os.path.isdir(file):
            file = os.path.join(file, "preprocessor_config.json")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file} not found: the directory has no preprocessor_config.json")
        try:
            with open(file, encoding="utf-8") as handle:
                values = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{file}, line {error.lineno}: not valid JSON ({error.msg})") from None
        return cls.from_dict(values, file)

    @classmethod
    def from_settings(cls, settings: FeatureSettings, max_length: int = 1024) -> "ASTFeatures":
        """From the `FeatureSettings` of a saved model (what :meth:`settings` wrote).

        Raises ValueError when the settings use fbank options the extractor does not (naming
        them), or a normalisation that is not ``(mean, 2 * std)`` of some std > 0."""
        if not isinstance(settings, FeatureSettings):
            raise TypeError(f"settings must be a FeatureSettings, got {type(settings).__name__}")
        other = {name: getattr(settings, name) for name, value in _KALDI.items() if getattr(settings, name) != value}
        if other:
            raise ValueError(f"FeatureSettings {other} differ from ASTFeatureExtractor's fbank options {_KALDI}")
        if settings.normalize is None:
            return cls(settings.sample_rate, settings.num_mel_bins, do_normalize=False, max_length=max_length)
        mean, scale = settings.normalize
        return cls(settings.sample_rate, settings.num_mel_bins, mean, scale / 2, True, max_length)

    def settings(self) -> FeatureSettings:
        """These features as the `FeatureSettings` a saved model carries (``normalize`` is
        ``(mean, 2 * std)``: the card's convention folds the factor 2 into the std)."""
        normalize = (self.mean, 2 * self.std) if self.do_normalize else None
        return FeatureSettings(sample_rate=self.sampling_rate, num_mel_bins=self.num_mel_bins, normalize=normalize,
                               **_KALDI)

    # --- facts ----------------------------------------------------------------------------------
    @property
    def pad_value(self) -> float:
        """What the extractor's padding becomes after normalisation: ``(0 - mean) / (2 * std)``
        (0 without normalisation). `PackedAST` pads clips shorter than one patch with it."""
        return self._normalize(0.0)

    def num_frames(self, num_samples: int | np.ndarray) -> int | np.ndarray:
        """Frames of a clip of ``num_samples`` samples (0 below one 25 ms window), without computing
        the features: ``1 + (num_samples - 400) // 160`` at 16 kHz."""
        return num_frames(num_samples, self.sampling_rate)

    # --- features -------------------------------------------------------------------------------
    def __call__(
        self,
        raw_speech: Any,
        sampling_rate: int | None = None,
        *,
        max_frames: int | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> list[torch.Tensor]:
        """Per-clip features, unpadded: a list of ``[frames, num_mel_bins]`` tensors.

        Args:
            raw_speech: as the extractor takes it: one mono clip (1-D numpy array, torch tensor or
                list of numbers) or a batch (a list of 1-D clips, or a 2-D array/tensor of rows).
                Values as loaded (e.g. in [-1, 1]); they are taken as float32, like the extractor.
            sampling_rate: the clips' rate; must equal ``self.sampling_rate`` when given.
            max_frames: None keeps every frame (any length); an int keeps at most that many;
                ``"extractor"`` cuts at ``max_length`` as the extractor does.
            dtype: of the returned features (computed in float64).

        Returns:
            One tensor per clip, in order, on the device of a torch input (CPU otherwise); a clip
            shorter than one window gives ``[0, num_mel_bins]``.

        Raises:
            TypeError: a clip that is not numbers.
            ValueError: a wrong ``sampling_rate``, a clip that is not 1-D (stereo: mix it first),
                NaN or infinite samples (naming the clip), a bad ``max_frames``.
        """
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(f"sampling_rate={sampling_rate}, but these features are for {self.sampling_rate} Hz "
                             "audio: resample it first")
        limit = self._frame_limit(max_frames)
        return [self.extract(clip, max_frames=limit, dtype=dtype, name=f"clip {i}")
                for i, clip in enumerate(_as_clips(raw_speech))]

    def extract(self, waveform: Any, *, max_frames: int | None = None, dtype: torch.dtype = torch.float32,
                name: str = "waveform") -> torch.Tensor:
        """One mono clip -> ``[frames, num_mel_bins]`` (see ``__call__``)."""
        clip = _as_tensor(waveform, name)
        if clip.dim() != 1:
            raise ValueError(f"{name} must be a 1-D mono waveform, got shape {tuple(clip.shape)}")
        # the extractor takes waveforms as float32; the fbank runs in float64 like its numpy path
        clip = clip.to(torch.float32).to(torch.float64)
        if not bool(torch.isfinite(clip).all()):
            raise ValueError(f"{name} holds NaN or infinite samples")
        if self.num_frames(clip.shape[0]) == 0:
            features = clip.new_zeros((0, self.num_mel_bins))
        else:
            features = fbank(clip, self.sampling_rate, self.num_mel_bins)
        if max_frames is not None:
            features = features[:max_frames]
        return self._normalize(features).to(dtype)

    def _normalize(self, values):
        return (values - self.mean) / (2 * self.std) if self.do_normalize else values

    def _frame_limit(self, max_frames: int | str | None) -> int | None:
        if max_frames is None:
            return None
        if max_frames == "extractor":
            return self.max_length
        return check_int("max_frames (or None, 'extractor')", max_frames, 1)


def _as_clips(raw_speech: Any) -> Sequence[Any]:
    """The extractor's batching rule: a 2-D array or a list of arrays/lists is a batch."""
    if isinstance(raw_speech, (np.ndarray, torch.Tensor)):
        if raw_speech.ndim > 2:
            raise ValueError(f"raw_speech must be one mono clip or a batch of them, got shape {tuple(raw_speech.shape)}")
        return list(raw_speech) if raw_speech.ndim == 2 else [raw_speech]
    if isinstance(raw_speech, (list, tuple)):
        if len(raw_speech) == 0:
            raise ValueError("raw_speech is empty")
        if isinstance(raw_speech[0], (np.ndarray, torch.Tensor, list, tuple)):
            return list(raw_speech)
        return [raw_speech]
    raise TypeError(f"raw_speech must be a numpy array, a torch tensor or a list, got {type(raw_speech).__name__}")


def _as_tensor(waveform: Any, name: str) -> torch.Tensor:
    if isinstance(waveform, torch.Tensor):
        tensor = waveform
    else:
        try:
            tensor = torch.from_numpy(np.asarray(waveform, dtype=np.float64))
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be numbers (a 1-D array), got {type(waveform).__name__}") from None
    if not (tensor.dtype.is_floating_point or tensor.dtype in (torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got {tensor.dtype}")
    return tensor
