"""Plain pure-Python packers, kept as speed baselines for the benchmarks (not used by the package).

``textbook_best_fit_decreasing`` is the straightforward best fit a Python user would write: open
packs in a sorted list of (room, pack) pairs, ``bisect`` to find the tightest pack that fits,
``insort`` to put it back. The package's own Python fallback
(``elasticast_kernels.packing._fallback.best_fit_decreasing``) is already a tuned variant (LIFO
buckets per integer room); the C++ strategies are compared against both.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from typing import Sequence

import numpy as np


def textbook_best_fit_decreasing(lengths: Sequence[int], max_tokens: int) -> list[np.ndarray]:
    """Best fit decreasing in plain Python; returns the bins (sample indices, ascending).

    Ties go to the pack with the lower id, so bins can differ from ``pack_lengths`` (which has its
    own documented tie rule) while the efficiency is the same in practice.
    """
    lengths = [int(n) for n in lengths]
    open_packs: list[tuple[int, int]] = []  # sorted (room, pack)
    pack_of = [0] * len(lengths)
    num_packs = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        k = bisect_left(open_packs, (n, -1))
        if k < len(open_packs):
            room, pack = open_packs.pop(k)
        else:
            room, pack, num_packs = max_tokens, num_packs, num_packs + 1
        pack_of[i] = pack
        if room > n:
            insort(open_packs, (room - n, pack))
    bins: list[list[int]] = [[] for _ in range(num_packs)]
    for i, pack in enumerate(pack_of):
        bins[pack].append(i)
    return [np.asarray(b, dtype=np.int64) for b in bins]
