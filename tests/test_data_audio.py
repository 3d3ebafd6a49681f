"""Audio files: decode, mix, resample, partial reads, and one AudioError naming every bad file."""
from __future__ import annotations

import sys

import numpy as np
import pytest

soundfile = pytest.importorskip("soundfile")

from elasticast_kernels._optional import import_optional  # noqa: E402
from elasticast_kernels.data.audio import AudioError, audio_info, read_audio, resampled_length  # noqa: E402


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def test_stereo_48k_becomes_mono_16k(tmp_path):
    path = tmp_path / "stereo.wav"
    audio = tone(1.0, 48000, channels=2)
    soundfile.write(path, audio, 48000)
    wave = read_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.shape == (resampled_length(48000, 48000, 16000),) == (16000,)
    info = audio_info(path)
    assert (info.frames, info.sample_rate, info.channels, info.duration_s) == (48000, 48000, 2, 1.0)
    same_rate = read_audio(path, 48000)
    np.testing.assert_allclose(same_rate, audio.mean(axis=1), atol=1e-4)  # pcm16 on disk


@pytest.mark.parametrize("name, rate, subtype", [("a.flac", 8000, None), ("b.wav", 22050, "FLOAT"),
                                                  ("c.ogg", 16000, None)])
def test_formats_and_rates(tmp_path, name, rate, subtype):
    path = tmp_path / name
    soundfile.write(path, tone(0.5, rate), rate, subtype=subtype)
    wave = read_audio(path, 16000)
    assert abs(wave.shape[0] - 8000) <= 1 and np.isfinite(wave).all()


@pytest.mark.parametrize("max_samples", [1, 999, 8000, 16000, 10**9])
def test_a_partial_read_equals_the_start_of_a_whole_read(tmp_path, max_samples):
    path = tmp_path / "long.wav"
    soundfile.write(path, tone(1.0, 44100, channels=2), 44100)
    whole = read_audio(path, 16000)
    np.testing.assert_array_equal(read_audio(path, 16000, max_samples=max_samples), whole[:max_samples])


def test_bad_files_name_the_path_and_reason(tmp_path):
    nan = tone(0.2, 16000)
    nan[1600, 0] = np.nan
    soundfile.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    inf = tone(0.2, 16000)
    inf[10, 0] = np.inf
    soundfile.write(tmp_path / "inf.wav", inf, 16000, subtype="FLOAT")
    soundfile.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    good = tone(0.5, 16000)
    soundfile.write(tmp_path / "truncated.flac", good, 16000)
    data = (tmp_path / "truncated.flac").read_bytes()
    (tmp_path / "truncated.flac").write_bytes(data[: len(data) // 3])
    cases = {"nan.wav": "holds NaN or infinite samples \\(first at 0.100 s\\)", "inf.wav": "holds NaN or infinite",
             "empty.wav": "no audio frames", "corrupt.wav": "unreadable audio", "absent.wav": "file not found"}
    for name, reason in cases.items():
        with pytest.raises(AudioError, match=f"{name}: {reason}") as raised:
            read_audio(tmp_path / name, 16000)
        assert raised.value.path.endswith(name)
    with pytest.raises(AudioError, match="is a directory"):
        read_audio(tmp_path, 16000)
    try:  # libsndfile either refuses the cut file or returns the frames it could decode
        wave = read_audio(tmp_path / "truncated.flac", 16000)
        assert np.isfinite(wave).all()
    except AudioError as error:
        assert "truncated.flac" in str(error)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"sample_rate": 0}, ValueError, "sample_rate must be >= 1, got 0"),
    ({"sample_rate": 16000.0}, TypeError, "sample_rate must be an int, got float"),
    ({"sample_rate": 16000, "max_samples": 0}, ValueError, "max_samples must be >= 1"),
    ({"sample_rate": 16000, "max_samples": True}, TypeError, "max_samples must be an int, got bool"),
])
def test_bad_arguments(tmp_path, kwargs, error, message):
    soundfile.write(tmp_path / "a.wav", tone(0.1, 16000), 16000)
    with pytest.raises(error, match=message):
        read_audio(tmp_path / "a.wav", **kwargs)
    with pytest.raises(TypeError, match="path must be a str"):
        read_audio(42, 16000)


def test_a_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "soundfile", None)  # what an environment without it looks like to import
    with pytest.raises(ImportError, match=r'reading audio files needs the .soundfile. package.*elasticast-kernels\[audio\]'):
        import_optional("soundfile", "reading audio files")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r'elasticast-kernels\[hf\]'):
        import_optional("transformers", "PackedAST.from_hf")
