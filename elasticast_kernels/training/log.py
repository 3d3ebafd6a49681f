"""A JSON-lines metrics log that a resumed run continues without duplicated steps."""
from __future__ import annotations

import json
import math
import os
from typing import Any

__all__ = ["MetricsLog"]


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
