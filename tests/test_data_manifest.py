"""ManifestDataset over wav/flac files written here by soundfile: CSV and JSONL, single- and
multi-label, resampling, the token counts the sampler packs, and every kind of bad line."""
from __future__ import annotations

import json

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
