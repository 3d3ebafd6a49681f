"""Benchmark workloads: deterministic, in range, and at the paper's token arithmetic."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from elasticast_kernels.bench.workloads import QUALITY_MULTIPLIERS, WORKLOADS, lengths_for, make_workload

SECONDS = {"voxceleb": (4.0, 20.0), "epic": (0.5, 30.0), "audioset": (1.0, 10.0), "uniform": (1.0, 20.0),
           "quality": (2.0, 12.5)}


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_is_deterministic(name):
    a, b = make_workload(name, 600, seed=3), make_workload(name, 600, seed=3)
    np.testing.assert_array_equal(a.frames, b.frames)
    if name != "quality":  # the quality set is fixed by construction
        assert not np.array_equal(a.frames, make_workload(name, 600, seed=4).frames)


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_is_in_range(name):
    wl = make_workload(name, 3000, seed=0)
    low, high = SECONDS[name]
    assert wl.num_clips == 3000
    assert (wl.frames % 16 == 0).all() and (wl.frames >= 16).all()
    # Cropping to a multiple of 16 frames removes at most 0.15 s.
    assert wl.seconds.min() >= low - 0.16 and wl.seconds.max() <= high
    np.testing.assert_array_equal(wl.tokens, 8 * (wl.frames // 16))
    assert (wl.tokens <= 2048).all()


def test_workload_shapes_match_the_descriptions():
    vox = make_workload("voxceleb", 20000).seconds
    assert 7.5 < vox.mean() < 8.5
    audioset = make_workload("audioset", 20000).seconds
    assert 0.85 < np.mean(audioset > 9.9) < 0.95
    epic = make_workload("epic", 20000).seconds
    assert np.median(epic) < epic.mean()  # heavy right tail
    quality = make_workload("quality", 12)
    expected = [8 * ((int(1000 / q) // 16)) for q in QUALITY_MULTIPLIERS] * 2
    assert quality.tokens.tolist() == expected


def test_steps_and_spectrograms():
    wl = make_workload("epic", 30, seed=1)
    assert wl.step(0, 12).tolist() == list(range(12))
    assert wl.step(2, 12).tolist() == [24, 25, 26, 27, 28, 29, 0, 1, 2, 3, 4, 5]
    specs = wl.spectrograms([3, 5])
    assert [tuple(s.shape) for s in specs] == [(1, 128, int(wl.frames[3])), (1, 128, int(wl.frames[5]))]
    assert torch.equal(specs[1], wl.spectrograms([5])[0])
    assert wl.spectrograms([3], dtype=torch.float16)[0].dtype == torch.float16
    np.testing.assert_array_equal(lengths_for("epic", 30, 1), wl.tokens)


@pytest.mark.parametrize("bad, error", [(dict(name="librispeech"), ValueError), (dict(name="voxceleb", num_clips=0), ValueError),
                                        (dict(name="voxceleb", num_clips=2.5), TypeError)])
def test_workload_errors(bad, error):
    with pytest.raises(error, match="workload|num_clips"):
        make_workload(**bad)
