"""Writing predictions as they come: JSON lines, CSV rows, and an embeddings ``.npy`` file.

Each writer takes one :class:`~elasticast_kernels.inference.Prediction` at a time, so nothing
grows with the number of files except the embeddings file on disk.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from typing import IO

import numpy as np

from elasticast_kernels.inference.results import Prediction

__all__ = ["CsvWriter", "EmbeddingWriter", "JsonLinesWriter"]


class JsonLinesWriter:
    """One JSON object per file and line (:meth:`Prediction.to_dict`)."""

    def __init__(self, handle: IO[str], top_k: int) -> None:
        self.handle, self.top_k = handle, top_k

    def write(self, prediction: Prediction) -> None:
        self.handle.write(json.dumps(prediction.to_dict(self.top_k)) + "\n")


class CsvWriter:
    """One row per file: ``path, duration_s, label_1, score_1, ..., label_k, score_k`` (fewer
    pairs when the model has fewer than k classes)."""

    def __init__(self, handle: IO[str], top_k: int, num_classes: int) -> None:
        self.top_k = min(top_k, num_classes)
        self.writer = csv.writer(handle)
        header = ["path", "duration_s"]
        for rank in range(1, self.top_k + 1):
            header += [f"label_{rank}", f"score_{rank}"]
        self.writer.writerow(header)

    def write(self, prediction: Prediction) -> None:
        row: list = [prediction.source, f"{prediction.duration_s:.6f}"]
        for label, score in prediction.top(self.top_k):
            row += [label, f"{score:.6g}"]
        self.writer.writerow(row)


class EmbeddingWriter:
    """A float32 ``[files, dim]`` ``.npy`` file, row ``i`` for the ``i``-th written prediction.

    Rows go to a temporary file next to ``path`` as they come (memory does not grow with the
    number of files); :meth:`close` puts the ``.npy`` header (it needs the final row count) in
    front of them and renames the result to ``path``; :meth:`discard` removes the temporary file
    and writes nothing.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        handle, self._rows_path = tempfile.mkstemp(prefix=".embeddings-", suffix=".part", dir=folder)
        self._rows = os.fdopen(handle, "wb")
        self.count, self.dim = 0, None

    def write(self, embedding: np.ndarray) -> None:
        embedding = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
        if self.dim is None:
            self.dim = embedding.shape[0]
        self._rows.write(embedding.tobytes())
        self.count += 1

    def close(self) -> None:
        self._rows.close()
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                  "shape": (self.count, self.dim or 0)}
        try:
            with open(self._rows_path, "rb") as rows, open(self._rows_path + ".npy", "wb") as out:
                np.lib.format.write_array_header_1_0(out, header)
                shutil.copyfileobj(rows, out, 1 << 20)
            os.replace(self._rows_path + ".npy", self.path)
        finally:
            for leftover in (self._rows_path, self._rows_path + ".npy"):
                if os.path.exists(leftover):
                    os.remove(leftover)

    def discard(self) -> None:
        self._rows.close()
        if os.path.exists(self._rows_path):
            os.remove(self._rows_path)
