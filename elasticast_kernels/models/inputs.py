"""Host-side input handling of the ElasticAST forward: checks, token dropout counts, grouping.

Everything here works on Python ints and the spectrograms' shapes, never on their values, so it
costs no device sync.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from elasticast_kernels.layout import MAX_TOTAL_TOKENS


def flatten_samples(batched_samples: object, group_samples: bool) -> tuple[list[torch.Tensor], list[list[int]] | None]:
    """The samples as one flat list, plus the caller's rows when ``group_samples=False``.

    Raises:
        TypeError: ``batched_samples`` is not a list of tensors (or of lists of tensors).
        ValueError: it is empty, or holds an empty row.
    """
    if not isinstance(batched_samples, (list, tuple)):
        raise TypeError(
            f"batched_samples must be a list of [C, F, T] tensors or a PackedBatch, got {type(batched_samples).__name__}"
        )
    if group_samples:
        specs, rows = list(batched_samples), None
    else:
        specs, rows = [], []
        for r, row in enumerate(batched_samples):
            if not isinstance(row, (list, tuple)) or len(row) == 0:
                raise ValueError(f"with group_samples=False, batched_samples[{r}] must be a non-empty list of samples")
            rows.append(list(range(len(specs), len(specs) + len(row))))
            specs.extend(row)
    if not specs:
        raise ValueError("batched_samples is empty")
    for i, spec in enumerate(specs):
        if not isinstance(spec, torch.Tensor):
            raise TypeError(f"sample {i} must be a torch.Tensor, got {type(spec).__name__}")
    return specs, rows


def patch_grid(
    specs: Sequence[torch.Tensor], channels: int, patch_size: int, max_freq_patches: int
) -> list[tuple[int, int]]:
    """``(F/p, T/p)`` of every sample.

    Raises:
        ValueError: a sample is not ``[channels, F, T]``, F or T is not a positive multiple of
            ``patch_size``, F exceeds the frequency positional table, or the samples disagree
            on dtype or device.
    """
    grid = []
    first = specs[0]
    for i, spec in enumerate(specs):
        if spec.dim() != 3 or spec.shape[0] != channels:
            raise ValueError(f"sample {i} must be [C={channels}, F, T], got shape {tuple(spec.shape)}")
        if spec.dtype != first.dtype or spec.device != first.device:
            raise ValueError(
                f"sample {i} is {spec.dtype} on {spec.device} but sample 0 is {first.dtype} on {first.device}"
            )
        _, freq, time = spec.shape
        if freq == 0 or time == 0 or freq % patch_size or time % patch_size:
            raise ValueError(
                f"sample {i} has F={freq}, T={time}; both must be positive multiples of patch_size={patch_size} "
                "(crop T to a multiple of the patch size)"
            )
        if freq // patch_size > max_freq_patches:
            raise ValueError(
                f"sample {i} has F={freq} mel bins, more than sample_size allows ({max_freq_patches * patch_size})"
            )
        grid.append((freq // patch_size, time // patch_size))
    return grid


def token_keep_counts(
    lengths: Sequence[int],
    *,
    training: bool,
    token_dropout_prob: float | None,
    random_token_dropout: float,
    eval_token_dropout: float,
) -> list[int] | None:
    """How many tokens each sample keeps, or None when no token dropout applies.

    Training: ``max(1, int(n * (1 - p)))`` with the fixed ``p = token_dropout_prob``, or with
    ``p ~ U(0, random_token_dropout)`` drawn per sample (torch's CPU generator) when that is > 0.
    Eval: ``max(1, int(n * eval_token_dropout))`` when ``eval_token_dropout > 0`` (the fraction KEPT).
    """
    if training:
        if random_token_dropout > 0:
            probs = [float(torch.rand(())) * random_token_dropout for _ in lengths]
        elif token_dropout_prob:
            probs = [float(token_dropout_prob)] * len(lengths)
        else:
            return None
        return [max(1, int(n * (1 - p))) for n, p in zip(lengths, probs)]
    if eval_token_dropout > 0:
        return [max(1, int(n * eval_token_dropout)) for n in lengths]
    return None


def check_group_limit(lengths: Sequence[int], group_max_seq_len: int) -> None:
    """Raises ValueError naming the first sample with more tokens than ``group_max_seq_len``."""
    is_int = isinstance(group_max_seq_len, (int, np.integer)) and not isinstance(group_max_seq_len, bool)
    if not is_int or not 1 <= group_max_seq_len <= MAX_TOTAL_TOKENS:
        raise ValueError(
            f"group_max_seq_len must be an int in [1, {MAX_TOTAL_TOKENS}] (cu_seqlens are int32), got {group_max_seq_len!r}"
        )
    for i, n in enumerate(lengths):
        if n > group_max_seq_len:
            raise ValueError(
                f"sample {i} has {n} tokens, more than group_max_seq_len={group_max_seq_len}; "
                "pass a larger group_max_seq_len or crop the sample"
            )
