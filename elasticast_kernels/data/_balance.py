"""Greedy token balancing used by the samplers: split packs among ranks, and a rank's packs among steps.

Longest-processing-time-first with cardinality bounds: items (packs) go, largest first, to the
group (rank or step) with the fewest tokens so far that still has room, while making sure every
group ends with at least ``min_items``. Pure numpy/heapq, deterministic given the input order.
"""
from __future__ import annotations

import heapq

import numpy as np


def balanced_groups(tokens: np.ndarray, num_groups: int, min_items: int, max_items: int) -> list[list[int]]:
    """Assign items to ``num_groups`` groups, each of ``min_items`` .. ``max_items`` items, balancing token sums.

    Args:
        tokens: int64 ``[num_items]`` token count of each item.
        num_groups, min_items, max_items: need ``num_groups * min_items <= num_items <= num_groups * max_items``.

    Returns:
        Per group, the item indices it received, largest item first. Ties between equal token
        counts keep the input order (a stable sort), so a shuffled input gives a shuffled outcome.
    """
    num_items = int(tokens.shape[0])
    if not num_groups * min_items <= num_items <= num_groups * max_items:
        raise ValueError(
            f"cannot put {num_items} items into {num_groups} groups of {min_items}..{max_items} items"
        )
    order = np.argsort(-tokens, kind="stable")
    groups: list[list[int]] = [[] for _ in range(num_groups)]
    totals = [0] * num_groups
    # Heap of (tokens so far, group) over groups with room; ties go to the lower group id.
    open_heap = [(0, g) for g in range(num_groups)]
    deficit = num_groups * min_items  # items still owed to groups below min_items
    deficit_heap: list[tuple[int, int]] | None = None
    for position, item in enumerate(order.tolist()):
        remaining = num_items - position
        if deficit_heap is None and remaining == deficit:
            # From here on every item must go to a group that is still short of min_items.
            deficit_heap = [(totals[g], g) for g in range(num_groups) if len(groups[g]) < min_items]
            heapq.heapify(deficit_heap)
        heap = deficit_heap if deficit_heap is not None else open_heap
        _, group = heapq.heappop(heap)  # each group sits in the heap in use at most once
        groups[group].append(item)
        totals[group] += int(tokens[item])
        if len(groups[group]) <= min_items:
            deficit -= 1
        limit = min_items if deficit_heap is not None else max_items
        if len(groups[group]) < limit:
            heapq.heappush(heap, (totals[group], group))
    return groups


def split_pack(pack: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split one pack (>= 2 samples) into two with near-equal token sums (greedy, largest first).

    Both halves keep the original relative order of their samples.
    """
    order = np.argsort(-lengths[pack], kind="stable")
    side = np.zeros(pack.shape[0], dtype=bool)
    sums = [0, 0]
    for position in order.tolist():
        target = 0 if sums[0] <= sums[1] else 1
        side[position] = bool(target)
        sums[target] += int(lengths[pack[position]])
    return pack[~side], pack[side]
