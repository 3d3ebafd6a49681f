"""Named, seeded workloads: the clip-length distributions the benchmarks run on.

Every workload is a set of clips described by their frame counts at the paper's settings:
100 frames per second, 128 mel bins, 16x16 patches, so a clip of ``frames`` frames (cropped down
to a multiple of 16, as the reference data loader does) has ``8 * (frames // 16)`` tokens.

Names:
  ``voxceleb``  speech, 4-20 s, mean about 8 s (4 s + a gamma(2, 2 s) tail, redrawn past 20 s)
  ``epic``      heavy-tailed 0.5-30 s (log-normal, median 3 s, redrawn outside the range)
  ``audioset``  mostly 10 s clips (90 %), the rest uniform in 1-10 s
  ``uniform``   uniform in 1-20 s
  ``quality``   the paper's time-resolution study: one set of 10 s clips, each at every
                multiplier q in (0.8, 1, 2, 3, 4, 5), i.e. ``1000 / q`` frames (clip-major order,
                so a 12-sample step holds two clips at all six resolutions)

The same name, clip count and seed always give the same clips.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from elasticast_kernels._checks import check_int

FRAMES_PER_SECOND = 100
MEL_BINS = 128
PATCH_SIZE = 16
SAMPLES_PER_STEP = 12
PACK_TOKENS = 2048
QUALITY_MULTIPLIERS = (0.8, 1.0, 2.0, 3.0, 4.0, 5.0)
WORKLOADS = ("voxceleb", "epic", "audioset", "uniform", "quality")


@dataclass(frozen=True)
class Workload:
    """A seeded set of clips.

    Attributes:
        name: one of ``WORKLOADS``.
        frames: int64 ``[num_clips]``, frames per clip, each a positive multiple of ``patch_size``.
        seed: the seed that drew it.
        mel_bins, patch_size: spectrogram height and patch side.
    """

    name: str
    frames: np.ndarray
    seed: int
    mel_bins: int = MEL_BINS
    patch_size: int = PATCH_SIZE

    @property
    def num_clips(self) -> int:
        return int(self.frames.shape[0])

    @property
    def tokens(self) -> np.ndarray:
        """int64 ``[num_clips]``: tokens per clip, ``(mel_bins / p) * (frames / p)``."""
        return (self.mel_bins // self.patch_size) * (self.frames // self.patch_size)

    @property
    def seconds(self) -> np.ndarray:
        return self.frames / FRAMES_PER_SECOND

    def step(self, index: int, samples_per_step: int = SAMPLES_PER_STEP) -> np.ndarray:
        """Clip indices of training step ``index`` (consecutive clips, wrapping around)."""
        start = (index * samples_per_step) % self.num_clips
        return (start + np.arange(samples_per_step)) % self.num_clips

    def step_tokens(self, index: int, samples_per_step: int = SAMPLES_PER_STEP) -> np.ndarray:
        return self.tokens[self.step(index, samples_per_step)]

    def spectrograms(
        self,
        indices: np.ndarray | list[int],
        *,
        channels: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> list[torch.Tensor]:
        """Random log-mel-like spectrograms ``[channels, mel_bins, frames[i]]`` for the given clips.

        Values are N(0, 1) drawn from a generator seeded by (seed, clip index), so a clip is the
        same tensor whichever step asks for it.
        """
        specs = []
        for i in indices:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
            spec = torch.randn(channels, self.mel_bins, int(self.frames[i]), generator=gen)
            specs.append(spec.to(device=device, dtype=dtype))
        return specs


def _redraw(draw, low: float, high: float, size: int) -> np.ndarray:
    """Draw ``size`` values with ``draw(n)``, redrawing those outside [low, high] (no clipping spikes)."""
    out = draw(size)
    bad = (out < low) | (out > high)
    while bad.any():
        out[bad] = draw(int(bad.sum()))
        bad = (out < low) | (out > high)
    return out


def _durations(name: str, num_clips: int, rng: np.random.Generator) -> np.ndarray:
    if name == "voxceleb":
        return _redraw(lambda n: 4.0 + rng.gamma(2.0, 2.0, n), 4.0, 20.0, num_clips)
    if name == "epic":
        return _redraw(lambda n: rng.lognormal(np.log(3.0), 1.0, n), 0.5, 30.0, num_clips)
    if name == "audioset":
        full = rng.random(num_clips) < 0.9
        return np.where(full, 10.0, rng.uniform(1.0, 10.0, num_clips))
    if name == "uniform":
        return rng.uniform(1.0, 20.0, num_clips)
    raise ValueError(f"workload must be one of {WORKLOADS}, got {name!r}")


def make_workload(name: str, num_clips: int = 1200, seed: int = 0) -> Workload:
    """Build the named workload with ``num_clips`` clips (for ``quality``: clips x multipliers).

    Raises:
        ValueError: unknown ``name`` or ``num_clips < 1``.
    """
    if name not in WORKLOADS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {name!r}")
    check_int("num_clips", num_clips, 1)
    rng = np.random.default_rng(seed)
    if name == "quality":
        # One clip set (10 s, 1000 frames at q=1); each clip appears at every multiplier.
        base_clips = max(1, -(-int(num_clips) // len(QUALITY_MULTIPLIERS)))
        base = np.full(base_clips, 10.0 * FRAMES_PER_SECOND)
        frames = np.floor(base[:, None] / np.asarray(QUALITY_MULTIPLIERS)[None, :]).reshape(-1)[: int(num_clips)]
    else:
        frames = np.floor(_durations(name, int(num_clips), rng) * FRAMES_PER_SECOND)
    # The data loader crops to a multiple of the patch size; keep at least one patch column.
    frames = np.maximum(PATCH_SIZE, (frames.astype(np.int64) // PATCH_SIZE) * PATCH_SIZE)
    return Workload(name=name, frames=frames.astype(np.int64), seed=seed)


def lengths_for(name: str, count: int, seed: int = 0) -> np.ndarray:
    """int64 token counts of ``count`` clips of the named workload (for packer benchmarks)."""
    return make_workload(name, count, seed).tokens
