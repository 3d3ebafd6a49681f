"""A picture of a long file: its top classes' window scores over time (``elasticast-predict --plot``).

Uses matplotlib's object API (a ``Figure`` rendered by Agg), never pyplot: no global state, no
display needed. matplotlib comes with the ``plot`` extra (and with ``bench``).
"""
from __future__ import annotations

import os

import numpy as np

from elasticast_kernels._optional import import_optional
from elasticast_kernels.inference.results import Prediction

__all__ = ["MAX_LINE_WINDOWS", "MAX_PLOTTED_CLASSES", "plot_windows"]

#: more classes than this are unreadable in one panel
MAX_PLOTTED_CLASSES = 8
#: up to this many windows, one line per class; beyond, a class x time heat map
MAX_LINE_WINDOWS = 60


def plot_windows(prediction: Prediction, path: str | os.PathLike, *, top: int = 5, multi_label: bool = False) -> None:
    """Draw the window scores of the file's ``top`` classes (by file score) against time, to ``path``
    (PNG, or any format matplotlib infers from the suffix): one line per class for up to
    ``MAX_LINE_WINDOWS`` windows, a heat map (a row per class, colour = score) for more.

    Raises:
        ValueError: ``prediction`` has no window scores (whole mode, or a failed input).
        ImportError: matplotlib is missing (the message names the extra).
    """
    if not prediction.ok or not prediction.windows:
        raise ValueError(f"{prediction.source}: no window scores to plot ({prediction.error or 'whole mode'})")
    figure_module = import_optional("matplotlib.figure", "drawing window scores (--plot)")
    windows = prediction.windows
    scores = np.stack([window.scores for window in windows])
    centres = np.array([(window.start_s + window.end_s) / 2 for window in windows])
    minutes = prediction.duration_s > 300
    times = centres / 60 if minutes else centres

    top = prediction.top(min(top, MAX_PLOTTED_CLASSES, len(prediction.classes)))
    length = windows[0].end_s - windows[0].start_s
    hop = windows[1].start_s - windows[0].start_s if len(windows) > 1 else length
    end = prediction.duration_s / 60 if minutes else prediction.duration_s
    unit = "min" if minutes else "s"
    score_name = "sigmoid score" if multi_label else "probability"

    figure = figure_module.Figure(figsize=(10, 4), layout="constrained")
    axes = figure.add_subplot()
    columns = [prediction.classes.index(label) for label, _ in top]
    if len(windows) <= MAX_LINE_WINDOWS:  # few windows: one line per class
        for (label, file_score), column in zip(top, columns):
            axes.plot(times, scores[:, column], marker="o", markersize=3, linewidth=1.2, label=f"{label} (file {file_score:.2f})")
        axes.set_ylabel(score_name)
        axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend(loc="upper right", fontsize="small", ncols=2 if len(top) > 4 else 1)
    else:  # hundreds of windows: lines would overlap into noise; one row per class instead
        image = axes.imshow(scores[:, columns].T, aspect="auto", interpolation="nearest", cmap="viridis",
                            vmin=0.0, vmax=1.0, extent=(times[0], times[-1], len(columns) - 0.5, -0.5))
        axes.set_yticks(range(len(columns)), [f"{label} ({file_score:.2f})" for label, file_score in top])
        figure.colorbar(image, ax=axes, label=score_name, pad=0.01)
    axes.set_title(f"{os.path.basename(prediction.source)}: {prediction.duration_s:.1f} s, "
                   f"{len(windows)} windows of {length:.2f} s every {hop:.2f} s (file score in brackets)", fontsize="medium")
    axes.set_xlabel(f"window centre ({unit})")
    axes.set_xlim(0, end)
    figure.savefig(os.fspath(path), dpi=120)
