"""CTAs per SM from a compiled kernel's registers, shared memory and warps (CUDA occupancy rules).

Limits per SM (CUDA programming guide, compute capability 8.0 and 9.0): 65536 registers allocated
per warp in units of 256, 64 resident warps, 32 resident CTAs, shared memory 164 KB (sm_80) or
228 KB (sm_90) with 1 KB reserved per CTA.
"""
from __future__ import annotations

REGISTERS_PER_SM = 65536
REGISTER_UNIT = 256  # registers are allocated per warp in these units
MAX_WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
SHARED_RESERVED_PER_CTA = 1024
SMS = {80: 108, 90: 132}  # A100, H100 SXM


def ctas_per_sm(arch: int, registers: int, shared: int, num_warps: int) -> int:
    """Resident CTAs per SM; 0 when one CTA does not fit.

    Raises:
        ValueError: an arch other than 80 or 90, or a non-positive ``num_warps``.
    """
    if arch not in SHARED_PER_SM:
        raise ValueError(f"arch must be one of {sorted(SHARED_PER_SM)}, got {arch!r}")
    if num_warps < 1:
        raise ValueError(f"num_warps must be positive, got {num_warps!r}")
    per_warp = -(-max(registers, 1) * 32 // REGISTER_UNIT) * REGISTER_UNIT
    by_registers = REGISTERS_PER_SM // (per_warp * num_warps)
    by_shared = SHARED_PER_SM[arch] // (shared + SHARED_RESERVED_PER_CTA)
    by_warps = MAX_WARPS_PER_SM // num_warps
    return min(by_registers, by_shared, by_warps, MAX_CTAS_PER_SM)
