"""Audio from a manifest (CSV or JSON lines): ``path`` plus ``label`` (single-label) or ``labels`` (multi-label).

The manifest is read once, with every audio file's header (frames, sample rate) probed by
``soundfile``, so the token count of every item is known before any audio is decoded: that is what
:class:`~elasticast_kernels.data.PackedBatchSampler` packs. ``__getitem__``, which runs in the
data-loader workers, decodes the file (wav, flac, ogg, ... through libsndfile), averages the
channels, resamples to ``sample_rate`` with ``soxr`` when the file has another rate, and computes
the features with :func:`~elasticast_kernels.data.audio_to_spectrogram` (our Kaldi-compatible
``fbank``) at the item's quality.

Manifest formats (paths relative to the manifest's folder, or absolute)::

    path,label                      path,labels
    clips/a.wav,dog                 clips/a.flac,"/m/09x0r,/m/05zppz"      (also ';'-separated)

    {"path": "clips/a.wav", "label": "dog"}
    {"path": "clips/a.flac", "labels": ["/m/09x0r", "/m/05zppz"]}

A malformed line, a missing file or a file libsndfile cannot read raises :class:`ManifestError`
naming the manifest, the line and the file; with ``skip_bad=True`` those entries are left out
instead and listed in :attr:`ManifestDataset.skipped`. (A file whose header reads but whose
audio does not decode fails later, in ``__getitem__``, with the same kind of message: the sampler
has planned it by then, so it cannot be skipped.)

Requires the ``audio`` extra: ``pip install "elasticast-kernels[audio]"`` (soundfile, soxr).
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .features import audio_to_spectrogram, num_frames, num_tokens

__all__ = ["ManifestDataset", "ManifestEntry", "ManifestError"]

_LABEL_SEPARATORS = re.compile(r"[;,]")


class ManifestError(ValueError):
    """A manifest line or the file it names is unusable.

    Attributes: ``manifest`` (its path), ``line`` (1-based line number), ``path`` (the audio file,
    or None when the line has none), ``reason``.
    """

    def __init__(self, manifest: str, line: int, path: str | None, reason: str) -> None:
        self.manifest, self.line, self.path, self.reason = manifest, line, path, reason
        where = f"{manifest}, line {line}" + (f", file {path}" if path else "")
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class ManifestEntry:
    """One usable manifest line: the resolved audio ``path``, its label names, where it came from,
    and the header facts (``frames`` at ``file_rate`` Hz)."""

    line: int
    path: str
    labels: tuple[str, ...]
    frames: int
    file_rate: int


class ManifestDataset(Dataset):
    """``(spectrogram [1, num_mel_bins, T], label)`` items from a manifest, one per (line, quality).

    Args:
        manifest: a ``.csv`` file with a header, or a ``.jsonl`` / ``.json`` file of one object per line.
        classes: label names in class-index order. Default: the names found in the manifest,
            sorted (numerically when all are integers). Pass the training set's ``classes`` to
            its test set so the indices agree.
        qualities: ElasticAST time resolutions; item ``q * num_clips + i`` is clip ``i`` at
            ``qualities[q]`` (one item per clip and quality, mixed by the sampler).
        sample_rate: rate the features are computed at (16 kHz in every recipe).
        num_mel_bins, patch_size, max_frames, normalize: as
            :func:`~elasticast_kernels.data.audio_to_spectrogram`.
        skip_bad: leave out malformed lines, missing and unreadable files (listed in
            :attr:`skipped`) instead of raising.

    Attributes:
        entries: the usable :class:`ManifestEntry` lines, in manifest order.
        classes: tuple of label names; ``multi_label``: whether the manifest uses ``labels``.
        skipped: ``(line, path or None, reason)`` of every skipped line; ``num_skipped``.

    Labels: single-label items carry the class index (int); multi-label items a float32 multi-hot
    ``[num_classes]`` tensor (train with BCE, score with mAP).

    Raises:
        ValueError: an unsupported manifest type, bad options, a manifest with no usable line.
        ManifestError: a bad line or file (without ``skip_bad``); a label not in ``classes``
            (skipped with ``skip_bad``).
        ImportError: soundfile (or, for a file at another rate, soxr) is not installed.
    """

    def __init__(
        self,
        manifest: str | os.PathLike,
        *,
        classes: Sequence[str] | None = None,
        qualities: Sequence[float] = (1.0,),
        sample_rate: int = 16000,
        num_mel_bins: int = 128,
        patch_size: int = 16,
        max_frames: int | None = None,
        normalize: tuple[float, float] | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.manifest = os.fspath(manifest)
        if not os.path.isfile(self.manifest):
            raise FileNotFoundError(f"manifest {self.manifest} does not exist")
        qualities = tuple(float(q) for q in qualities)
        if not qualities or any(not q > 0 for q in qualities):
            raise ValueError(f"qualities must be a non-empty sequence of values > 0, got {qualities!r}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
            raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
        self.qualities, self.sample_rate, self.skip_bad = qualities, sample_rate, bool(skip_bad)
        self.num_mel_bins, self.patch_size, self.max_frames, self.normalize = num_mel_bins, patch_size, max_frames, normalize
        self.skipped: list[tuple[int, str | None, str]] = []

        rows, self.multi_label = self._read_rows()
        self.classes = tuple(classes) if classes is not None else _sorted_names(l for _, _, ls in rows for l in ls)
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must not repeat a name")
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        self.entries = self._probe(rows)
        if not self.entries:
            raise ValueError(f"manifest {self.manifest} has no usable line ({self.num_skipped} skipped)")

    # ------------------------------------------------------------------ reading
    def _bad(self, line: int, path: str | None, reason: str) -> None:
        """Raise, or (skip_bad) record the line as skipped."""
        if not self.skip_bad:
            raise ManifestError(self.manifest, line, path, reason)
        self.skipped.append((line, path, reason))

    def _read_rows(self) -> tuple[list[tuple[int, str, tuple[str, ...]]], bool]:
        """-> ([(line, resolved path, label names)], multi_label), malformed lines raised or skipped."""
        extension = os.path.splitext(self.manifest)[1].lower()
        if extension == ".csv":
            records = self._csv_records()
        elif extension in (".jsonl", ".json"):
            records = self._jsonl_records()
        else:
            raise ValueError(f"manifest {self.manifest} must end in .csv, .jsonl or .json")
        base = os.path.dirname(os.path.abspath(self.manifest))
        rows, kinds = [], set()
        for line, record in records:
            if record is None:
                continue
            path = record.get("path")
            if not isinstance(path, str) or not path.strip():
                self._bad(line, None, "no 'path'")
                continue
            resolved = os.path.join(base, path.strip())
            kind = [key for key in ("label", "labels") if record.get(key) not in (None, "")]
            if len(kind) != 1:
                self._bad(line, resolved, "needs exactly one of 'label' (single-label) or 'labels' (multi-label)")
                continue
            if kinds and kind[0] not in kinds:
                self._bad(line, resolved, f"has {kind[0]!r} but earlier lines have {next(iter(kinds))!r}: use one kind")
                continue
            labels = _label_names(record[kind[0]])
            if labels is None or (kind[0] == "label" and len(labels) != 1):
                self._bad(line, resolved, f"malformed {kind[0]!r}: {record[kind[0]]!r}")
                continue
            kinds.add(kind[0])
            rows.append((line, resolved, labels))
        return rows, kinds == {"labels"}

    def _csv_records(self):
        with open(self.manifest, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ManifestError(self.manifest, 1, None, f"the CSV header needs a 'path' column, got {reader.fieldnames}")
            for record in reader:
                if None in record:  # more fields than the header
                    self._bad(reader.line_num, record.get("path"), "more fields than the header has columns")
                    yield reader.line_num, None
                else:
                    yield reader.line_num, record

    def _jsonl_records(self):
        with open(self.manifest) as handle:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as error:
                    self._bad(line, None, f"not valid JSON ({error.msg})")
                    yield line, None
                    continue
                if not isinstance(record, dict):
                    self._bad(line, None, f"expected a JSON object, got {type(record).__name__}")
                    yield line, None
                    continue
                yield line, record

    def _probe(self, rows) -> list[ManifestEntry]:
        """Header of every file (frames, rate) without decoding the audio."""
        import soundfile

        entries = []
        for line, path, labels in rows:
            unknown = [name for name in labels if name not in self._class_index]
            if unknown:
                self._bad(line, path, f"label(s) {unknown} not in classes")
                continue
            if not os.path.isfile(path):
                self._bad(line, path, "file not found")
                continue
            try:
                info = soundfile.info(path)
            except (RuntimeError, OSError) as error:  # soundfile.LibsndfileError is a RuntimeError
                self._bad(line, path, f"unreadable audio ({error})")
                continue
            if info.frames < 1:
                self._bad(line, path, "no audio frames")
                continue
            entries.append(ManifestEntry(line, path, labels, int(info.frames), int(info.samplerate)))
        return entries

    # ------------------------------------------------------------------ dataset
    @property
    def num_skipped(self) -> int:
        """Lines left out with ``skip_bad=True``."""
        return len(self.skipped)

    @property
    def num_clips(self) -> int:
        return len(self.entries)

    def __len__(self) -> int:
        return len(self.entries) * len(self.qualities)

    def _locate(self, index: int) -> tuple[ManifestEntry, float]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        quality, clip = divmod(index % len(self), len(self.entries))
        return self.entries[clip], self.qualities[quality]

    def _resampled_length(self, entry: ManifestEntry) -> int:
        if entry.file_rate == self.sample_rate:
            return entry.frames
        return max(1, int(round(entry.frames * self.sample_rate / entry.file_rate)))  # soxr's output length

    def token_lengths(self) -> np.ndarray:
        """int64 ``[len(self)]``: tokens of every item, from the file headers (what the sampler packs)."""
        samples = np.array([self._resampled_length(e) for e in self.entries], dtype=np.int64)
        per_quality = []
        for quality in self.qualities:
            frames = num_frames(samples, self.sample_rate, quality)
            if self.max_frames is not None:
                frames = np.minimum(frames, self.max_frames)
            per_quality.append(np.asarray(num_tokens(frames, self.num_mel_bins, self.patch_size), dtype=np.int64))
        return np.concatenate(per_quality)

    def label_of(self, entry: ManifestEntry) -> Any:
        """Class index (single-label) or float32 multi-hot ``[num_classes]`` (multi-label)."""
        indices = [self._class_index[name] for name in entry.labels]
        if not self.multi_label:
            return indices[0]
        target = torch.zeros(len(self.classes), dtype=torch.float32)
        target[indices] = 1.0
        return target

    def load_waveform(self, entry: ManifestEntry) -> np.ndarray:
        """float32 mono ``[samples]`` at :attr:`sample_rate`, exactly as long as the header promised.

        Raises:
            ManifestError: the audio does not decode.
        """
        import soundfile

        try:
            audio, rate = soundfile.read(entry.path, dtype="float32", always_2d=True)
        except (RuntimeError, OSError) as error:
            raise ManifestError(self.manifest, entry.line, entry.path, f"unreadable audio ({error})") from None
        wave = audio.mean(axis=1)
        if rate != self.sample_rate:
            import soxr

            wave = soxr.resample(wave, rate, self.sample_rate).astype(np.float32, copy=False)
        # Pin the length to the header's promise (the resampler may differ by a sample): the
        # sampler planned this item's tokens from it.
        expected = self._resampled_length(entry)
        if wave.shape[0] != expected:
            wave = np.pad(wave[:expected], (0, max(0, expected - wave.shape[0])))
        return np.ascontiguousarray(wave, dtype=np.float32)

    def __getitem__(self, index: int):
        entry, quality = self._locate(index)
        spectrogram = audio_to_spectrogram(
            torch.from_numpy(self.load_waveform(entry)), self.sample_rate, quality,
            num_mel_bins=self.num_mel_bins, patch_size=self.patch_size, max_frames=self.max_frames,
            normalize=self.normalize,
        )
        return spectrogram, self.label_of(entry)


def _label_names(value: Any) -> tuple[str, ...] | None:
    """A label field -> names: a string (split on ',' / ';'), a number, or a JSON list of those."""
    if isinstance(value, str):
        names = [part.strip() for part in _LABEL_SEPARATORS.split(value)]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        names = [str(value)]
    elif isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        names = [str(v).strip() for v in value]
    else:
        return None
    names = [name for name in names if name]
    return tuple(names) if names else None


def _sorted_names(names) -> tuple[str, ...]:
    unique = set(names)
    if unique and all(re.fullmatch(r"-?\d+", name) for name in unique):
        return tuple(sorted(unique, key=int))
    return tuple(sorted(unique))
