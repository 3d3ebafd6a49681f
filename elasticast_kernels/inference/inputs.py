"""What the predictor accepts as audio, turned into float32 mono waveforms at the model's rate.

An input is a path to an audio file (anything libsndfile reads: wav, flac, ogg, ...), a
:class:`Waveform`, or a ``(samples, sample_rate)`` pair. Samples are a numpy array or a torch
tensor, ``[samples]`` (mono) or ``[channels, samples]`` (the layout of ``torchaudio.load``;
``soundfile.read`` returns ``[samples, channels]``: pass its transpose). Channels are averaged and
another rate is resampled with soxr, exactly as :func:`elasticast_kernels.data.audio.read_audio`
does for files, so a file and its decoded samples give the same scores.

Every unusable input raises :class:`~elasticast_kernels.data.audio.AudioError` naming it (the
path, or the waveform's name) and the reason: missing, corrupt, empty, NaN/inf samples, a layout
that is not ``[channels, samples]``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Tuple, Union

import numpy as np
import torch

from elasticast_kernels._optional import import_optional
from elasticast_kernels.data.audio import AudioError, audio_info, read_audio

__all__ = ["AudioInput", "Waveform", "as_input", "input_name", "load_input"]


@dataclass(frozen=True)
class Waveform:
    """Decoded audio given directly: ``samples`` ``[samples]`` or ``[channels, samples]`` (numpy
    array or torch tensor, floating point, values nominally in [-1, 1]) at ``sample_rate`` Hz.
    ``name`` identifies it in results and error messages."""

    samples: Any
    sample_rate: int
    name: str = "<waveform>"


#: One input of the predictor: a path, a :class:`Waveform`, or ``(samples, sample_rate)``.
AudioInput = Union[str, os.PathLike, Waveform, Tuple[Any, int]]


def as_input(item: object, position: int) -> str | Waveform:
    """``item`` as a path (str) or a :class:`Waveform`; ``position`` names unnamed waveforms.

    Raises:
        TypeError: ``item`` is none of the accepted kinds (the message shows its type and position).
    """
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, Waveform):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return Waveform(item[0], item[1], name=f"<waveform {position}>")
    raise TypeError(
        f"input {position} must be a path, a Waveform or a (samples, sample_rate) pair, got {type(item).__name__}"
    )


def input_name(item: str | Waveform) -> str:
    return item if isinstance(item, str) else item.name


def load_input(item: str | Waveform, sample_rate: int) -> tuple[np.ndarray, float]:
    """Decode (a path) or check (a waveform) ``item``: ``(float32 mono [samples] at sample_rate,
    duration in seconds at the source's own rate)``.

    Raises:
        AudioError: the input cannot be used (names it and says why).
        ImportError: a file (soundfile) or another rate (soxr) without the ``audio`` extra.
    """
    if isinstance(item, str):
        info = audio_info(item)
        return read_audio(item, sample_rate, info=info), info.duration_s
    return _mono_at_rate(item, sample_rate)


def _mono_at_rate(wave: Waveform, sample_rate: int) -> tuple[np.ndarray, float]:
    name, rate = wave.name, wave.sample_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate < 1:
        raise AudioError(name, f"sample_rate must be a positive int, got {rate!r}")
    samples = wave.samples
    if isinstance(samples, torch.Tensor):
        if samples.is_complex() or not samples.is_floating_point():
            raise AudioError(name, f"samples must be floating point, got {samples.dtype} (scale integer PCM to [-1, 1])")
        samples = samples.detach().to("cpu", torch.float32).numpy()
    elif isinstance(samples, np.ndarray):
        if not np.issubdtype(samples.dtype, np.floating):
            raise AudioError(name, f"samples must be floating point, got {samples.dtype} (scale integer PCM to [-1, 1])")
    else:
        raise AudioError(name, f"samples must be a numpy array or a torch tensor, got {type(samples).__name__}")
    if samples.ndim == 2:
        if samples.shape[0] > samples.shape[1]:
            raise AudioError(name, f"samples of shape {samples.shape} look like [samples, channels]; "
                                   "pass [channels, samples] (the transpose)")
        # float32 like read_audio, so a file and its decoded samples give the same waveform
        samples = samples.astype(np.float32, copy=False)
        samples = samples.mean(axis=0) if samples.shape[0] > 1 else samples[0]
    elif samples.ndim != 1:
        raise AudioError(name, f"samples must be [samples] or [channels, samples], got shape {samples.shape}")
    if samples.shape[0] == 0:
        raise AudioError(name, "no samples (empty waveform)")
    finite = np.isfinite(samples)
    if not finite.all():
        raise AudioError(name, f"holds NaN or infinite samples (first at {int(np.argmin(finite)) / rate:.3f} s)")
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    duration_s = samples.shape[0] / int(rate)
    if rate != sample_rate:
        soxr = import_optional("soxr", "resampling audio")
        samples = np.ascontiguousarray(soxr.resample(samples, int(rate), sample_rate), dtype=np.float32)
    return samples, duration_s
