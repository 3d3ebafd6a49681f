"""Pure-Python packing strategies, used when the native extension is missing.

Each function mirrors its C++ twin in ``csrc/pack_plans.cpp`` rule for rule (including the tie
rules documented in ``csrc/pack_plans.h``), so both give identical plans; the tests check that.
They take a validated int64 array and return ``pack_of`` (a list: pack id of every sample, packs
numbered in the order they are opened) and the number of packs. A length above ``max_tokens``
gets a pack of its own, where each strategy's rule puts it (see ``csrc/pack_plans.h``).
"""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from functools import reduce

import numpy as np

# Same limits as the C++ histogram packer (kHistogramMaxUnits, kHistogramWorkBudget).
HISTOGRAM_MAX_UNITS = 1 << 16
HISTOGRAM_WORK_BUDGET = 1 << 24

Assignment = tuple[list[int], int]


def _desc_order(lengths: np.ndarray) -> np.ndarray:
    """Indices by length, longest first, ties by ascending index."""
    return np.argsort(-lengths, kind="stable")


class _LifoBuckets:
    """Items in LIFO stacks keyed by an integer, with 'smallest key >= x' lookups."""

    def __init__(self) -> None:
        self._stacks: dict[int, list[int]] = {}
        self._keys: list[int] = []  # sorted keys of non-empty stacks

    def push(self, key: int, item: int) -> None:
        stack = self._stacks.get(key)
        if stack is None:
            self._stacks[key] = [item]
            insort(self._keys, key)
        else:
            stack.append(item)

    def pop(self, key: int) -> int:
        stack = self._stacks[key]
        item = stack.pop()
        if not stack:
            del self._stacks[key]
            del self._keys[bisect_left(self._keys, key)]
        return item

    def next_ge(self, key: int) -> int:
        k = bisect_left(self._keys, key)
        return self._keys[k] if k < len(self._keys) else -1


def next_fit(lengths: np.ndarray, max_tokens: int) -> Assignment:
    pack_of, used, pack = [], 0, -1
    for length in lengths.tolist():
        if pack < 0 or used + length > max_tokens:
            pack, used = pack + 1, 0
        used += length
        pack_of.append(pack)
    return pack_of, pack + 1


def first_fit_decreasing(lengths: np.ndarray, max_tokens: int) -> Assignment:
    n = len(lengths)
    pack_of = [-1] * n
    if n == 0:
        return pack_of, 0
    leaves = 1
    while leaves < n:
        leaves *= 2
    room = [max_tokens] * (2 * leaves)  # max segment tree over the room of packs
    num_packs = 0
    values = lengths.tolist()
    for i in _desc_order(lengths).tolist():
        length, node = values[i], 1
        if length > max_tokens:  # oversize (they come first): alone in the next unopened pack
            node = leaves + num_packs
            room[node] = 0
        else:
            while node < leaves:
                node = 2 * node if room[2 * node] >= length else 2 * node + 1
            room[node] -= length
        pack_of[i] = node - leaves
        num_packs = max(num_packs, node - leaves + 1)
        node //= 2
        while node:
            room[node] = max(room[2 * node], room[2 * node + 1])
            node //= 2
    return pack_of, num_packs


def best_fit_decreasing(lengths: np.ndarray, max_tokens: int) -> Assignment:
    pack_of = [-1] * len(lengths)
    by_room, num_packs = _LifoBuckets(), 0
    values = lengths.tolist()
    for i in _desc_order(lengths).tolist():
        length = values[i]
        room = by_room.next_ge(length)
        if room >= 0:
            pack, left = by_room.pop(room), room - length
        else:
            pack, left = num_packs, max_tokens - length
            num_packs += 1
        pack_of[i] = pack
        if left > 0:
            by_room.push(left, pack)
    return pack_of, num_packs


def best_fit_window(lengths: np.ndarray, max_tokens: int, window: int) -> Assignment:
    n = len(lengths)
    pack_of = [-1] * n
    values = lengths.tolist()
    distinct = sorted(set(values))
    rank_of = {v: r for r, v in enumerate(distinct)}
    pending: list[deque[int]] = [deque() for _ in distinct]  # per rank, in index order
    pending_ranks: list[int] = []  # sorted ranks with pending samples
    taken = [False] * n
    state = {"stream": 0, "pending": 0}

    def top_up() -> None:
        while state["pending"] < window and state["stream"] < n:
            i = state["stream"]
            r = rank_of[values[i]]
            if not pending[r]:
                insort(pending_ranks, r)
            pending[r].append(i)
            state["stream"] += 1
            state["pending"] += 1

    def take(r: int, pack: int) -> int:
        i = pending[r].popleft()
        if not pending[r]:
            del pending_ranks[bisect_left(pending_ranks, r)]
        state["pending"] -= 1
        taken[i] = True
        pack_of[i] = pack
        top_up()
        return values[i]

    top_up()
    num_packs, oldest = 0, 0
    while state["pending"] > 0:
        pack, num_packs = num_packs, num_packs + 1
        while taken[oldest]:
            oldest += 1
        room = max_tokens - take(rank_of[values[oldest]], pack)
        while room > 0:
            limit = bisect_right(distinct, room) - 1
            k = bisect_right(pending_ranks, limit) - 1  # longest pending length <= room
            if k < 0:
                break
            # Gap-aware best fit (see best_fit_window in csrc/pack_plans.cpp).
            chosen = pending_ranks[k]
            for j in range(k, -1, -1):
                r = pending_ranks[j]
                gap = room - distinct[r]
                if gap == 0:
                    chosen = r
                    break
                other = pending_ranks[0]
                if other == r and len(pending[r]) == 1:
                    other = pending_ranks[1] if len(pending_ranks) > 1 else -1
                if other >= 0 and gap >= distinct[other]:
                    chosen = r
                    break
            room -= take(chosen, pack)
    return pack_of, num_packs


def _exact_fill_patterns(value: list[int], left: list[int], max_tokens: int, groups: list[list[int]]) -> None:
    """Phase 1 of the histogram packer; see exact_fill_patterns in csrc/pack_plans.cpp."""
    types = len(value)
    first = 0
    while first < types and value[first] > max_tokens:  # oversize lengths are left to phase 2
        first += 1
    if first == types:
        return
    unit = reduce(math.gcd, value[first:], max_tokens)
    cap = max_tokens // unit
    if cap > HISTOGRAM_MAX_UNITS:
        return
    size = [v // unit for v in value]
    budget = HISTOGRAM_WORK_BUDGET
    reach_by = [-1] * (cap + 1)
    used = [0] * (cap + 1)
    while True:
        while first < types and left[first] == 0:
            first += 1
        if first == types:
            return
        room = cap - size[first]
        active = sum(1 for t in range(first, types) if left[t] > 0 and size[t] <= room)
        work = (room + 1) * active
        if work > budget:
            return
        budget -= work

        left[first] -= 1
        for s in range(room + 1):
            reach_by[s] = -1
        reach_by[0] = types  # sentinel: the empty sum
        for t in range(first, types):
            if reach_by[room] >= 0:
                break
            length, avail = size[t], left[t]
            if avail == 0 or length > room:
                continue
            for s in range(length, room + 1):
                if reach_by[s] >= 0 or reach_by[s - length] < 0:
                    continue
                copies = used[s - length] + 1 if reach_by[s - length] == t else 1
                if copies <= avail:
                    reach_by[s] = t
                    used[s] = copies
        left[first] += 1

        total = room
        while reach_by[total] < 0:
            total -= 1
        need: dict[int, int] = {first: 1}
        while total > 0:
            t = reach_by[total]
            need[t] = need.get(t, 0) + 1
            total -= size[t]
        repeat = min(left[t] // c for t, c in need.items())
        parent = -1
        for t in sorted(need):
            left[t] -= repeat * need[t]
            groups.append([parent, t, need[t], 0])
            parent = len(groups) - 1
        groups[parent][3] = repeat


def _group_best_fit(value: list[int], left: list[int], max_tokens: int, groups: list[list[int]]) -> None:
    """Phase 2 of the histogram packer; see group_best_fit in csrc/pack_plans.cpp."""
    by_room = _LifoBuckets()

    def open_group(parent: int, rank: int, copies: int, packs: int, room: int) -> None:
        groups.append([parent, rank, copies, packs])
        if room > 0:
            by_room.push(room, len(groups) - 1)

    for rank, length in enumerate(value):
        todo, left[rank] = left[rank], 0
        if length > max_tokens:  # oversize: one pack per sample
            if todo > 0:
                open_group(-1, rank, 1, todo, 0)
            continue
        while todo > 0:
            room = by_room.next_ge(length)
            if room < 0:
                per_pack = min(max_tokens // length, todo)
                open_group(-1, rank, per_pack, todo // per_pack, max_tokens - per_pack * length)
                if todo % per_pack:
                    open_group(-1, rank, todo % per_pack, 1, max_tokens - (todo % per_pack) * length)
                break
            g = by_room.pop(room)
            per_pack = min(room // length, todo)
            packs = min(groups[g][3], todo // per_pack)
            if packs > 0:
                groups[g][3] -= packs
                todo -= packs * per_pack
                open_group(g, rank, per_pack, packs, room - per_pack * length)
            if 0 < todo < per_pack and groups[g][3] > 0:
                groups[g][3] -= 1
                open_group(g, rank, todo, 1, room - todo * length)
                todo = 0
            if groups[g][3] > 0:
                by_room.push(room, g)


def histogram(lengths: np.ndarray, max_tokens: int) -> Assignment:
    order = _desc_order(lengths)
    value_desc, count = np.unique(lengths, return_counts=True)
    value, count = value_desc[::-1].tolist(), count[::-1].tolist()  # longest first
    begin = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64).tolist() if count else []

    groups: list[list[int]] = []  # [parent, rank, copies, count]
    left = list(count)
    _exact_fill_patterns(value, left, max_tokens, groups)
    _group_best_fit(value, left, max_tokens, groups)

    pack_of = [-1] * len(lengths)
    order_list = order.tolist()
    nxt = list(begin)
    num_packs = 0
    for g, (_, _, _, packs) in enumerate(groups):
        for _ in range(packs):
            pack, num_packs = num_packs, num_packs + 1
            h = g
            while h >= 0:
                parent, rank, copies, _ = groups[h]
                for pos in range(nxt[rank], nxt[rank] + copies):
                    pack_of[order_list[pos]] = pack
                nxt[rank] += copies
                h = parent
    return pack_of, num_packs


def finalize(pack_of: list[int], num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, offsets) from a per-sample pack assignment; ascending index inside each pack."""
    packs = np.asarray(pack_of, dtype=np.int64)
    order = np.argsort(packs, kind="stable").astype(np.int64)
    offsets = np.zeros(num_packs + 1, dtype=np.int64)
    np.cumsum(np.bincount(packs, minlength=num_packs), out=offsets[1:])
    return order, offsets
