"""examples/train.py runs end to end in its reduced mode on the demo data, and the demo datasets
(examples/spoken_words.py) synthesise and are written as wav files plus manifests that
ManifestDataset reads back.

The training run uses the synthetic tone dataset (``--no-espeak``) so that it behaves the same on
machines with and without espeak-ng; espeak-ng synthesis is checked on its own when installed.
Resume, SIGKILL and 2-rank runs are in tests/test_training_resume.py.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def spoken_words(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import spoken_words

    return spoken_words


def test_quick_training_run(tmp_path, torch_cpu_path):
    result_file = tmp_path / "result.json"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the torch CPU path, not the Triton interpreter
    root = str(EXAMPLES.parent)
    env["PYTHONPATH"] = root + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else root
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "train.py"), "--quick", "--no-espeak", "--json", str(result_file)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    out = completed.stdout
    assert "SYNTHETIC TONE DATASET" in out  # the fallback is labelled as such
    assert "train:" in out and "samples/s" in out and "eval quality 1" in out and "eval quality 2" in out
    assert "1 rank(s) on cpu (single process)" in out

    result = json.loads(result_file.read_text())
    assert "SYNTHETIC TONE" in result["dataset"] and result["classes"] == 10 and not result["multi_label"]
    train = result["train"]
    assert train["steps"] > 0 and train["samples_per_s"] > 0 and np.isfinite(train["final_loss"])
    for quality in ("1", "2"):
        metrics = result["eval"][quality]
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["samples"] > 0 and metrics["samples_per_s"] > 0
    # the tone patterns are easy: even the reduced run learns them (chance is 0.1)
    assert result["eval"]["1"]["accuracy"] >= 0.3, result["eval"]


def test_demo_data_is_written_as_wav_files_plus_manifests(spoken_words, tmp_path):
    pytest.importorskip("soundfile")
    from elasticast_kernels.data import ManifestDataset

    data = spoken_words.synthesise(2, seed=4, use_espeak=False)
    train_csv, test_csv = spoken_words.write_dataset(data, str(tmp_path), test_fraction=0.25, seed=4)
    train_set, test_set = ManifestDataset(train_csv), ManifestDataset(test_csv)
    assert (train_set.num_clips, test_set.num_clips) == (15, 5)
    assert set(train_set.classes) | set(test_set.classes) == set(data.class_names)
    # the clips come back as written (16-bit PCM: to within one quantisation step)
    for entry in train_set.entries[:3]:
        clip = int(os.path.basename(entry.path).split(".")[0])
        original = data.waveforms[clip]
        assert entry.labels == (data.class_names[int(data.labels[clip])],) and entry.file_rate == data.sample_rate
        np.testing.assert_allclose(train_set.load_waveform(entry), original, atol=2 / 32768)
    info = json.loads((tmp_path / "dataset.json").read_text())
    assert info["source"] == "synthetic tones" and info["clips"] == 20


def test_tone_fallback_dataset(spoken_words):
    data = spoken_words.synthesise(3, seed=1, use_espeak=False)
    assert data.source == "synthetic tones" and "SYNTHETIC TONE" in data.description
    assert len(data.waveforms) == 30 and np.bincount(data.labels).tolist() == [3] * 10
    durations = [len(w) / data.sample_rate for w in data.waveforms]
    assert min(durations) > 0.2 and max(durations) / min(durations) > 1.5  # lengths vary
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in data.waveforms)


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") or sys.platform == "darwin") or not any(
        os.access(os.path.join(p, name), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep)
        for name in ("espeak-ng", "espeak")
    ),
    reason="espeak-ng is not installed (apt-get install -y espeak-ng); the example falls back to tones",
)
def test_espeak_dataset(spoken_words):
    data = spoken_words.synthesise(1, seed=2)
    assert data.source == "espeak-ng" and data.class_names == spoken_words.WORDS
    assert len(data.waveforms) == 10 and data.labels.tolist() == list(range(10))
    for wave in data.waveforms:
        assert wave.dtype == np.float32 and len(wave) > 0.1 * data.sample_rate and np.abs(wave).max() > 0.05


def test_prepare_writes_the_demo_once_per_request(spoken_words, tmp_path):
    """A resumed run finds the very clips the crashed one trained on; another request rewrites them."""
    pytest.importorskip("soundfile")
    first = spoken_words.prepare(str(tmp_path), 1, 3, False, 0.2)
    stamp = os.stat(first[0]).st_mtime_ns
    again = spoken_words.prepare(str(tmp_path), 1, 3, False, 0.2)
    assert again == first and os.stat(first[0]).st_mtime_ns == stamp and first[2]["source"] == "synthetic tones"
    assert spoken_words.prepare(str(tmp_path), 1, 3, False, 0.2, write=False) == first
    other = spoken_words.prepare(str(tmp_path), 2, 3, False, 0.2)
    assert other[2]["clips"] == 20 and other[2]["request"]["clips_per_word"] == 2


def test_demo_without_soundfile_names_the_audio_extra(spoken_words, tmp_path, monkeypatch):
    data = spoken_words.synthesise(1, seed=1, use_espeak=False)
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import soundfile -> ImportError
    with pytest.raises(ImportError, match=r'pip install "elasticast-kernels\[audio\]"'):
        spoken_words.write_dataset(data, str(tmp_path))
