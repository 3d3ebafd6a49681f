"""Evaluation scores: accuracy (single-label) and mean average precision (multi-label, AudioSet-style)."""
from __future__ import annotations

import torch

__all__ = ["accuracy", "average_precision", "mean_average_precision"]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max is the label.

    Args:
        logits: ``[N, num_classes]``; labels: int64 ``[N]``.

    Raises:
        ValueError: shapes disagree or ``N == 0``.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("accuracy of zero samples is undefined")
    return float((logits.argmax(dim=1) == labels).double().mean())


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class average precision (area under the step precision-recall curve, as scikit-learn's).

    Args:
        scores: ``[N, C]`` (any real scores; higher = more likely). targets: ``[N, C]`` of 0/1.

    Returns:
        float64 ``[C]``; NaN for a class without positives. Tied scores count as one threshold.

    Raises:
        ValueError: shapes disagree.
    """
    if scores.shape != targets.shape or scores.dim() != 2:
        raise ValueError(f"scores and targets must both be [N, C], got {tuple(scores.shape)} and {tuple(targets.shape)}")
    scores, targets = scores.double(), (targets > 0.5).double()
    result = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    for column in range(scores.shape[1]):
        positives = targets[:, column].sum()
        if positives == 0:
            continue
        order = torch.argsort(scores[:, column], descending=True, stable=True)
        sorted_scores, hits = scores[order, column], targets[order, column]
        true_pos = torch.cumsum(hits, 0)
        # Only the last row of a run of tied scores is a threshold.
        last_of_tie = torch.ones_like(sorted_scores, dtype=torch.bool)
        last_of_tie[:-1] = sorted_scores[1:] != sorted_scores[:-1]
        precision = true_pos[last_of_tie] / (torch.nonzero(last_of_tie).squeeze(1) + 1)
        recall = true_pos[last_of_tie] / positives
        recall_gain = torch.diff(recall, prepend=recall.new_zeros(1))
        result[column] = (precision * recall_gain).sum()
    return result


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean of :func:`average_precision` over the classes that have at least one positive (NaN if none)."""
    per_class = average_precision(scores, targets)
    present = per_class[~torch.isnan(per_class)]
    return float(present.mean()) if present.numel() else float("nan")
