"""fbank against torchaudio's Kaldi-compatible fbank and an independent float64 numpy derivation.

Three references:
- a float64 numpy re-derivation of Kaldi's fbank written out here, frame by frame (always runs);
- ``test_data_fbank_torchaudio.npz``: outputs of ``torchaudio.compliance.kaldi.fbank`` (2.11)
  stored with the head of their inputs (always runs). Regenerate it where torchaudio installs (its newest
  release pins torch 2.11, so use a separate environment):
  ``python tests/test_data_features.py --write-torchaudio-reference``;
- torchaudio itself, when it imports here (skipped otherwise).

Tolerances: in float64 the pipeline equals the numpy derivation to rounding; torchaudio builds its
mel filters in float32, which moves log energies by up to ~1e-3 (we build them in float64). In
float32, bins that see only the near-zero DC region after DC removal have relative rounding up to
~1e-3, so float32 comparisons use atol 5e-3 on the log energies plus a tight bound on the mean error.
"""
from __future__ import annotations

import math
import pathlib
import sys

import numpy as np
import pytest
import torch

REFERENCE_FILE = pathlib.Path(__file__).with_name("test_data_fbank_torchaudio.npz")
FLOAT32_EPS = float(np.finfo(np.float32).eps)

# (sample_rate, quality, num_mel_bins, num_samples)
CASES = [
    (16000, 1.0, 128, 7000),
    (16000, 2.0, 128, 9000),
    (16000, 3.0, 128, 12000),
    (16000, 5.0, 128, 12000),
    (22050, 1.0, 128, 6000),
    (8000, 0.8, 64, 5000),
]
CASE_IDS = [f"sr{sr}-q{q}-mel{mel}" for sr, q, mel, _ in CASES]


def make_waveform(case_id: int, sample_rate: int, num_samples: int) -> np.ndarray:
    """A chirp plus noise plus a DC offset, float64, reproducible from numpy's PCG64 alone."""
    rng = np.random.default_rng(1234 + case_id)
    t = np.arange(num_samples) / sample_rate
    chirp = 0.4 * np.sin(2 * np.pi * (200 + 1500 * t) * t)
    return chirp + 0.05 * rng.standard_normal(num_samples) + 0.1


def kaldi_fbank_reference(
    wave: np.ndarray, sample_rate: float, num_mel_bins: int, shift_ms: float, length_ms: float = 25.0,
    low_hz: float = 20.0, preemph: float = 0.97,
) -> np.ndarray:
    """Kaldi fbank (htk_compat, Hann, no dither, no energy), float64, one frame at a time."""
    shift = int(sample_rate * shift_ms * 0.001)
    size = int(sample_rate * length_ms * 0.001)
    nfft = 2 ** math.ceil(math.log2(size))
    n_frames = 1 + (len(wave) - size) // shift

    def hz_to_mel(hz):
        return 1127.0 * np.log(1.0 + np.asarray(hz) / 700.0)

    edges = np.linspace(hz_to_mel(low_hz), hz_to_mel(sample_rate / 2), num_mel_bins + 2)
    bin_mels = hz_to_mel(np.arange(nfft // 2 + 1) * sample_rate / nfft)
    filters = np.zeros((num_mel_bins, nfft // 2 + 1))
    for m in range(num_mel_bins):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (bin_mels - lo) / (mid - lo)
        falling = (hi - bin_mels) / (hi - mid)
        filters[m] = np.clip(np.minimum(rising, falling), 0.0, None)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / (size - 1))

    out = np.empty((n_frames, num_mel_bins))
    for i in range(n_frames):
        frame = wave[i * shift : i * shift + size].astype(np.float64)
        frame = frame - frame.mean()
        frame = frame - preemph * np.concatenate([frame[:1], frame[:-1]])
        power = np.abs(np.fft.rfft(frame * hann, nfft)) ** 2
        out[i] = np.log(np.maximum(filters @ power, FLOAT32_EPS))
    return out


def _ours():
    from elasticast_kernels.data import features

    return features


def _assert_close_float32(actual: np.ndarray, expected: np.ndarray) -> None:
    error = np.abs(actual - expected)
    assert error.max() < 5e-3, f"max abs error {error.max():.2e}"
    assert error.mean() < 5e-5, f"mean abs error {error.mean():.2e}"


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fbank_matches_numpy_derivation(case, dtype):
    sample_rate, quality, mel, n = CASES[case]
    wave = make_waveform(case, sample_rate, n)
    expected = kaldi_fbank_reference(wave, sample_rate, mel, 10.0 * quality)
    out = _ours().fbank(torch.tensor(wave, dtype=dtype), sample_rate, mel, quality=quality)
    assert out.dtype == dtype and out.shape == expected.shape
    if dtype == torch.float64:
        np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-9)
    else:
        _assert_close_float32(out.double().numpy(), expected)


def test_fbank_matches_stored_torchaudio_outputs():
    stored = np.load(REFERENCE_FILE)
    for case, (sample_rate, quality, mel, n) in enumerate(CASES):
        wave = make_waveform(case, sample_rate, n)
        np.testing.assert_array_equal(stored[f"wave_head_{case}"], wave[:64])  # inputs reproduce
        for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
            expected = stored[f"fbank_{case}_{tag}"].astype(np.float64)
            out = _ours().fbank(torch.tensor(wave, dtype=dtype), sample_rate, mel, quality=quality)
            assert out.shape == expected.shape, (case, tag)
            if dtype == torch.float64:  # differs only by torchaudio's float32 filterbank
                np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=2e-3)
            else:
                _assert_close_float32(out.double().numpy(), expected)


def _torchaudio_kaldi():
    try:
        import torchaudio.compliance.kaldi as kaldi
    except Exception as error:  # ImportError, or a binary built for another torch
        pytest.skip(
            f"torchaudio is not usable here ({type(error).__name__}); its newest release pins torch 2.11. "
            "The stored torchaudio outputs are checked in test_fbank_matches_stored_torchaudio_outputs."
        )
    return kaldi


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_fbank_matches_torchaudio_live(case):
    kaldi = _torchaudio_kaldi()
    sample_rate, quality, mel, n = CASES[case]
    wave = torch.tensor(make_waveform(case, sample_rate, n), dtype=torch.float32)
    expected = kaldi.fbank(
        wave[None], htk_compat=True, sample_frequency=sample_rate, use_energy=False, window_type="hanning",
        num_mel_bins=mel, dither=0.0, frame_shift=10.0 * quality,
    )
    out = _ours().fbank(wave, sample_rate, mel, quality=quality)
    _assert_close_float32(out.double().numpy(), expected.double().numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fbank_batched_equals_one_by_one(dtype):
    waves = torch.stack([torch.tensor(make_waveform(i, 16000, 6400), dtype=dtype) for i in range(3)])
    batched = _ours().fbank(waves, 16000, quality=2.0)
    single = torch.stack([_ours().fbank(w, 16000, quality=2.0) for w in waves])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("quality", [0.8, 1.0, 2.0, 3.0, 4.0, 5.0])
@pytest.mark.parametrize("num_samples", [400, 401, 1999, 16000, 16321])
def test_num_frames_matches_fbank(quality, num_samples):
    feats = _ours()
    wave = torch.randn(num_samples)
    assert feats.fbank(wave, 16000, 32, quality=quality).shape[0] == feats.num_frames(num_samples, 16000, quality)
    # the quality multiplier divides the frame count (one 10 ms * q shift per frame)
    expected = 1 + (num_samples - 400) // int(16000 * 10.0 * quality * 0.001)
    assert feats.num_frames(num_samples, 16000, quality) == expected


def test_num_frames_and_tokens_vectorised():
    feats = _ours()
    frames = feats.num_frames(np.array([100, 400, 16000]), 16000)
    np.testing.assert_array_equal(frames, [0, 1, 98])
    np.testing.assert_array_equal(feats.num_tokens(frames), [8, 8, 8 * 6])  # < 1 patch counts as one (padded)


def test_normalize_matches_recipe_formula():
    feats = _ours()
    wave = torch.tensor(make_waveform(0, 16000, 8000), dtype=torch.float32)
    raw = feats.fbank(wave, 16000)
    mean, std = -4.2677393, 4.5689974  # AST AudioSet statistics; the recipe divides by 2 * std
    torch.testing.assert_close(feats.fbank(wave, 16000, normalize=feats.AUDIOSET_NORM), (raw - mean) / (std * 2))


@pytest.mark.parametrize("quality", [1.0, 2.0, 3.0])
def test_audio_to_spectrogram_layout(quality):
    feats = _ours()
    wave = torch.tensor(make_waveform(1, 16000, 16000), dtype=torch.float32)
    spec = feats.audio_to_spectrogram(wave, 16000, quality)
    frames = feats.num_frames(16000, 16000, quality)
    assert spec.shape == (1, 128, (frames // 16) * 16)
    torch.testing.assert_close(spec[0].T, feats.fbank(wave, 16000, quality=quality)[: spec.shape[-1]])
    cropped = feats.audio_to_spectrogram(wave, 16000, quality, max_frames=20)
    assert cropped.shape == (1, 128, 16)


def test_audio_to_spectrogram_pads_short_clips_before_normalising():
    feats = _ours()
    short = torch.tensor(make_waveform(2, 16000, 1200), dtype=torch.float32)  # 6 frames
    spec = feats.audio_to_spectrogram(short, 16000, normalize=(1.0, 2.0))
    assert spec.shape == (1, 128, 16)
    torch.testing.assert_close(spec[0, :, 6:], torch.full((128, 10), -0.5))  # (0 - 1) / 2
    tiny = feats.audio_to_spectrogram(torch.zeros(100), 16000)  # shorter than one window
    assert tiny.shape == (1, 128, 16) and not tiny.any()


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda f: f.fbank(torch.zeros(1000, dtype=torch.int16), 16000), TypeError),
        (lambda f: f.fbank([0.0] * 1000, 16000), TypeError),
        (lambda f: f.fbank(torch.zeros(1, 1, 1000), 16000), ValueError),
        (lambda f: f.fbank(torch.zeros(300), 16000), ValueError),
        (lambda f: f.fbank(torch.zeros(1000), 16000, quality=0), ValueError),
        (lambda f: f.fbank(torch.zeros(1000), 0), ValueError),
        (lambda f: f.fbank(torch.zeros(1000), 16000, num_mel_bins=3), ValueError),
        (lambda f: f.fbank(torch.zeros(1000), 16000, high_freq=9000), ValueError),
        (lambda f: f.fbank(torch.zeros(1000), 16000, normalize=(0.0, 0.0)), ValueError),
        (lambda f: f.fbank(torch.zeros(1000), 16000, preemphasis=1.5), ValueError),
        (lambda f: f.audio_to_spectrogram(torch.zeros(1000), 16000, num_mel_bins=120), ValueError),
    ],
)
def test_bad_input_raises(call, error):
    with pytest.raises(error):
        call(_ours())


def test_silence_hits_the_log_floor():
    out = _ours().fbank(torch.zeros(4000), 16000)
    torch.testing.assert_close(out, torch.full_like(out, math.log(FLOAT32_EPS)))


@pytest.mark.gpu
def test_fbank_on_gpu_matches_cpu():
    wave = torch.stack([torch.tensor(make_waveform(i, 16000, 16000), dtype=torch.float32) for i in range(4)])
    cpu = _ours().fbank(wave, 16000, quality=2.0)
    gpu = _ours().fbank(wave.cuda(), 16000, quality=2.0)
    assert gpu.device.type == "cuda"
    _assert_close_float32(gpu.double().cpu().numpy(), cpu.double().numpy())


def _write_torchaudio_reference() -> None:
    """Run under an environment with torchaudio: stores inputs and torchaudio's outputs."""
    import torchaudio
    import torchaudio.compliance.kaldi as kaldi

    arrays = {}
    for case, (sample_rate, quality, mel, n) in enumerate(CASES):
        wave = make_waveform(case, sample_rate, n)
        arrays[f"wave_head_{case}"] = wave[:64]
        for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
            out = kaldi.fbank(
                torch.tensor(wave, dtype=dtype)[None], htk_compat=True, sample_frequency=sample_rate,
                use_energy=False, window_type="hanning", num_mel_bins=mel, dither=0.0, frame_shift=10.0 * quality,
            )
            arrays[f"fbank_{case}_{tag}"] = out.numpy().astype(np.float32)
    arrays["versions"] = np.array(f"torch {torch.__version__}, torchaudio {torchaudio.__version__}")
    np.savez_compressed(REFERENCE_FILE, **arrays)
    print(f"wrote {REFERENCE_FILE} with torchaudio {torchaudio.__version__}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-torchaudio-reference"]:
        _write_torchaudio_reference()
    else:
        print(__doc__)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(
    "name", ["sample_rate", "quality", "frame_shift_ms", "frame_length_ms", "low_freq", "high_freq", "preemphasis",
             "num_mel_bins"],
)
def test_non_finite_options_are_named(name, value):
    """NaN and infinities used to surface as OverflowError, 'cannot convert float NaN to integer'
    or a range message; now a ValueError names the option."""
    options = {"sample_rate": 16000, name: value}
    with pytest.raises(ValueError, match=rf"^{name} must be finite, got {value}$"):
        _ours().fbank(torch.zeros(1000), **options)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_options_of_the_helpers_are_named(value):
    feats = _ours()
    with pytest.raises(ValueError, match="quality must be finite"):
        feats.num_frames(16000, 16000, quality=value)
    with pytest.raises(ValueError, match="sample_rate must be finite"):
        feats.audio_to_spectrogram(torch.zeros(1000), value)
    with pytest.raises(ValueError, match="low_freq must be finite"):
        feats.mel_filterbank(128, 512, 16000, low_freq=value)
    for name in ("patch_size", "max_frames"):
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            feats.audio_to_spectrogram(torch.zeros(1000), 16000, **{name: value})


@pytest.mark.parametrize("normalize", [(0.0, float("inf")), (float("nan"), 1.0), (0.0, float("nan"))])
def test_non_finite_normalize_is_refused(normalize):
    """An infinite std used to give all-zero features without a word."""
    with pytest.raises(ValueError, match="normalize needs a finite mean and a finite std > 0"):
        _ours().fbank(torch.zeros(1000), 16000, normalize=normalize)


@pytest.mark.parametrize("name, value", [("sample_rate", "16000"), ("quality", None), ("num_mel_bins", "128")])
def test_non_numeric_options_raise_type_error(name, value):
    with pytest.raises(TypeError, match=rf"{name} must be a real number"):
        _ours().fbank(torch.zeros(1000), **{"sample_rate": 16000, name: value})
