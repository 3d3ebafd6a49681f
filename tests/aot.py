"""Ahead-of-time compiles for the AOT tests (``tests/test_aot_*.py``), without a GPU.

A thin test-side front end to the static kernel report (``tools/static_report`` of this checkout):
the tests compile cases from its one list of kernel cases (``specs.varlen_cases``,
``specs.pool_cases``) with its compiler, which runs in fresh Python processes, so it works under
``TRITON_INTERPRET=1`` (set by tests/conftest.py on machines without a GPU) and with another
Python environment, which is how kernels are checked against a second Triton version (3.6, the
GPU machine's). Each result is a report row (``report.metrics``): registers, spill bytes (LOCAL +
STACK from Triton's bundled ``cuobjdump``), shared memory, the tensor-core instruction kind, the
MMA work ratio, main-loop instructions per 128x64 tile and main-loop spill accesses.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools.static_report import compile as static_compile  # noqa: E402
from tools.static_report import report, specs  # noqa: E402

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # bytes per CTA (A100, H100)
TRITON36_PYTHON = os.environ.get("ELASTICAST_TRITON36_PYTHON", str(REPO_ROOT / ".venv-t36" / "bin" / "python"))


def tools_present() -> bool:
    """Whether this Triton has its NVIDIA backend tools (cuobjdump), which reading the code needs."""
    return static_compile.triton_tools_present()


def triton36_python() -> str | None:
    """The Triton 3.6 environment's interpreter (``.venv-t36`` or ``$ELASTICAST_TRITON36_PYTHON``), if present."""
    return TRITON36_PYTHON if Path(TRITON36_PYTHON).exists() else None


def compile_rows(cases: Iterable[specs.Case], python: str | None = None, workers: int = 2) -> list[dict]:
    """Compile ``cases`` (in ``python``, default this one) and return their report rows, in order."""
    cases = list(cases)
    compiled = static_compile.run_jobs([c.job for c in cases], workers=workers, python=python)
    return [report.metrics(case, result) for case, result in zip(cases, compiled)]


def describe(row: dict) -> str:
    return (f"{row['kernel']} sm_{row['arch']} {row['dtype']} d{row['head_dim']} {row['variant']} "
            f"{row['block_m']}x{row['block_n']} w{row['num_warps']}s{row['num_stages']} (triton {row['triton']}): "
            f"regs={row['registers']} spill={row['spill_bytes']}B smem={row['shared']}B mma={row['mma_kind']} "
            f"ratio={row.get('mma_ratio')} instr/tile={row.get('instr_per_tile')} "
            f"loop spill ops={row.get('loop_spill_ops')}")
