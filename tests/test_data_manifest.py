"""ManifestDataset over wav/flac files written here by soundfile: CSV and JSONL, single- and
multi-label, resampling, the token counts the sampler packs, and every kind of bad line."""
from __future__ import annotations

import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from elasticast_kernels.data import (  # noqa: E402
    ManifestDataset,
    ManifestError,
    PackedBatchSampler,
    PackedCollator,
    audio_to_spectrogram,
    estimate_normalization,
)

RATE = 16000


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono, 0.5 * mono], axis=1)


@pytest.fixture
def clips(tmp_path):
    """Audio files of different lengths, formats and rates: name -> (path, waveform as written)."""
    (tmp_path / "audio").mkdir()
    specs = {
        "a.wav": (0.40, RATE, 300.0, 1, "PCM_16"),
        "b.flac": (0.90, RATE, 1200.0, 1, "PCM_16"),
        "c.wav": (0.25, RATE, 2500.0, 2, "FLOAT"),  # stereo: averaged
        "d.wav": (0.70, 22050, 800.0, 1, "FLOAT"),  # another rate: resampled
    }
    written = {}
    for name, (seconds, rate, freq, channels, subtype) in specs.items():
        data = tone(seconds, rate, freq, channels)
        soundfile.write(tmp_path / "audio" / name, data, rate, subtype=subtype)
        written[name] = (str(tmp_path / "audio" / name), soundfile.read(tmp_path / "audio" / name, dtype="float32")[0])
    return written


def write_csv(path, header, rows):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_single_label_csv_items_match_direct_features(tmp_path, clips):
    manifest = write_csv(tmp_path / "train.csv", "path,label,extra",
                         ["audio/a.wav,dog,x", "audio/b.flac,cat,y", "audio/c.wav,dog,z"])
    dataset = ManifestDataset(manifest, qualities=(1.0, 2.0), normalize=(-4.0, 4.0))
    assert dataset.classes == ("cat", "dog") and not dataset.multi_label
    assert len(dataset) == 6 and dataset.num_clips == 3 and dataset.num_skipped == 0
    assert [e.line for e in dataset.entries] == [2, 3, 4]
    lengths = dataset.token_lengths()
    for index in range(len(dataset)):
        spectrogram, label = dataset[index]
        quality = (1.0, 2.0)[index // 3]
        name = ("a.wav", "b.flac", "c.wav")[index % 3]
        wave = clips[name][1]
        wave = wave.mean(axis=1) if wave.ndim == 2 else wave
        expected = audio_to_spectrogram(torch.from_numpy(np.ascontiguousarray(wave)), RATE, quality, normalize=(-4.0, 4.0))
        torch.testing.assert_close(spectrogram, expected, rtol=0, atol=0)
        assert label == {"a.wav": 1, "b.flac": 0, "c.wav": 1}[name]
        assert lengths[index] == (spectrogram.shape[1] // 16) * (spectrogram.shape[2] // 16)
    assert lengths[1] > lengths[0] and lengths[3] < lengths[0]  # longer clip, coarser quality


def test_other_sample_rate_is_resampled_to_16k(tmp_path, clips):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": clips["d.wav"][0], "label": 3}) + "\n")  # absolute path, int label
    dataset = ManifestDataset(manifest)
    entry = dataset.entries[0]
    assert entry.file_rate == 22050 and dataset.classes == ("3",)
    wave = dataset.load_waveform(entry)
    assert wave.dtype == np.float32 and wave.shape[0] == round(len(clips["d.wav"][1]) * RATE / 22050)
    # the 800 Hz tone survives resampling: its spectral peak is at 800 Hz at the new rate
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * RATE / wave.shape[0]
    assert abs(peak_hz - 800.0) < 5.0
    spectrogram, label = dataset[0]
    assert label == 0 and dataset.token_lengths()[0] == (spectrogram.shape[1] // 16) * (spectrogram.shape[2] // 16)


def test_multi_label_jsonl_and_csv_give_multi_hot_targets(tmp_path, clips):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"path": "audio/a.wav", "labels": ["/m/dog", "/m/bark"]},
        {"path": "audio/b.flac", "labels": ["/m/cat"]},
        {"path": "audio/c.wav", "labels": "/m/cat;/m/dog"},
    ]) + "\n\n")  # a blank line is not an entry
    dataset = ManifestDataset(jsonl)
    assert dataset.multi_label and dataset.classes == ("/m/bark", "/m/cat", "/m/dog")
    targets = torch.stack([dataset[i][1] for i in range(3)])
    assert targets.dtype == torch.float32
    assert targets.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 1]]
    csv_manifest = write_csv(tmp_path / "m.csv", "path,labels", ['audio/a.wav,"/m/dog,/m/bark"'])
    same = ManifestDataset(csv_manifest, classes=dataset.classes)  # the training set's class order
    assert same[0][1].tolist() == [1, 0, 1]


def test_items_feed_the_sampler_and_collate_in_loader_workers(tmp_path, clips):
    manifest = write_csv(tmp_path / "m.csv", "path,label", ["audio/a.wav,0", "audio/b.flac,1", "audio/c.wav,0",
                                                           "audio/d.wav,1"])
    dataset = ManifestDataset(manifest, qualities=(1.0, 2.0))
    sampler = PackedBatchSampler(dataset.token_lengths(), 256, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=2,
                                         collate_fn=PackedCollator(16), multiprocessing_context="fork")
    batches = list(loader)
    assert sum(b.num_samples for b in batches) == len(dataset)
    assert all(b.total_tokens <= 256 for b in batches)
    assert sum(b.total_tokens for b in batches) == int(dataset.token_lengths().sum())


@pytest.mark.parametrize("row, reason", [
    ("audio/missing.wav,dog", "file not found"),
    ("audio/broken.wav,dog", "unreadable audio"),
    ("audio/a.wav,dog,surplus", "more fields"),
    (",dog", "no 'path'"),
    ("audio/a.wav,", "exactly one of"),
])
def test_bad_csv_line_names_manifest_line_and_file(tmp_path, clips, row, reason):
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav file")
    manifest = write_csv(tmp_path / "bad.csv", "path,label", ["audio/b.flac,cat", row, "audio/c.wav,dog"])
    with pytest.raises(ManifestError, match=reason) as caught:
        ManifestDataset(manifest)
    error = caught.value
    assert error.manifest == str(manifest) and error.line == 3
    assert str(manifest) in str(error) and "line 3" in str(error)
    if "audio/" in row.split(",")[0]:
        assert error.path.endswith(row.split(",")[0]) and error.path in str(error)
    # the same manifest with the flag: the line is skipped and counted, the rest is usable
    dataset = ManifestDataset(manifest, skip_bad=True)
    assert dataset.num_skipped == 1 and dataset.skipped[0][0] == 3 and reason in dataset.skipped[0][2]
    assert [e.line for e in dataset.entries] == [2, 4] and len(dataset) == 2


def test_bad_jsonl_lines_and_skip_flag_counts_them(tmp_path, clips):
    lines = [
        json.dumps({"path": "audio/a.wav", "label": "dog"}),
        "{not json",
        json.dumps(["audio/b.flac", "cat"]),
        json.dumps({"path": "audio/b.flac", "labels": ["cat"]}),  # mixes label kinds
        json.dumps({"path": "audio/b.flac", "label": ["cat", "dog"]}),  # two labels under 'label'
        json.dumps({"path": "audio/nope.flac", "label": "cat"}),
        json.dumps({"path": "audio/c.wav", "label": "cat"}),
    ]
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=r"line 2: not valid JSON"):
        ManifestDataset(manifest)
    dataset = ManifestDataset(manifest, skip_bad=True)
    assert [line for line, _, _ in dataset.skipped] == [2, 3, 4, 5, 6]
    assert dataset.num_skipped == 5 and [e.line for e in dataset.entries] == [1, 7]
    assert dataset.classes == ("cat", "dog")


def test_labels_outside_given_classes_and_bad_options(tmp_path, clips):
    manifest = write_csv(tmp_path / "m.csv", "path,label", ["audio/a.wav,dog", "audio/b.flac,bird"])
    with pytest.raises(ManifestError, match=r"line 3.*'bird'.* not in classes"):
        ManifestDataset(manifest, classes=("cat", "dog"))
    assert ManifestDataset(manifest, classes=("cat", "dog"), skip_bad=True).num_skipped == 1
    with pytest.raises(ValueError, match="no usable line"):
        ManifestDataset(write_csv(tmp_path / "e.csv", "path,label", ["audio/zzz.wav,dog"]), skip_bad=True)
    with pytest.raises(ValueError, match=r"\.csv, \.jsonl"):
        ManifestDataset(write_csv(tmp_path / "m.txt", "path,label", ["audio/a.wav,dog"]))
    with pytest.raises(ManifestError, match="'path' column"):
        ManifestDataset(write_csv(tmp_path / "h.csv", "file,label", ["audio/a.wav,dog"]))
    with pytest.raises(ValueError, match="qualities"):
        ManifestDataset(manifest, qualities=())
    with pytest.raises(FileNotFoundError, match="manifest"):
        ManifestDataset(tmp_path / "absent.csv")


def test_audio_that_stops_decoding_after_the_header_names_the_file(tmp_path, clips):
    manifest = write_csv(tmp_path / "m.csv", "path,label", ["audio/b.flac,cat"])
    dataset = ManifestDataset(manifest)
    path = clips["b.flac"][0]
    data = open(path, "rb").read()
    with open(path, "wb") as handle:  # keep the header, garble the frames
        handle.write(data[:200] + bytes(255 - (b % 256) for b in data[200:]))
    with pytest.raises(ManifestError, match=r"line 2, file .*b\.flac: unreadable audio"):
        dataset[0]


# ---------------------------------------------------------------- every problem named, at once
def write_nan_wav(path, seconds: float = 0.3, value: float = float("nan")):
    data = tone(seconds, RATE)
    data[len(data) // 2] = value
    soundfile.write(path, data, RATE, subtype="FLOAT")
    return path


def test_every_bad_line_is_listed_in_one_error_and_skipped_by_path(tmp_path, clips):
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav file")
    write_nan_wav(tmp_path / "audio" / "nan.wav")
    manifest = write_csv(tmp_path / "m.csv", "path,label", [
        "audio/a.wav,dog", "audio/missing.wav,dog", "audio/broken.wav,cat", "audio/b.flac,cat", "audio/nan.wav,dog"])
    with pytest.raises(ManifestError) as caught:
        ManifestDataset(manifest, verify_audio=True)
    error = caught.value
    assert [(p.line, os.path.basename(p.path)) for p in error.problems] == [
        (3, "missing.wav"), (4, "broken.wav"), (6, "nan.wav")]
    message = str(error)
    assert "3 unusable lines" in message and str(manifest) in message
    for problem in error.problems:
        assert f"line {problem.line}, file {problem.path}: {problem.reason}" in message
    assert "NaN or infinite samples" in error.problems[2].reason
    assert pickle.loads(pickle.dumps(error)).problems == error.problems  # crosses from loader workers intact

    dataset = ManifestDataset(manifest, verify_audio=True, skip_bad=True)
    assert [e.line for e in dataset.entries] == [2, 5]
    assert dataset.skipped == list(error.problems)


def test_nan_audio_found_when_loaded_names_line_and_file(tmp_path, clips):
    write_nan_wav(tmp_path / "audio" / "inf.wav", value=float("inf"))
    manifest = write_csv(tmp_path / "m.csv", "path,label", ["audio/a.wav,dog", "audio/inf.wav,dog"])
    dataset = ManifestDataset(manifest)  # headers only: the samples are read when the item is
    dataset[0]
    with pytest.raises(ManifestError, match=r"line 3, file .*inf\.wav: holds NaN or infinite samples"):
        dataset[1]


def test_manifest_file_problems_name_the_file(tmp_path, clips):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,label\naudio/a.wav,dog\naudio/b.flac,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"latin\.csv, line 3: is not UTF-8 text \(byte 0xe9"):
        ManifestDataset(latin)
    with pytest.raises(ValueError, match=r"is a directory"):
        ManifestDataset(tmp_path / "audio")
    with pytest.raises(TypeError, match="manifest must be a str or os.PathLike"):
        ManifestDataset(3)
    huge = tmp_path / "huge.csv"  # a field past the csv module's limit (131072 characters)
    huge.write_text("path,label\naudio/a.wav,dog\naudio/a.wav," + "x" * 200_000 + "\n")
    with pytest.raises(ManifestError, match=r"huge\.csv, line 3: malformed CSV \(field larger than field limit"):
        ManifestDataset(huge)
    bom = tmp_path / "bom.csv"  # Excel's UTF-8 with a byte-order mark
    bom.write_bytes(b"\xef\xbb\xbfpath,label\naudio/a.wav,dog\n")
    assert ManifestDataset(bom).num_clips == 1


def test_missing_soundfile_names_the_audio_extra(tmp_path, clips, monkeypatch):
    manifest = write_csv(tmp_path / "m.csv", "path,label", ["audio/a.wav,dog"])
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import soundfile -> ImportError
    with pytest.raises(ImportError, match=r'pip install "elasticast-kernels\[audio\]"'):
        ManifestDataset(manifest)


def test_max_frames_reads_only_the_frames_it_needs(tmp_path, clips, monkeypatch):
    soundfile.write(tmp_path / "audio" / "long.wav", tone(6.0, 22050), 22050)  # resampled, so soxr runs too
    manifest = write_csv(tmp_path / "m.csv", "path,label", ["audio/a.wav,dog", "audio/long.wav,cat"])
    whole = ManifestDataset(manifest, qualities=(1.0, 2.0))
    crop = ManifestDataset(manifest, qualities=(1.0, 2.0), max_frames=64)
    assert crop.cropped().tolist() == [1, 3] and whole.cropped().size == 0
    assert (crop.token_lengths() <= 8 * 4).all() and crop.token_lengths()[0] == whole.token_lengths()[0]
    import elasticast_kernels.data.manifest as manifest_module

    reads = []
    real_read = manifest_module.read_audio
    monkeypatch.setattr(manifest_module, "read_audio", lambda *a, **k: reads.append(k["max_samples"]) or real_read(*a, **k))
    for index in (1, 3):  # the long clip at quality 1 and 2: only the samples of 64 frames
        cropped, full = crop.spectrogram(index), whole.spectrogram(index)
        assert cropped.shape[2] == 64
        torch.testing.assert_close(cropped, full[:, :, :64], rtol=0, atol=0)  # a partial read equals the whole
    assert reads[0] == 400 + 63 * 160 and reads[2] == 400 + 63 * 320 and reads[1] is reads[3] is None
    assert crop.describe(3) == f"{tmp_path / 'audio' / 'long.wav'} (m.csv line 3, quality 2)"


# ---------------------------------------------------------------- the normalisation estimate
def test_estimate_normalization_matches_all_features_and_checks_finiteness(tmp_path, clips):
    manifest = write_csv(tmp_path / "m.csv", "path,label", ["audio/a.wav,0", "audio/b.flac,1", "audio/d.wav,0"])
    dataset = ManifestDataset(manifest, normalize=(100.0, 1.0))  # its own normalisation is ignored
    mean, std = estimate_normalization(dataset, clips=10, seed=0)
    values = torch.cat([dataset.spectrogram(i).double().flatten() for i in range(3)])
    assert mean == pytest.approx(float(values.mean()), rel=1e-12) and std == pytest.approx(float(values.std()), rel=1e-12)
    one = estimate_normalization(dataset, clips=1, seed=5)
    chosen = int(np.random.default_rng(5).permutation(3)[0])
    assert one[0] == pytest.approx(float(dataset.spectrogram(chosen).double().mean()), rel=1e-12)

    write_nan_wav(tmp_path / "audio" / "nan.wav")
    huge = tone(0.3, RATE) * np.float32(1e30)  # finite samples whose power overflows float32
    soundfile.write(tmp_path / "audio" / "huge.wav", huge, RATE, subtype="FLOAT")
    with pytest.raises(ManifestError, match=r"line 2, file .*nan\.wav: holds NaN"):
        estimate_normalization(ManifestDataset(write_csv(tmp_path / "n.csv", "path,label", ["audio/nan.wav,0"])))
    with pytest.raises(ManifestError, match=r"h\.csv, line 2, file .*huge\.wav: its features at quality 1 are not finite"):
        estimate_normalization(ManifestDataset(write_csv(tmp_path / "h.csv", "path,label", ["audio/huge.wav,0"])))
    soundfile.write(tmp_path / "audio" / "silent.wav", np.zeros(8000, dtype=np.float32), RATE)
    with pytest.raises(ValueError, match="std 0"):
        estimate_normalization(ManifestDataset(write_csv(tmp_path / "s.csv", "path,label", ["audio/silent.wav,0"])))
    for bad, error in ((dict(clips=0), ValueError), (dict(clips=2.0), TypeError), (dict(seed=-1), ValueError)):
        with pytest.raises(error):
            estimate_normalization(dataset, **bad)
