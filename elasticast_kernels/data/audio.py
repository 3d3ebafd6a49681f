"""Reading audio files: decode, check, mix to mono, resample. One error type that names the file.

Every reader of audio in the package (manifests for training, ``elasticast-predict``) goes
through :func:`read_audio`, so every bad file fails the same way: an :class:`AudioError` that
names the path and the reason (missing, unreadable or corrupt, no frames, NaN/inf samples). A
NaN sample must never reach the features: it would make that clip's loss NaN and, through the
optimiser, every weight.

Needs the ``audio`` extra (soundfile for wav/flac/ogg through libsndfile, soxr for resampling).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from elasticast_kernels._checks import check_int, check_optional_int, check_path
from elasticast_kernels._optional import import_optional

__all__ = ["AudioError", "AudioInfo", "audio_info", "read_audio", "resampled_length"]


class AudioError(ValueError):
    """An audio file that cannot be used. Attributes: ``path``, ``reason``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file: ``frames`` (samples per channel) at ``sample_rate`` Hz."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def _soundfile():
    return import_optional("soundfile", "reading audio files")


def _check_path(path: str | os.PathLike) -> str:
    path = check_path("path", path)
    if os.path.isdir(path):
        raise AudioError(path, "is a directory, not an audio file")
    if not os.path.exists(path):
        raise AudioError(path, "file not found")
    return path


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """The header of ``path`` without decoding the audio.

    Raises:
        AudioError: missing, a directory, unreadable by libsndfile, or no audio frames.
        ImportError: soundfile is not installed (the message names the extra).
    """
    path = _check_path(path)
    soundfile = _soundfile()
    try:
        info = soundfile.info(path)
    except Exception as error:  # soundfile.LibsndfileError is a RuntimeError; others for odd files
        raise AudioError(path, f"unreadable audio ({_short(error)})") from None
    if info.frames < 1:
        raise AudioError(path, "no audio frames (empty file)")
    if info.samplerate < 1:
        raise AudioError(path, f"invalid sample rate {info.samplerate}")
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def resampled_length(frames: int, file_rate: int, sample_rate: int) -> int:
    """Samples of ``frames`` file samples at ``file_rate`` after resampling to ``sample_rate``
    (soxr's output length; at least 1)."""
    if file_rate == sample_rate:
        return int(frames)
    return max(1, int(round(frames * sample_rate / file_rate)))


def read_audio(
    path: str | os.PathLike,
    sample_rate: int,
    *,
    max_samples: int | None = None,
    info: AudioInfo | None = None,
) -> np.ndarray:
    """Decode ``path`` to float32 mono ``[samples]`` at ``sample_rate`` Hz.

    Channels are averaged; another file rate is resampled with soxr. With ``max_samples`` only
    the file frames needed for the first ``max_samples`` output samples are read (a crop of a
    20-minute file decodes seconds, not minutes).

    Args:
        path: an audio file libsndfile reads (wav, flac, ogg, ...).
        sample_rate: output rate in Hz.
        max_samples: keep at most this many output samples (None: all).
        info: the file's header if already probed (saves one open).

    Raises:
        AudioError: missing, unreadable or corrupt, empty, or holding NaN/inf samples (names the
            file); TypeError/ValueError for bad arguments; ImportError without the audio extra.
    """
    check_int("sample_rate", sample_rate, 1)
    check_optional_int("max_samples", max_samples, 1)
    info = info or audio_info(path)
    path = _check_path(path)
    frames = -1
    if max_samples is not None:
        # 50 ms of extra file frames: the resampler's filter sees the same right context as in a
        # whole-file read, so the crop equals the start of the whole file's samples
        frames = min(info.frames, math.ceil(max_samples * info.sample_rate / sample_rate) + info.sample_rate // 20)
    try:
        audio, rate = _soundfile().read(path, frames=frames, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as error:
        raise AudioError(path, f"unreadable audio ({_short(error)})") from None
    if audio.shape[0] == 0:
        raise AudioError(path, "no audio frames (empty file)")
    if not np.isfinite(audio).all():
        bad = int(np.argmax(~np.isfinite(audio).all(axis=1)))
        raise AudioError(path, f"holds NaN or infinite samples (first at {bad / rate:.3f} s)")
    wave = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if rate != sample_rate:
        soxr = import_optional("soxr", "resampling audio")
        wave = soxr.resample(wave, rate, sample_rate)
    if max_samples is not None:
        wave = wave[:max_samples]
    return np.ascontiguousarray(wave, dtype=np.float32)


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[-1][:200] if text else type(error).__name__
