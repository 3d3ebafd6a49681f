"""Read ``cuobjdump -sass`` text: instructions per function, loops, and what one main-loop iteration issues.

Pure text processing (no Triton, no GPU), so it is tested on a fixed snippet. One line of SASS::

    /*1830*/   @!P3 HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ;   /* 0x00e0... */

is an address, an optional predicate (``@P3``, ``@!UP0``, ``@!PT``) and an opcode with operands.
A loop is a branch to a lower address; its body is every instruction from the target to the
branch. Triton's pipelined kernels keep each ``for`` loop as one such range.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(@!?U?P[0-9T]+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")
_BRANCH_TARGET = re.compile(r"0x([0-9a-fA-F]+)")
_HGMMA = re.compile(r"^HGMMA\.(\d+)x(\d+)x(\d+)")
_HMMA = re.compile(r"^HMMA\.(16)(8)(\d+)")


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with modifiers, e.g. "HGMMA.64x64x16.F32.BF16"
    operands: str
    predicated: bool

    @property
    def base(self) -> str:
        """Opcode without modifiers ("FFMA", "HGMMA", "MUFU")."""
        return self.opcode.split(".", 1)[0]


@dataclass(frozen=True)
class Loop:
    """Instructions from a backward branch's target to the branch itself (both included)."""

    start: int
    end: int
    body: tuple[Instruction, ...] = field(repr=False)

    def contains(self, other: "Loop") -> bool:
        return self.start <= other.start and other.end <= self.end and self != other


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    """``cuobjdump -sass`` output -> {function name: instructions in address order}.

    Raises:
        ValueError: the text holds no function with instructions.
    """
    functions: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for line in text.splitlines():
        header = _FUNCTION.match(line)
        if header:
            current = functions.setdefault(header.group(1), [])
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            address, predicate, opcode, operands = match.groups()
            current.append(Instruction(int(address, 16), opcode, operands.strip(), predicate is not None))
    functions = {name: body for name, body in functions.items() if body}
    if not functions:
        raise ValueError("no SASS function with instructions found (is this cuobjdump -sass output?)")
    return functions


def find_loops(instructions: list[Instruction]) -> list[Loop]:
    """Every backward branch as a loop, in address order (a branch to itself, the final trap, is not one)."""
    loops = []
    for instr in instructions:
        if instr.base != "BRA":
            continue
        target = _BRANCH_TARGET.search(instr.operands)
        if target is None:
            continue
        start = int(target.group(1), 16)
        if start < instr.address:
            body = tuple(i for i in instructions if start <= i.address <= instr.address)
            loops.append(Loop(start, instr.address, body))
    return sorted(loops, key=lambda loop: loop.start)


def mma_macs_per_warp_instruction(opcode: str) -> tuple[str, int, int] | None:
    """(kind, multiply-accumulates, warps that issue it together) for a tensor-core opcode, else None.

    ``HGMMA.MxNxK`` (sm_90 wgmma) is one M x N x K product issued by the 4 warps of a warpgroup;
    ``HMMA.168K`` (mma.sync) is a 16 x 8 x K product per warp.
    """
    hgmma = _HGMMA.match(opcode)
    if hgmma:
        m, n, k = (int(x) for x in hgmma.groups())
        return "wgmma", m * n * k, 4
    hmma = _HMMA.match(opcode)
    if hmma:
        m, n, k = (int(x) for x in hmma.groups())
        return "mma.sync", m * n * k, 1
    return None


def is_mma(instr: Instruction) -> bool:
    return mma_macs_per_warp_instruction(instr.opcode) is not None


def main_loop(instructions: list[Instruction]) -> Loop | None:
    """The steady-state loop: among innermost loops that hold tensor-core instructions (all innermost
    loops when none does), the one with the fewest instructions, i.e. the unmasked key/query loop
    rather than its masked boundary twin. None for straight-line code."""
    loops = find_loops(instructions)
    innermost = [loop for loop in loops if not any(loop.contains(other) for other in loops)]
    with_mma = [loop for loop in innermost if any(is_mma(i) for i in loop.body)]
    candidates = with_mma or innermost
    if not candidates:
        return None
    if with_mma:
        return min(candidates, key=lambda loop: len(loop.body))
    # no tensor cores (pooling): the innermost loop with the most work streams the data
    return max(candidates, key=lambda loop: len(loop.body))


@dataclass(frozen=True)
class LoopStats:
    """What one iteration of a loop issues, per warp (multiply by the warps for the CTA)."""

    instructions: int
    mma_kind: str  # "wgmma", "mma.sync" or "none"
    mma_instructions: int
    mma_macs_per_cta: int  # multiply-accumulates the CTA's tensor cores execute per iteration
    ex2: int
    barriers: int
    async_copies: int  # cp.async (LDGSTS) and TMA (UTMALDG) per warp
    spill_ops: int  # local-memory loads/stores (LDL/STL): register spills inside the loop
    opcodes: dict[str, int]


def loop_stats(loop: Loop, num_warps: int) -> LoopStats:
    kinds = set()
    macs = 0
    mma_count = 0
    for instr in loop.body:
        mma = mma_macs_per_warp_instruction(instr.opcode)
        if mma is None:
            continue
        kind, per_instruction, warps_together = mma
        kinds.add(kind)
        mma_count += 1
        macs += per_instruction * num_warps // warps_together
    opcodes = Counter(instr.base for instr in loop.body)
    return LoopStats(
        instructions=len(loop.body),
        mma_kind="+".join(sorted(kinds)) or "none",
        mma_instructions=mma_count,
        mma_macs_per_cta=macs,
        ex2=sum(1 for instr in loop.body if instr.opcode.startswith("MUFU.EX2")),
        barriers=sum(1 for instr in loop.body if instr.base == "BAR"),
        async_copies=sum(1 for instr in loop.body if instr.base in ("LDGSTS", "UTMALDG")),
        spill_ops=sum(1 for instr in loop.body if instr.base in ("LDL", "STL")),
        opcodes=dict(opcodes.most_common()),
    )
