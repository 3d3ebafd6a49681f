"""Audio from a manifest (CSV or JSON lines): ``path`` plus ``label`` (single-label) or ``labels`` (multi-label).

The manifest is read once, with every audio file's header (frames, sample rate) probed, so the
token count of every item is known before any audio is decoded: that is what
:class:`~elasticast_kernels.data.PackedBatchSampler` packs. ``__getitem__``, which runs in the
data-loader workers, reads the file through :func:`~elasticast_kernels.data.audio.read_audio`
(decode, mono, resample to ``sample_rate``, NaN/inf refused) and computes the features with
:func:`~elasticast_kernels.data.audio_to_spectrogram` (our Kaldi-compatible ``fbank``) at the
item's quality. With ``max_frames`` only the samples those frames need are read: a 20-minute
file cropped to 10 s decodes 10 s, every epoch.

Manifest formats (UTF-8; paths relative to the manifest's folder, or absolute)::

    path,label                      path,labels
    clips/a.wav,dog                 clips/a.flac,"/m/09x0r,/m/05zppz"      (also ';'-separated)

    {"path": "clips/a.wav", "label": "dog"}
    {"path": "clips/a.flac", "labels": ["/m/09x0r", "/m/05zppz"]}

Every unusable line is found in one pass: a malformed line, a label outside ``classes``, a
missing, unreadable or empty file, and with ``verify_audio=True`` also a file whose audio does
not decode or holds NaN/inf samples. Without ``skip_bad`` one :class:`ManifestError` lists all
of them (manifest, line, file, reason); with ``skip_bad=True`` they are left out and listed in
:attr:`ManifestDataset.skipped`. A file that breaks after that (or whose audio was not verified)
raises a :class:`ManifestError` naming its line and path when an item is loaded.

Requires the ``audio`` extra: ``pip install "elasticast-kernels[audio]"`` (soundfile, soxr).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from elasticast_kernels._checks import check_int, check_optional_int, check_path

from .audio import AudioError, AudioInfo, audio_info, read_audio, resampled_length
from .features import _frame_geometry, audio_to_spectrogram, num_frames, num_tokens

__all__ = ["ManifestDataset", "ManifestEntry", "ManifestError", "ManifestProblem"]

_LABEL_SEPARATORS = re.compile(r"[;,]")


class ManifestProblem(NamedTuple):
    """One unusable manifest line: ``line`` (1-based), the audio ``path`` (None when the line has
    none) and the ``reason``."""

    line: int
    path: str | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}" + (f", file {self.path}" if self.path else "") + f": {self.reason}"


class ManifestError(ValueError):
    """Manifest lines, or the files they name, that are unusable.

    Attributes: ``manifest`` (its path), ``problems`` (every :class:`ManifestProblem` found, in
    line order), and ``line``, ``path``, ``reason`` of the first one.
    """

    def __init__(self, manifest: str, line: int, path: str | None, reason: str,
                 problems: Sequence[ManifestProblem] = ()) -> None:
        first = ManifestProblem(line, path, reason)
        self.manifest, self.line, self.path, self.reason = manifest, line, path, reason
        self.problems = tuple(problems) or (first,)
        if len(self.problems) == 1:
            message = f"{manifest}, {first}"
        else:
            listing = "\n".join(f"  {problem}" for problem in self.problems)
            message = f"{manifest}: {len(self.problems)} unusable lines (skip_bad=True leaves them out):\n{listing}"
        super().__init__(message)

    def __reduce__(self):  # loader workers send it to the main process pickled
        return type(self), (self.manifest, self.line, self.path, self.reason, self.problems)


@dataclass(frozen=True)
class ManifestEntry:
    """One usable manifest line: the resolved audio ``path``, its label names, where it came from,
    and the header facts (``frames`` at ``file_rate`` Hz, ``channels``)."""

    line: int
    path: str
    labels: tuple[str, ...]
    frames: int
    file_rate: int
    channels: int = 1


class ManifestDataset(Dataset):
    """``(spectrogram [1, num_mel_bins, T], label)`` items from a manifest, one per (line, quality).

    Args:
        manifest: a ``.csv`` file with a header, or a ``.jsonl`` / ``.json`` file of one object
            per line, UTF-8.
        classes: label names in class-index order. Default: the names found in the manifest,
            sorted (numerically when all are integers). Pass the training set's ``classes`` to
            its test set so the indices agree.
        qualities: ElasticAST time resolutions; item ``q * num_clips + i`` is clip ``i`` at
            ``qualities[q]`` (one item per clip and quality, mixed by the sampler).
        sample_rate: rate the features are computed at (16 kHz in every recipe).
        num_mel_bins, patch_size, max_frames, normalize: as
            :func:`~elasticast_kernels.data.audio_to_spectrogram`; ``normalize`` is ``(mean, std)``
            applied as ``(x - mean) / std``. With ``max_frames`` an item reads only the audio of
            its first ``max_frames`` frames (see :meth:`cropped`).
        skip_bad: leave out unusable lines (listed in :attr:`skipped`) instead of raising.
        verify_audio: decode every file once now (``verify_threads`` threads), so that corrupt
            audio and NaN/inf samples are found before training rather than when the item is
            first loaded (costs about one pass of decoding, without the features).

    Attributes:
        entries: the usable :class:`ManifestEntry` lines, in manifest order.
        classes: tuple of label names; ``multi_label``: whether the manifest uses ``labels``.
        skipped: every :class:`ManifestProblem` left out with ``skip_bad``; ``num_skipped``.

    Labels: single-label items carry the class index (int); multi-label items a float32 multi-hot
    ``[num_classes]`` tensor (train with BCE, score with mAP).

    Raises:
        TypeError: ``manifest`` not a path, ``classes`` not label names.
        FileNotFoundError: no manifest at that path.
        ValueError: a directory or an unsupported file type as the manifest, bad options, a
            manifest with no usable line.
        ManifestError: a manifest that is not UTF-8 or has no ``path`` column; without
            ``skip_bad``, every unusable line (one error listing all of them).
        ImportError: soundfile (or, for a file at another rate, soxr) is not installed; the
            message names the ``audio`` extra.
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
        verify_audio: bool = False,
        verify_threads: int = 4,
    ) -> None:
        self.manifest = _manifest_path(manifest)
        qualities = tuple(float(q) for q in qualities)
        if not qualities or any(not q > 0 for q in qualities):
            raise ValueError(f"qualities must be a non-empty sequence of values > 0, got {qualities!r}")
        check_int("sample_rate", sample_rate, 1)
        check_int("verify_threads", verify_threads, 1)
        check_optional_int("max_frames", max_frames, patch_size)
        self.qualities, self.sample_rate, self.skip_bad = qualities, sample_rate, bool(skip_bad)
        self.num_mel_bins, self.patch_size, self.max_frames, self.normalize = num_mel_bins, patch_size, max_frames, normalize
        self._problems: list[ManifestProblem] = []

        rows, self.multi_label = self._read_rows()
        if classes is not None and not all(isinstance(name, str) for name in classes):
            raise TypeError("classes must be label names (str)")
        self.classes = tuple(classes) if classes is not None else _sorted_names(l for _, _, ls in rows for l in ls)
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must not repeat a name")
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        self.entries = self._probe(rows)
        if verify_audio:
            self.entries = self._verify(self.entries, verify_threads)
        self.skipped: list[ManifestProblem] = sorted(self._problems)
        if self.skipped and not self.skip_bad:
            first = self.skipped[0]
            raise ManifestError(self.manifest, first.line, first.path, first.reason, self.skipped)
        if not self.entries:
            raise ValueError(f"manifest {self.manifest} has no usable line ({self.num_skipped} skipped)")

    # ------------------------------------------------------------------ reading
    def _bad(self, line: int, path: str | None, reason: str) -> None:
        """Note an unusable line; the constructor raises them all at once, or skips them."""
        self._problems.append(ManifestProblem(line, path, reason))

    def _read_rows(self) -> tuple[list[tuple[int, str, tuple[str, ...]]], bool]:
        """-> ([(line, resolved path, label names)], multi_label); malformed lines are noted."""
        extension = os.path.splitext(self.manifest)[1].lower()
        if extension not in (".csv", ".jsonl", ".json"):
            raise ValueError(f"manifest {self.manifest} must end in .csv, .jsonl or .json")
        text = self._read_text()
        records = self._csv_records(text) if extension == ".csv" else self._jsonl_records(text)
        base = os.path.dirname(os.path.abspath(self.manifest))
        rows, kinds = [], set()
        for line, record in records:
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

    def _read_text(self) -> str:
        with open(self.manifest, "rb") as handle:
            data = handle.read()
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise ManifestError(self.manifest, line, None, f"is not UTF-8 text (byte 0x{data[error.start]:02x} "
                                "cannot be decoded); save the manifest as UTF-8") from None

    def _csv_records(self, text: str) -> Iterator[tuple[int, dict]]:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ManifestError(self.manifest, 1, None, f"the CSV header needs a 'path' column, got {reader.fieldnames}")
            for record in reader:
                if None in record:  # more fields than the header
                    self._bad(reader.line_num, record.get("path"), "more fields than the header has columns")
                else:
                    yield reader.line_num, record
        except csv.Error as error:
            # line_num counts the lines read before the one that failed
            raise ManifestError(self.manifest, reader.line_num + 1, None, f"malformed CSV ({error})") from None

    def _jsonl_records(self, text: str) -> Iterator[tuple[int, dict]]:
        for line, content in enumerate(io.StringIO(text), start=1):
            if not content.strip():
                continue
            try:
                record = json.loads(content)
            except json.JSONDecodeError as error:
                self._bad(line, None, f"not valid JSON ({error.msg})")
                continue
            if not isinstance(record, dict):
                self._bad(line, None, f"expected a JSON object, got {type(record).__name__}")
                continue
            yield line, record

    def _probe(self, rows) -> list[ManifestEntry]:
        """Header of every file (frames, rate, channels) without decoding the audio."""
        entries = []
        for line, path, labels in rows:
            unknown = [name for name in labels if name not in self._class_index]
            if unknown:
                self._bad(line, path, f"label(s) {unknown} not in classes")
                continue
            try:
                info = audio_info(path)
            except AudioError as error:
                self._bad(line, path, error.reason)
                continue
            entries.append(ManifestEntry(line, path, labels, info.frames, info.sample_rate, info.channels))
        return entries

    def _verify(self, entries: list[ManifestEntry], threads: int) -> list[ManifestEntry]:
        """Decode every entry as its items will (the crop included); note those that fail."""
        max_samples = None if self.max_frames is None else max(self._max_samples(q) for q in self.qualities)

        def check(entry: ManifestEntry) -> str | None:
            try:
                read_audio(entry.path, self.sample_rate, max_samples=max_samples, info=_info(entry))
            except AudioError as error:
                return error.reason
            return None

        with ThreadPoolExecutor(max_workers=threads) as pool:  # libsndfile and soxr release the GIL
            reasons = list(pool.map(check, entries))
        for entry, reason in zip(entries, reasons):
            if reason is not None:
                self._bad(entry.line, entry.path, reason)
        return [entry for entry, reason in zip(entries, reasons) if reason is None]

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

    def locate(self, index: int) -> tuple[ManifestEntry, float]:
        """``(entry, quality)`` of item ``index``. Raises IndexError out of range."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -len(self) <= index < len(self):
            raise IndexError(f"index {index!r} out of range for {len(self)} items")
        quality, clip = divmod(int(index) % len(self), len(self.entries))
        return self.entries[clip], self.qualities[quality]

    def describe(self, index: int) -> str:
        """Where item ``index`` comes from: ``"PATH (manifest line N, quality Q)"``."""
        entry, quality = self.locate(index)
        return f"{entry.path} ({os.path.basename(self.manifest)} line {entry.line}, quality {quality:g})"

    def _full_frames(self) -> np.ndarray:
        """int64 ``[len(self)]``: feature frames of every item before any crop (from the headers)."""
        samples = np.array([resampled_length(e.frames, e.file_rate, self.sample_rate) for e in self.entries],
                           dtype=np.int64)
        return np.concatenate([np.asarray(num_frames(samples, self.sample_rate, q), dtype=np.int64).reshape(-1)
                               for q in self.qualities])

    def token_lengths(self) -> np.ndarray:
        """int64 ``[len(self)]``: tokens of every item, from the file headers (what the sampler packs)."""
        frames = self._full_frames()
        if self.max_frames is not None:
            frames = np.minimum(frames, self.max_frames)
        return np.asarray(num_tokens(frames, self.num_mel_bins, self.patch_size), dtype=np.int64).reshape(-1)

    def cropped(self) -> np.ndarray:
        """int64 indices of the items longer than ``max_frames`` frames (cut to it when loaded)."""
        if self.max_frames is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self._full_frames() > self.max_frames)

    def label_of(self, entry: ManifestEntry) -> Any:
        """Class index (single-label) or float32 multi-hot ``[num_classes]`` (multi-label)."""
        indices = [self._class_index[name] for name in entry.labels]
        if not self.multi_label:
            return indices[0]
        target = torch.zeros(len(self.classes), dtype=torch.float32)
        target[indices] = 1.0
        return target

    def _max_samples(self, quality: float) -> int | None:
        """Samples the first ``max_frames`` frames at ``quality`` span (None: no crop)."""
        if self.max_frames is None:
            return None
        shift, size, _ = _frame_geometry(self.sample_rate, 10.0, 25.0, quality)
        return size + (self.max_frames - 1) * shift

    def load_waveform(self, entry: ManifestEntry, max_samples: int | None = None) -> np.ndarray:
        """float32 mono ``[samples]`` at :attr:`sample_rate`, exactly as long as the header promised
        (or ``max_samples``, reading only those).

        Raises:
            ManifestError: the audio does not decode or holds NaN/inf samples (names the line and file).
        """
        try:
            wave = read_audio(entry.path, self.sample_rate, max_samples=max_samples, info=_info(entry))
        except AudioError as error:
            raise ManifestError(self.manifest, entry.line, entry.path, error.reason) from None
        # Pin the length to the header's promise (the resampler may differ by a sample): the
        # sampler planned this item's tokens from it.
        expected = resampled_length(entry.frames, entry.file_rate, self.sample_rate)
        expected = expected if max_samples is None else min(expected, max_samples)
        if wave.shape[0] != expected:
            wave = np.pad(wave[:expected], (0, max(0, expected - wave.shape[0])))
        return wave

    def spectrogram(self, index: int, normalize: tuple[float, float] | None = None) -> torch.Tensor:
        """Features ``[1, num_mel_bins, T]`` of item ``index`` with the given ``normalize``
        (``__getitem__`` uses the dataset's own). Raises ManifestError for unusable audio."""
        return self._features(*self.locate(index), normalize)

    def _features(self, entry: ManifestEntry, quality: float, normalize: tuple[float, float] | None) -> torch.Tensor:
        wave = self.load_waveform(entry, self._max_samples(quality))
        return audio_to_spectrogram(
            torch.from_numpy(wave), self.sample_rate, quality, num_mel_bins=self.num_mel_bins,
            patch_size=self.patch_size, max_frames=self.max_frames, normalize=normalize,
        )

    def __getitem__(self, index: int):
        entry, quality = self.locate(index)
        return self._features(entry, quality, self.normalize), self.label_of(entry)


def _manifest_path(manifest: object) -> str:
    path = check_path("manifest", manifest)
    if os.path.isdir(path):
        raise ValueError(f"manifest {path} is a directory; pass a .csv or .jsonl file that lists the audio")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path} does not exist")
    return path


def _info(entry: ManifestEntry) -> AudioInfo:
    return AudioInfo(entry.frames, entry.file_rate, entry.channels)


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
