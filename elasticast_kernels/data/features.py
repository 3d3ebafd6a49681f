"""Kaldi-compatible log-mel filterbank features, as the AST / ElasticAST recipes compute them.

The recipes call ``torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True,
sample_frequency=sr, use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
frame_shift=10)``. :func:`fbank` computes the same thing without torchaudio, on any device and for a
batch of equal-length waveforms at once:

1. frames of ``frame_length_ms`` every ``frame_shift_ms * quality`` (only frames that fit whole:
   Kaldi's ``snip_edges``), sample counts truncated as Kaldi does: ``int(sr * ms * 0.001)``;
2. per frame: remove the DC offset, pre-emphasis ``x[j] - 0.97 x[j-1]`` (``x[-1] := x[0]``),
   symmetric Hann window, zero-pad to the next power of two;
3. power spectrum ``|rfft|^2``, HTK mel triangles (``mel = 1127 ln(1 + f/700)``) between
   ``low_freq`` and ``high_freq`` (``<= 0`` means relative to Nyquist), the Nyquist bin unused;
4. ``log(max(energy, eps))`` with ``eps`` the float32 machine epsilon.

ElasticAST's *quality* multiplier ``q`` changes only the time resolution: the frame shift becomes
``10 ms * q`` (q in {0.8, 1, 2, 3, 4, 5} in the paper), so a clip has about ``1/q`` as many frames.
"""
from __future__ import annotations

import math
import operator
from functools import lru_cache

import numpy as np
import torch

from elasticast_kernels._checks import check_number

__all__ = [
    "AUDIOSET_NORM",
    "fbank",
    "audio_to_spectrogram",
    "num_frames",
    "num_tokens",
    "mel_filterbank",
]

#: AudioSet fbank statistics used by the AST recipes, which compute ``(x - mean) / (2 * std)``;
#: the factor 2 is folded in here so that ``normalize=AUDIOSET_NORM`` reproduces them.
AUDIOSET_NORM: tuple[float, float] = (-4.2677393, 2 * 4.5689974)

# Kaldi floors energies at std::numeric_limits<float>::epsilon(), whatever the compute dtype.
_LOG_FLOOR = float(np.finfo(np.float32).eps)
_FEATURE_DTYPES = (torch.float32, torch.float64)


def _whole(name: str, value: object) -> int:
    """An int (or an integral float such as 128.0): TypeError / ValueError naming ``name``."""
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = check_number(name, value)
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {number}")
    return int(number)


def _ms_to_samples(sample_rate: float, milliseconds: float) -> int:
    # Same expression and truncation as Kaldi/torchaudio, so frame counts agree exactly.
    return int(sample_rate * milliseconds * 0.001)


def _frame_geometry(sample_rate: float, frame_shift_ms: float, frame_length_ms: float, quality: float) -> tuple[int, int, int]:
    """-> (window_shift, window_size, fft_size) in samples, validated (finite numbers first)."""
    sample_rate, quality = check_number("sample_rate", sample_rate), check_number("quality", quality)
    frame_shift_ms = check_number("frame_shift_ms", frame_shift_ms)
    frame_length_ms = check_number("frame_length_ms", frame_length_ms)
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    if not quality > 0:
        raise ValueError(f"quality must be > 0, got {quality}")
    shift = _ms_to_samples(sample_rate, frame_shift_ms * quality)
    size = _ms_to_samples(sample_rate, frame_length_ms)
    if shift < 1:
        raise ValueError(
            f"frame_shift_ms * quality = {frame_shift_ms * quality} ms is less than one sample at {sample_rate} Hz"
        )
    if size < 2:
        raise ValueError(f"frame_length_ms={frame_length_ms} gives a window of {size} samples; need at least 2")
    fft_size = 1 << (size - 1).bit_length()  # next power of two >= size
    return shift, size, fft_size


def num_frames(
    num_samples: int | np.ndarray,
    sample_rate: float,
    quality: float = 1.0,
    frame_shift_ms: float = 10.0,
    frame_length_ms: float = 25.0,
) -> int | np.ndarray:
    """Frames :func:`fbank` returns for a waveform of ``num_samples`` (0 if shorter than one window).

    Works on an int or an integer numpy array, so samplers can get token counts without features.
    """
    shift, size, _ = _frame_geometry(sample_rate, frame_shift_ms, frame_length_ms, quality)
    samples = np.asarray(num_samples, dtype=np.int64)
    frames = np.where(samples >= size, 1 + (samples - size) // shift, 0)
    return int(frames) if frames.ndim == 0 else frames


def num_tokens(
    frames: int | np.ndarray,
    num_mel_bins: int = 128,
    patch_size: int = 16,
    stride: int | tuple[int, int] | None = None,
) -> int | np.ndarray:
    """Patch tokens of a ``[C, num_mel_bins, frames]`` input, counted as `pack_spectrograms` counts
    them: ``F' * T'`` with ``F' = (F - p) // stride_f + 1`` and ``T' = (T - p) // stride_t + 1``.

    ``stride``: None (the patch size: non-overlapping, ``(F // p) * (T // p)``), one int for both
    axes, or ``(stride_f, stride_t)`` (AST: 10). ``frames`` below one patch count as one patch,
    matching :func:`audio_to_spectrogram`, which zero-pads such clips up to ``patch_size`` frames.
    Works on an int or an integer numpy array.
    """
    if stride is None:
        stride_f = stride_t = patch_size
    else:
        stride_f, stride_t = (stride, stride) if np.ndim(stride) == 0 else stride
    if min(patch_size, stride_f, stride_t) < 1:
        raise ValueError(f"patch_size and stride must be >= 1, got patch_size={patch_size}, stride={stride!r}")
    frames = np.maximum(np.asarray(frames, dtype=np.int64), patch_size)
    freq_patches = (num_mel_bins - patch_size) // stride_f + 1 if num_mel_bins >= patch_size else 0
    tokens = freq_patches * ((frames - patch_size) // stride_t + 1)
    return int(tokens) if tokens.ndim == 0 else tokens


def _mel(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


@lru_cache(maxsize=32)
def _mel_filterbank_np(num_mel_bins: int, fft_size: int, sample_rate: float, low_freq: float, high_freq: float) -> np.ndarray:
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if num_mel_bins <= 3:
        raise ValueError(f"num_mel_bins must be > 3, got {num_mel_bins}")
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"need 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz), got low_freq={low_freq}, high_freq={high_freq}")
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)  # +1: the outer triangles reach past the edges
    edges = mel_low + delta * np.arange(num_mel_bins + 2, dtype=np.float64)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    # Kaldi weights the bins 0 .. fft_size/2 - 1; the Nyquist bin (last rfft output) gets weight 0.
    bin_mel = _mel(np.arange(fft_size // 2, dtype=np.float64) * (sample_rate / fft_size))[None, :]
    weights = np.maximum(0.0, np.minimum((bin_mel - left) / (center - left), (right - bin_mel) / (right - center)))
    weights = np.concatenate([weights, np.zeros((num_mel_bins, 1))], axis=1)
    weights.setflags(write=False)
    return weights


def mel_filterbank(
    num_mel_bins: int,
    fft_size: int,
    sample_rate: float,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """HTK-mel triangular filters as Kaldi builds them: ``[num_mel_bins, fft_size // 2 + 1]``.

    Computed in float64, then cast. ``high_freq <= 0`` is an offset from the Nyquist frequency.
    Raises ``ValueError`` for ``num_mel_bins <= 3``, frequencies outside ``[0, Nyquist]`` or a
    non-finite parameter (naming it), ``TypeError`` for a non-number.
    """
    weights = _mel_filterbank_np(
        _whole("num_mel_bins", num_mel_bins), _whole("fft_size", fft_size), check_number("sample_rate", sample_rate),
        check_number("low_freq", low_freq), check_number("high_freq", high_freq),
    )
    return torch.from_numpy(weights.copy()).to(device=device, dtype=dtype)


@lru_cache(maxsize=32)
def _cached_constants(
    num_mel_bins: int, fft_size: int, window_size: int, sample_rate: float, low_freq: float, high_freq: float,
    device: torch.device, dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    # Built once per configuration and device, so repeated calls (a data-loader worker) cost no
    # host work or host-to-device copies.
    bank_t = mel_filterbank(num_mel_bins, fft_size, sample_rate, low_freq, high_freq, device=device, dtype=dtype).T.contiguous()
    window = torch.hann_window(window_size, periodic=False, dtype=torch.float64).to(device=device, dtype=dtype)
    return bank_t, window


def fbank(
    waveform: torch.Tensor,
    sample_rate: float,
    num_mel_bins: int = 128,
    frame_shift_ms: float = 10.0,
    frame_length_ms: float = 25.0,
    quality: float = 1.0,
    *,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    preemphasis: float = 0.97,
    normalize: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Kaldi-compatible log-mel filterbank (htk_compat, Hann window, no dither, no energy).

    Args:
        waveform: float32 or float64, ``[num_samples]`` or a batch ``[batch, num_samples]`` of
            equal-length waveforms, on any device. (Unlike torchaudio, a 2-D input is a batch,
            not channels: torchaudio silently keeps channel 0 only.)
        sample_rate: samples per second.
        num_mel_bins: mel filters (F); the recipes use 128.
        frame_shift_ms, frame_length_ms: 10 ms and 25 ms in every recipe.
        quality: ElasticAST's time-resolution multiplier; the frame shift is
            ``frame_shift_ms * quality``.
        low_freq, high_freq: filterbank edges in Hz (``high_freq <= 0``: offset from Nyquist).
        preemphasis: coefficient in ``[0, 1]``.
        normalize: ``None``, or ``(mean, std)`` giving ``(x - mean) / std``
            (:data:`AUDIOSET_NORM` reproduces the AST recipes).

    Returns:
        ``[frames, num_mel_bins]`` (or ``[batch, frames, num_mel_bins]``), dtype and device of
        ``waveform``, with ``frames = 1 + (num_samples - window) // shift``.

    Raises:
        TypeError: ``waveform`` is not a float32/float64 tensor; an option that is not a number.
        ValueError: wrong rank, a waveform shorter than one window, or bad options (NaN or
            infinite ones included), naming the option.
    """
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(f"waveform must be a torch.Tensor, got {type(waveform).__name__}")
    if waveform.dtype not in _FEATURE_DTYPES:
        raise TypeError(f"waveform must be float32 or float64, got {waveform.dtype}")
    if waveform.dim() not in (1, 2):
        raise ValueError(f"waveform must be [num_samples] or [batch, num_samples], got shape {tuple(waveform.shape)}")
    preemphasis = check_number("preemphasis", preemphasis)
    if not 0.0 <= preemphasis <= 1.0:
        raise ValueError(f"preemphasis must be in [0, 1], got {preemphasis}")
    num_mel_bins = _whole("num_mel_bins", num_mel_bins)
    low_freq, high_freq = check_number("low_freq", low_freq), check_number("high_freq", high_freq)
    mean_std = None if normalize is None else _check_normalize(normalize)
    shift, size, fft_size = _frame_geometry(sample_rate, frame_shift_ms, frame_length_ms, quality)
    if waveform.shape[-1] < size:
        raise ValueError(
            f"waveform has {waveform.shape[-1]} samples, fewer than one {frame_length_ms} ms window ({size} samples)"
        )
    bank_t, window = _cached_constants(
        num_mel_bins, fft_size, size, float(sample_rate), low_freq, high_freq, waveform.device, waveform.dtype,
    )

    frames = waveform.unfold(-1, size, shift)  # [..., frames, size], a view
    frames = frames - frames.mean(dim=-1, keepdim=True)  # per-frame DC offset
    if preemphasis != 0.0:
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # x[-1] := x[0]
        frames = frames - preemphasis * previous
    frames = frames * window
    power = torch.fft.rfft(frames, n=fft_size).abs().pow(2.0)  # n=fft_size zero-pads on the right
    energies = power @ bank_t  # [..., frames, num_mel_bins]
    features = energies.clamp_min(_LOG_FLOOR).log()
    if mean_std is not None:
        features = (features - mean_std[0]) / mean_std[1]
    return features


def _check_normalize(normalize: object) -> tuple[float, float]:
    try:
        mean, std = (float(v) for v in normalize)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"normalize must be None or a (mean, std) pair, got {normalize!r}") from None
    if not (std > 0 and math.isfinite(std) and math.isfinite(mean)):
        raise ValueError(f"normalize needs a finite mean and a finite std > 0, got {normalize!r}")
    return mean, std


def audio_to_spectrogram(
    waveform: torch.Tensor,
    sample_rate: float,
    quality: float = 1.0,
    *,
    num_mel_bins: int = 128,
    patch_size: int = 16,
    max_frames: int | None = None,
    normalize: tuple[float, float] | None = None,
    **fbank_options: float,
) -> torch.Tensor:
    """One waveform -> an ElasticAST input ``[1, num_mel_bins, T]`` with ``T`` a multiple of ``patch_size``.

    The recipe's steps: :func:`fbank` at ``quality``; keep at most ``max_frames`` frames (the
    recipes use ``target_length / quality``); zero-pad a clip shorter than one patch up to
    ``patch_size`` frames (padding in the log-mel domain before normalising, as AST does); crop
    to a multiple of ``patch_size``; normalise; transpose to frequency-major ``[1, F, T]``.
    A waveform shorter than one analysis window gives a single zero-padded patch column.

    ``waveform``: float ``[num_samples]``. Extra keyword options go to :func:`fbank`.
    """
    if isinstance(waveform, torch.Tensor) and waveform.dim() != 1:
        raise ValueError(f"waveform must be 1-D [num_samples], got shape {tuple(waveform.shape)}")
    patch_size, num_mel_bins = _whole("patch_size", patch_size), _whole("num_mel_bins", num_mel_bins)
    max_frames = None if max_frames is None else _whole("max_frames", max_frames)
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if num_mel_bins % patch_size:
        raise ValueError(f"num_mel_bins={num_mel_bins} must be divisible by patch_size={patch_size}")
    if max_frames is not None and max_frames < patch_size:
        raise ValueError(f"max_frames={max_frames} must be >= patch_size={patch_size}")
    shift, size, _ = _frame_geometry(
        sample_rate, fbank_options.get("frame_shift_ms", 10.0), fbank_options.get("frame_length_ms", 25.0), quality
    )
    if isinstance(waveform, torch.Tensor) and waveform.shape[0] < size:
        features = waveform.new_zeros(0, num_mel_bins)
    else:
        features = fbank(waveform, sample_rate, num_mel_bins, quality=quality, **fbank_options)
    if max_frames is not None:
        features = features[:max_frames]
    frames = features.shape[0]
    if frames < patch_size:
        features = torch.nn.functional.pad(features, (0, 0, 0, patch_size - frames))
    features = features[: (features.shape[0] // patch_size) * patch_size]
    if normalize is not None:
        mean, std = _check_normalize(normalize)
        features = (features - mean) / std
    return features.T.unsqueeze(0).contiguous()

