"""Property-based tests of the data path (hypothesis): manifests of random good and bad lines, in
CSV and JSONL, over audio files that are fine, missing, corrupt, empty, or hold NaN/inf samples,
some longer than the pack budget.

For every manifest: each bad line is named (line and file) in one error, or skipped and listed
with ``skip_bad``; no good line is lost; every good item loads to finite features of the length
the sampler planned; and oversize clips get packs of their own, or are cropped to the budget.
"""
from __future__ import annotations

import itertools
import json
import os
import warnings

import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile")
pytest.importorskip("soxr")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from elasticast_kernels.data import ManifestDataset, ManifestError, PackedBatchSampler, num_frames  # noqa: E402
from elasticast_kernels.data.audio import resampled_length  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RATE = 16000
BUDGET = 64  # tokens per pack: 8 time patches of 128 mel bins, about 1.3 s at quality 1
BUDGET_FRAMES = (BUDGET // 8) * 16

#: good files: name -> (seconds, file rate, channels); "long" is over the budget at quality 1
GOOD = {"short": (0.2, RATE, 1), "mid": (0.7, 22050, 1), "stereo": (0.5, RATE, 2), "long": (2.5, RATE, 1)}
#: bad files: name -> the reason ManifestDataset gives
BAD_FILES = {"missing": "file not found", "corrupt": "unreadable audio", "empty": "no audio frames",
             "nan": "NaN or infinite samples", "inf": "NaN or infinite samples"}
#: bad lines (no usable file reference), per format: kind -> line text
BAD_LINES = {
    "csv": {"no_path": ",dog", "no_label": "audio/short.wav,", "surplus": "audio/short.wav,dog,extra"},
    "jsonl": {"no_path": json.dumps({"label": "dog"}), "no_label": json.dumps({"path": "audio/short.wav"}),
              "not_json": "{oops", "not_object": json.dumps(["audio/short.wav", "dog"])},
}
_counter = itertools.count()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """The audio files every manifest refers to (written once)."""
    root = tmp_path_factory.mktemp("pool")
    (root / "audio").mkdir()
    for name, (seconds, rate, channels) in GOOD.items():
        t = np.arange(int(seconds * rate)) / rate
        mono = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        soundfile.write(root / "audio" / f"{name}.wav", mono if channels == 1 else np.stack([mono, -mono], 1), rate)
    (root / "audio" / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" * 3)
    soundfile.write(root / "audio" / "empty.wav", np.zeros(0, dtype=np.float32), RATE)
    for name, value in (("nan", np.nan), ("inf", -np.inf)):
        data = np.full(4000, 0.1, dtype=np.float32)
        data[1234] = value
        soundfile.write(root / "audio" / f"{name}.wav", data, RATE, subtype="FLOAT")
    return root


line_kinds = st.sampled_from([*(f"good:{n}" for n in GOOD), *(f"file:{n}" for n in BAD_FILES),
                              "line:no_path", "line:no_label", "line:format"])


def write_manifest(pool, fmt: str, kinds: list[str], labels: list[str]) -> tuple[str, dict[int, str], dict[int, str]]:
    """-> (manifest path, {line: good file}, {line: bad kind}); line numbers as the dataset counts them."""
    lines, good, bad = (["path,label"] if fmt == "csv" else []), {}, {}
    for kind, label in zip(kinds, labels):
        group, name = kind.split(":")
        if group == "line":
            name = name if name != "format" else ("surplus" if fmt == "csv" else "not_json")
            text = BAD_LINES[fmt][name]
        else:
            path = f"audio/{name}.wav"
            text = f"{path},{label}" if fmt == "csv" else json.dumps({"path": path, "label": label})
        lines.append(text)
        (good if group == "good" else bad)[len(lines)] = name
    manifest = pool / f"m{next(_counter)}.{fmt}"
    manifest.write_text("\n".join(lines) + "\n")
    return str(manifest), good, bad


@SETTINGS
@given(st.sampled_from(["csv", "jsonl"]), st.lists(st.tuples(line_kinds, st.sampled_from(["dog", "cat", "7"])),
                                                   min_size=1, max_size=10))
def test_every_bad_line_named_and_nothing_good_lost(pool, fmt, lines):
    manifest, good, bad = write_manifest(pool, fmt, [k for k, _ in lines], [label for _, label in lines])
    if bad:
        with pytest.raises(ManifestError) as caught:
            ManifestDataset(manifest, verify_audio=True)
        assert [p.line for p in caught.value.problems] == sorted(bad)  # all of them, in one error
        for problem in caught.value.problems:
            assert f"line {problem.line}" in str(caught.value)
            if bad[problem.line] in BAD_FILES:
                assert problem.path.endswith(f"{bad[problem.line]}.wav") and problem.path in str(caught.value)
                assert BAD_FILES[bad[problem.line]] in problem.reason
    if not good:
        with pytest.raises(ValueError, match="no usable line"):
            ManifestDataset(manifest, verify_audio=True, skip_bad=True)
        return
    dataset = ManifestDataset(manifest, qualities=(1.0, 2.0), verify_audio=True, skip_bad=True)
    assert [e.line for e in dataset.entries] == sorted(good)  # nothing good lost
    assert [p.line for p in dataset.skipped] == sorted(bad)  # every bad one listed
    lengths = dataset.token_lengths()
    for index in range(len(dataset)):
        spectrogram, label = dataset[index]
        assert torch.isfinite(spectrogram).all()
        assert (spectrogram.shape[1] // 16) * (spectrogram.shape[2] // 16) == lengths[index]
        assert dataset.classes[label] == dataset.locate(index)[0].labels[0]


@SETTINGS
@given(st.lists(st.sampled_from(sorted(GOOD)), min_size=1, max_size=8), st.integers(0, 2**16),
       st.sampled_from([1, 2]))
def test_oversize_clips_get_own_packs_or_are_cropped(pool, names, seed, packs_per_step):
    manifest, _, _ = write_manifest(pool, "csv", [f"good:{n}" for n in names], ["dog"] * len(names))
    dataset = ManifestDataset(manifest, qualities=(1.0, 3.0))
    lengths = dataset.token_lengths()
    sampler = PackedBatchSampler(lengths, BUDGET, seed=seed, packs_per_step=packs_per_step)  # own packs
    seen = [i for step in sampler for i in step]
    assert sorted(seen) == list(range(len(dataset)))  # no clip lost, however long
    expected_oversize = [i for i in range(len(dataset)) if lengths[i] > BUDGET]
    assert sampler.oversize_indices.tolist() == expected_oversize
    for step in sampler.packs():
        for pack in step:
            assert lengths[pack].sum() <= BUDGET or (len(pack) == 1 and pack[0] in expected_oversize)

    cropped = ManifestDataset(manifest, qualities=(1.0, 3.0), max_frames=BUDGET_FRAMES)
    assert (cropped.token_lengths() <= BUDGET).all()
    full_frames = [num_frames(resampled_length(entry.frames, entry.file_rate, RATE), RATE, quality)
                   for entry, quality in map(dataset.locate, range(len(dataset)))]
    assert cropped.cropped().tolist() == [i for i, frames in enumerate(full_frames) if frames > BUDGET_FRAMES]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is oversize after the crop: no warning, no error
        PackedBatchSampler(cropped.token_lengths(), BUDGET, oversize="error")
    for index in cropped.cropped().tolist():
        assert cropped[index][0].shape[2] == BUDGET_FRAMES
    os.remove(manifest)
