"""What the predictor returns per input: scores, top-k labels, windows, the embedding, or the error."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from elasticast_kernels._checks import check_int

__all__ = ["Prediction", "WindowScores", "top_k"]


def top_k(scores: np.ndarray, classes: tuple[str, ...], k: int) -> list[tuple[str, float]]:
    """The ``k`` best ``(label, score)`` pairs, best first (ties: the lower class index first)."""
    check_int("k", k, 1)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(classes[i], float(scores[i])) for i in order]


@dataclass
class WindowScores:
    """One window of a file scored on its own: ``[start_s, end_s)`` and ``scores [num_classes]``."""

    start_s: float
    end_s: float
    scores: np.ndarray


@dataclass
class Prediction:
    """The result for one input.

    Attributes:
        source: the path, or the waveform's name.
        duration_s: length of the audio in seconds (0.0 when it could not be read).
        classes: label names in score order.
        scores: float32 ``[num_classes]``: softmax probabilities, or per-class sigmoids when the
            model is multi-label; in window mode the mean of the windows' scores. None on error.
        windows: window mode: every window's scores, in time order; whole mode: None.
        embedding: float32 ``[dim]`` pooled embedding (what the head sees; in window mode the
            mean over the windows) when asked for, else None.
        error: why the input could not be used (None when it was).
    """

    source: str
    duration_s: float
    classes: tuple[str, ...]
    scores: np.ndarray | None = None
    windows: list[WindowScores] | None = None
    embedding: np.ndarray | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` best ``(label, score)`` pairs of the file, best first.

        Raises:
            ValueError: the input failed (``error`` is set), or ``k < 1``.
        """
        if self.scores is None:
            raise ValueError(f"{self.source} has no scores: {self.error}")
        return top_k(self.scores, self.classes, k)

    def to_dict(self, k: int = 5) -> dict:
        """JSON-ready: ``path``, ``duration_s``, ``top`` (``[{"label", "score"}]``) and, in window
        mode, ``windows`` (``[{"start_s", "end_s", "top"}]``)."""
        record = {"path": self.source, "duration_s": round(self.duration_s, 6),
                  "top": [{"label": label, "score": score} for label, score in self.top(k)]}
        if self.windows is not None:
            record["windows"] = [
                {"start_s": round(w.start_s, 6), "end_s": round(w.end_s, 6),
                 "top": [{"label": label, "score": score} for label, score in top_k(w.scores, self.classes, k)]}
                for w in self.windows
            ]
        return record
