"""Evaluation scores: accuracy (single-label) and mean average precision (multi-label, AudioSet-style),
and :func:`evaluate`, which computes them over a loader of packed batches."""
from __future__ import annotations

import time
from typing import Iterable

import torch
from torch import nn

__all__ = ["accuracy", "average_precision", "mean_average_precision", "evaluate"]


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


def evaluate(model: nn.Module, batches: Iterable, *, multi_label: bool, device: torch.device | str = "cpu",
             autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Score ``model`` on labelled batches (``PackedBatch`` with ``labels``) in eval mode, on this process.

    Args:
        model: a plain (unwrapped, unsharded) classifier; its logits come back in input order.
        batches: e.g. a ``DataLoader`` over an eval ``ManifestDataset`` with a ``PackedCollator``.
        multi_label: score with :func:`mean_average_precision` (True) or :func:`accuracy`.
        device: where the model runs. autocast_dtype: e.g. ``torch.bfloat16`` on a GPU, or None.

    Returns:
        ``{"accuracy" or "mAP": ..., "samples": N, "samples_per_s": ...}``.

    Raises:
        ValueError: no batches (the scores of zero samples are undefined).
    """
    device = torch.device(device)
    outputs, targets, start = [], [], time.perf_counter()
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            with torch.autocast(device.type, autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                outputs.append(model(batch.to(device, non_blocking=True)).float().cpu())
            targets.append(batch.labels)
    if not outputs:
        raise ValueError("evaluate() got no batches")
    logits, labels = torch.cat(outputs), torch.cat(targets)
    score = {"mAP": mean_average_precision(logits, labels)} if multi_label else {"accuracy": accuracy(logits, labels)}
    return {**score, "samples": len(labels), "samples_per_s": len(labels) / (time.perf_counter() - start)}
