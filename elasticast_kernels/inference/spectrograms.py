"""Waveform -> model inputs with a saved model's feature settings: one whole spectrogram, or windows.

``whole`` gives one ``[1, F, T]`` spectrogram per file, computed in blocks of frames so that a
20-minute file never holds the fbank's ``[frames, fft]`` intermediates at once: the features stay
linear in the length with a small constant. Every frame depends on its own samples only (per-frame
DC offset, pre-emphasis inside the frame), so the blocks concatenate to exactly the spectrogram of
one call.

``window`` cuts the waveform into windows of ``window`` samples every ``hop`` samples, the last
one ending at the end of the file, and computes each window's spectrogram exactly as a clip of
that length would get it: a window is scored like a training clip.
"""
from __future__ import annotations

import torch

# the frame geometry fbank itself uses (Kaldi's sample-count truncation), so blocks meet exactly
from elasticast_kernels.data.features import _frame_geometry, audio_to_spectrogram, num_frames
from elasticast_kernels.saved_model import FeatureSettings

__all__ = ["spectrogram", "window_bounds"]

#: frames per block of the whole-file features (a multiple of every patch size up to 64)
_BLOCK_FRAMES = 8192


def spectrogram(waveform: torch.Tensor, features: FeatureSettings, patch_size: int) -> torch.Tensor:
    """``[1, num_mel_bins, T]`` (T a multiple of ``patch_size``) of a float32 ``[samples]`` waveform
    at ``features.sample_rate``, on the waveform's device: what
    :func:`~elasticast_kernels.data.audio_to_spectrogram` returns for it, built block by block."""
    options = features.fbank_options()
    shift_ms, length_ms = options["frame_shift_ms"], options["frame_length_ms"]
    convert = dict(num_mel_bins=features.num_mel_bins, patch_size=patch_size, normalize=features.normalize, **options)
    frames = num_frames(waveform.shape[0], features.sample_rate, features.quality, shift_ms, length_ms)
    usable = frames // patch_size * patch_size
    block = _BLOCK_FRAMES // patch_size * patch_size or patch_size
    if usable <= block:  # short clips (padded to one patch) and everything up to one block
        return audio_to_spectrogram(waveform, features.sample_rate, features.quality, **convert)
    shift, size, _ = _frame_geometry(features.sample_rate, shift_ms, length_ms, features.quality)
    parts = []
    for first in range(0, usable, block):
        count = min(block, usable - first)
        samples = waveform[first * shift:(first + count - 1) * shift + size]
        parts.append(audio_to_spectrogram(samples, features.sample_rate, features.quality, **convert))
    return torch.cat(parts, dim=2)


def window_bounds(num_samples: int, window: int, hop: int) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges of the windows of a ``num_samples`` waveform.

    Windows of ``window`` samples start every ``hop`` samples; when they do not reach the end, one
    more window ends exactly there, so every sample is covered and every window is full length. A
    waveform no longer than one window is one window, the whole of it.

    Raises:
        ValueError: ``window`` or ``hop`` < 1, or ``hop > window`` (samples would be skipped).
    """
    if window < 1 or hop < 1 or hop > window:
        raise ValueError(f"need 1 <= hop <= window samples, got window={window}, hop={hop}")
    if num_samples <= window:
        return [(0, num_samples)]
    bounds = [(start, start + window) for start in range(0, num_samples - window + 1, hop)]
    if bounds[-1][1] < num_samples:
        bounds.append((num_samples - window, num_samples))
    return bounds
