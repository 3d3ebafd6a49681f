"""Lists of audio files to score: manifests (CSV or JSON lines with a ``path`` column).

Paths in a manifest are relative to the manifest's folder (or absolute). Other columns
(``label``, ...) are ignored, so a training manifest works as it is. Lines are read lazily, so a
manifest of millions of files costs no memory up front. A line that names no usable path is
reported as a :class:`BadLine` (manifest, line number, reason) in the stream, in order, and the
rest of the manifest goes on.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Iterator

__all__ = ["BadLine", "MANIFEST_SUFFIXES", "expand_inputs", "is_manifest", "read_manifest"]

#: file endings read as manifests; everything else is an audio file
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")


@dataclass(frozen=True)
class BadLine:
    """A manifest line (or a whole manifest, ``line=None``) that names no usable audio path."""

    manifest: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.manifest}" + (f", line {self.line}" if self.line is not None else "") + f": {self.reason}"


def is_manifest(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in MANIFEST_SUFFIXES


def read_manifest(manifest: str) -> Iterator[str | BadLine]:
    """The resolved audio paths of ``manifest`` in line order, with a :class:`BadLine` in place of
    every line that names none (and one for a manifest that cannot be read at all)."""
    base = os.path.dirname(os.path.abspath(manifest))
    try:
        records = _csv_records(manifest) if manifest.lower().endswith(".csv") else _jsonl_records(manifest)
        for line, record in records:
            if isinstance(record, BadLine):
                yield record
                continue
            path = record.get("path")
            if not isinstance(path, str) or not path.strip():
                yield BadLine(manifest, line, f"no 'path' (got {path!r})")
                continue
            yield os.path.join(base, path.strip())
    except UnicodeDecodeError as error:
        yield BadLine(manifest, None, f"not UTF-8 text ({error.reason} at byte {error.start})")
    except IsADirectoryError:
        yield BadLine(manifest, None, "is a directory, not a manifest")
    except FileNotFoundError:
        yield BadLine(manifest, None, "manifest not found")
    except (OSError, csv.Error) as error:
        yield BadLine(manifest, None, f"unreadable manifest ({error})")


def _csv_records(manifest: str):
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            yield 1, BadLine(manifest, 1, f"the CSV header needs a 'path' column, got {reader.fieldnames}")
            return
        for record in reader:
            if None in record:  # more fields than the header
                yield reader.line_num, BadLine(manifest, reader.line_num, "more fields than the header has columns")
            else:
                yield reader.line_num, record


def _jsonl_records(manifest: str):
    with open(manifest, encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                yield line, BadLine(manifest, line, f"not valid JSON ({error.msg})")
                continue
            if not isinstance(record, dict):
                yield line, BadLine(manifest, line, f"expected a JSON object, got {type(record).__name__}")
                continue
            yield line, record


def expand_inputs(arguments: list[str]) -> Iterator[str | BadLine]:
    """Command-line inputs -> audio paths: manifests expanded in place (see :func:`read_manifest`),
    everything else passed through as an audio path."""
    for argument in arguments:
        if is_manifest(argument):
            yield from read_manifest(argument)
        else:
            yield argument
