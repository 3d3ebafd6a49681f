"""A JSON-lines metrics log that a resumed run continues without duplicated steps, and the running
totals its lines are computed from."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping

__all__ = ["MetricsLog", "RunningTotals"]


class MetricsLog:
    """Append one JSON object per line to ``path``.

    Args:
        path: the ``.jsonl`` file (its directory is created).
        resume_step: when resuming from a checkpoint of this step, drop the lines of the crashed
            run that came after it (their steps are trained again), keeping everything before.
            ``None``: start a new file.

    Non-finite floats are written as ``null`` (JSON has no NaN).
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        kept: list[str] = []
        if resume_step is not None and os.path.exists(self.path):
            with open(self.path) as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by the crash
                        continue
                    if record.get("step", 0) <= resume_step:
                        kept.append(json.dumps(record))
        with open(self.path, "w") as handle:
            handle.writelines(line + "\n" for line in kept)

    def write(self, **record: Any) -> None:
        """Append ``record`` as one line (flushed, so a crash loses at most the line being written)."""
        clean = {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                 for key, value in record.items()}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(clean) + "\n")


class RunningTotals:
    """Sums of named per-step totals (samples, tokens, loss sum, seconds, ...) since the last
    metrics line (:meth:`take`) and over the whole run (:attr:`run`).

    Args:
        keys: the names summed; :meth:`add` ignores other names in its mapping.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = tuple(keys)
        self.window = dict.fromkeys(self.keys, 0.0)
        self.run = dict.fromkeys(self.keys, 0.0)

    def add(self, values: Mapping[str, float] = {}, **more: float) -> None:  # noqa: B006 (read only)
        """Add this step's values (a mapping and/or keywords; every key of ``keys`` once)."""
        merged = {**values, **more}
        for key in self.keys:
            self.window[key] += float(merged[key])

    def take(self) -> dict[str, float]:
        """The window's sums; the window starts again (its sums join :attr:`run`)."""
        window = self.window
        for key in self.keys:
            self.run[key] += window[key]
        self.window = dict.fromkeys(self.keys, 0.0)
        return window
