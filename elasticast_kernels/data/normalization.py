"""The feature normalisation ``(mean, std)`` of a training set, estimated from a sample of its clips.

AST-style models expect normalised log-mel features, ``(x - mean) / std``. The statistics are
accumulated in float64 per clip and merged (Chan et al.'s pairwise update), so neither the
memory nor the rounding grows with the number of frames. A clip whose audio or features are not
finite stops the estimate with an error naming the file: one NaN sample would otherwise turn
both numbers, and then every weight of the model, into NaN.
"""
from __future__ import annotations

import math

import numpy as np

from elasticast_kernels._checks import check_int

from .manifest import ManifestDataset, ManifestError

__all__ = ["estimate_normalization"]


def estimate_normalization(dataset: ManifestDataset, clips: int = 200, seed: int = 0) -> tuple[float, float]:
    """Mean and (unbiased) standard deviation of the unnormalised features of up to ``clips`` clips.

    The clips are a seeded random choice (``numpy.random.default_rng(seed)``), each at the
    dataset's first quality, read as training reads them (same crop, sample rate and mel bins);
    the dataset's own ``normalize`` is ignored.

    Args:
        dataset: the training :class:`ManifestDataset`.
        clips: how many clips to use (all of them when the dataset has fewer), >= 1.
        seed: non-negative int choosing the clips.

    Returns:
        ``(mean, std)`` as Python floats, ready for ``ManifestDataset(normalize=...)`` and
        ``FeatureSettings(normalize=...)``.

    Raises:
        TypeError / ValueError: bad ``clips`` or ``seed``.
        ManifestError: a chosen clip's audio does not decode or holds NaN/inf samples, or its
            features are not finite (e.g. samples so large that their power overflows float32);
            the message names the manifest line and the file.
        ValueError: every feature value is the same (std 0).
    """
    clips, seed = check_int("clips", clips, 1), check_int("seed", seed, 0)
    chosen = np.random.default_rng(seed).permutation(dataset.num_clips)[:clips]
    count, mean, m2 = 0, 0.0, 0.0
    for clip in chosen.tolist():
        values = dataset.spectrogram(clip).double().flatten()
        if not bool(values.isfinite().all()):
            entry, quality = dataset.locate(clip)
            raise ManifestError(dataset.manifest, entry.line, entry.path, f"its features at quality {quality:g} are "
                                "not finite (NaN or inf): check the audio's sample values")
        n, clip_mean = values.numel(), float(values.mean())
        clip_m2 = float(((values - clip_mean) ** 2).sum())
        delta, total = clip_mean - mean, count + n
        mean += delta * n / total
        m2 += clip_m2 + delta * delta * count * n / total
        count = total
    std = math.sqrt(m2 / max(count - 1, 1))
    if not std > 0:
        raise ValueError(f"the features of the {len(chosen)} chosen clips are all equal (std 0): "
                         "are the clips silent? normalisation needs some variation")
    return mean, std
