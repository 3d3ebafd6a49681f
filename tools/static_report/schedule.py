"""Grid-schedule simulation: how busy a launch keeps the SMs, from loop trip counts alone.

A launch is a list of programs (CTAs) in the order the hardware hands them out. Each costs its
main-loop trip count plus a fixed prologue/epilogue (in loop iterations); a program on a spare
slot exits at once and costs little. The programs are list-scheduled in order onto
``sms x ctas_per_sm`` slots (each takes the slot that frees first, as the block scheduler does),
and the busy fraction is ``total cost / (makespan x slots)``: 1.0 means no slot idles before the
last program ends.

Two launch orders are modelled, matching the varlen kernels' ``GRID_ORDER``:
  ``slots_then_heads``            (up to 9b590a3) axis 0 = block slots in sample order, axis 1 = heads
  ``heads_fastest_longest_first`` heads fastest, samples by decreasing length
Both use the slot layout of the kernels' docstring: sample ``j`` (in the order above) owns slots
``[j + c[j] // BLOCK, j + 1 + c[j + 1] // BLOCK)`` with ``c`` the cumulative lengths in that order.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

PROLOGUE_COST = 1.0  # loading the program's own tile and writing its output, in loop iterations
SPARE_COST = 0.25  # a slot past its sample's end: locate the sample and exit
ORDERS = ("slots_then_heads", "heads_fastest_longest_first")


@dataclass(frozen=True)
class Program:
    sample: int
    head: int
    block: int | None  # index of the program's block in its sample; None for a spare slot


def _slot_blocks(lengths: Sequence[int], block: int) -> list[tuple[int, int | None]]:
    """(position in ``lengths``, block index or None) for every slot of the no-sync layout."""
    starts = [0]
    for length in lengths:
        starts.append(starts[-1] + length)
    num_slots = starts[-1] // block + len(lengths)
    out = []
    sample = 0
    for slot in range(num_slots):
        while sample + 1 < len(lengths) and sample + 1 + starts[sample + 1] // block <= slot:
            sample += 1
        index = slot - sample - starts[sample] // block
        begin = starts[sample] + index * block
        out.append((sample, index if begin < starts[sample + 1] else None))
    return out


def launch_order(lengths: Sequence[int], heads: int, block: int, order: str) -> list[Program]:
    """Programs of one launch over samples of ``lengths`` (tokens), in hardware dispatch order.

    Raises:
        ValueError: unknown ``order``, or a non-positive ``heads``/``block``.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if heads < 1 or block < 1:
        raise ValueError(f"heads and block must be positive, got {heads} and {block}")
    if order == "slots_then_heads":
        slots = _slot_blocks(lengths, block)
        return [Program(s, h, b) for h in range(heads) for s, b in slots]
    ranked = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep sample order
    slots = _slot_blocks([lengths[i] for i in ranked], block)
    return [Program(ranked[s], h, b) for s, b in slots for h in range(heads)]


def trip_count(kernel: str, length: int, block: int, block_m: int, block_n: int,
               window: tuple[int, int] = (-1, -1), length_k: int | None = None) -> int:
    """Main-loop iterations of the program owning block ``block`` (in launch order) of a sample of
    ``length`` queries and ``length_k`` keys (default: self-attention): the kernels' own loop
    bounds (`program_trips`, which tests check against the kernels' recorded trips).

    fwd/dq programs own BLOCK_M queries and step over keys by BLOCK_N; dkdv programs own BLOCK_N
    keys and step over queries by BLOCK_M. Under a right-bounded window (causal) fwd/dq hand
    blocks out last-first.
    """
    from elasticast_kernels.ops.varlen_attention_kernels import program_trips

    return program_trips(kernel, length, length if length_k is None else length_k, block, block_m, block_n, window)


def list_schedule(costs: Sequence[float], slots: int) -> float:
    """Makespan of running ``costs`` in order on ``slots`` identical slots (each to the first free one)."""
    if slots < 1:
        raise ValueError(f"slots must be positive, got {slots}")
    free = [(0.0, i) for i in range(slots)]
    heapq.heapify(free)
    end = 0.0
    for cost in costs:
        start, slot = heapq.heappop(free)
        finish = start + cost
        end = max(end, finish)
        heapq.heappush(free, (finish, slot))
    return end


@dataclass(frozen=True)
class ScheduleResult:
    programs: int
    waves: float  # programs / slots
    busy_fraction: float
    makespan: float  # in loop iterations of one slot


def simulate(kernel: str, lengths: Sequence[int], heads: int, block_m: int, block_n: int,
             window: tuple[int, int], order: str, sms: int, ctas_per_sm: int) -> ScheduleResult:
    """Busy fraction of one launch of ``kernel`` ("fwd", "dq", "dkdv") on ``sms x ctas_per_sm`` slots
    (self-attention; ``window`` as the launchers take it, causal = ``(-1, 0)``)."""
    own = block_n if kernel == "dkdv" else block_m
    costs = []
    for program in launch_order(lengths, heads, own, order):
        if program.block is None:
            costs.append(SPARE_COST)
        else:
            trips = trip_count(kernel, lengths[program.sample], program.block, block_m, block_n, window)
            costs.append(trips + PROLOGUE_COST)
    slots = sms * max(1, ctas_per_sm)
    makespan = list_schedule(costs, slots)
    busy = sum(costs) / (makespan * slots) if makespan > 0 else 1.0
    return ScheduleResult(len(costs), len(costs) / slots, busy, makespan)
