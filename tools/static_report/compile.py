"""Compile kernels for NVIDIA targets without a GPU, in worker subprocesses (see ``_worker.py``).

A :class:`Job` names a kernel by module and attribute, so a worker in another Python (another
Triton version) can import it; the worker returns registers, spill bytes, shared memory and the
main loop's SASS statistics (``sass.loop_stats``) as a plain dict. Workers import the kernels from
this source checkout (``REPO_ROOT``), whatever copy of the package is installed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

WORKER = Path(__file__).with_name("_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


class CompileError(RuntimeError):
    """A worker failed; the message holds the compiler's error."""


@dataclass(frozen=True)
class Job:
    """One compile: ``module.kernel`` with a Triton signature and constexprs, for ``sm_<arch>``."""

    module: str
    kernel: str
    signature: dict[str, str]
    constexprs: dict[str, Any]
    arch: int
    num_warps: int
    num_stages: int
    divisible: list[str] = field(default_factory=list)  # arguments Triton's runtime marks 16-divisible


def triton_tools_present() -> bool:
    """Whether this Triton has its NVIDIA backend tools (cuobjdump), which the report needs."""
    try:
        import triton
    except ImportError:
        return False
    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists()


def run_jobs(jobs: Sequence[Job], workers: int = 2, python: str | None = None,
             import_paths: Sequence[str] = ()) -> list[dict]:
    """Compile ``jobs`` in ``workers`` subprocesses of ``python`` (default: this one); results in job order.

    The workers import the kernels' modules from this checkout and ``import_paths``.

    Raises:
        CompileError: a compile or a worker failed.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    python = python or sys.executable
    workers = max(1, min(workers, len(jobs)))
    shares = [jobs[i::workers] for i in range(workers)]
    env = dict(os.environ, TRITON_INTERPRET="0")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (*import_paths, str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    running = []
    for share in shares:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump([asdict(job) for job in share], handle)
        proc = subprocess.Popen([python, str(WORKER), handle.name], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        running.append((proc, handle.name))
    results: list[list[dict]] = []
    for proc, path in running:
        stdout, stderr = proc.communicate()
        os.unlink(path)
        lines = [line for line in stdout.splitlines() if line.startswith("STATIC_RESULT ")]
        if proc.returncode != 0 or len(lines) != 1:
            raise CompileError(f"compile worker ({python}) failed:\n{stderr[-4000:]}")
        payload = json.loads(lines[0][len("STATIC_RESULT "):])
        if "error" in payload:
            raise CompileError(payload["error"])
        results.append(payload["records"])
    ordered: list[dict] = [{}] * len(jobs)
    for i, records in enumerate(results):
        ordered[i::workers] = records
    return ordered
