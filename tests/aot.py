"""Ahead-of-time compile of Triton kernels for NVIDIA targets, without a GPU.

Used by the AOT tests (``tests/test_aot_*.py``) to check that a kernel compiles for sm_80/sm_90
and to read its resource usage from the machine code: registers per thread, spill memory
(LOCAL/STACK bytes, both 0 when nothing spills) and shared memory.

    from aot import compile_report
    report = compile_report(
        my_kernel,                                   # the @triton.jit (or autotuned) object
        signature={"X": "*fp16", "N": "i32", "BLOCK": "constexpr"},
        constexprs={"BLOCK": 128},
        arch=90, num_warps=4, num_stages=3,
    )
    print(report)            # one line: name, arch, warps/stages, regs, spills, smem
    assert not report.spills

A thin test-side front end to the static kernel report's compiler
(``elasticast_kernels.bench.static.compile``): it compiles in fresh Python processes, so it works
under ``TRITON_INTERPRET=1`` (set by tests/conftest.py on machines without a GPU, where
``@triton.jit`` builds interpreter objects) and with another Python environment (``python=``),
which is how kernels are checked against a second Triton version (e.g. 3.6, the GPU machine's).
Registers and spills come from Triton's bundled ``cuobjdump`` run on the cubin.
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from elasticast_kernels.bench.static.compile import CompileError, Job, run_jobs

AotError = CompileError  # compiling a kernel failed; the message holds the compiler's error


@dataclass(frozen=True)
class AotReport:
    """Resource usage of one compiled kernel (one arch, one set of constexprs).

    ``registers`` per thread; ``stack``/``local`` bytes per thread of spill memory (a kernel that
    spills has one of them > 0); ``shared`` bytes of shared memory per program (Triton's figure,
    which includes the pipelining buffers). ``uses_wgmma`` tells whether the sm_90 tensor-core
    instructions were emitted (only meaningful for ``arch >= 90``).
    """

    name: str
    arch: int
    num_warps: int
    num_stages: int
    constexprs: Mapping[str, Any]
    registers: int
    stack: int
    local: int
    shared: int
    uses_wgmma: bool
    triton_version: str
    pointer_types: str = ""  # e.g. "*bf16,*fp32,*i32": tells fp16 and bf16 builds apart in a table

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0

    def __str__(self) -> str:
        consts = ",".join(f"{k}={v}" for k, v in self.constexprs.items())
        return (
            f"{self.name} sm_{self.arch} w{self.num_warps}s{self.num_stages} [{consts}] ({self.pointer_types}) "
            f"triton {self.triton_version}: regs={self.registers} stack={self.stack} "
            f"local={self.local} smem={self.shared}B wgmma={self.uses_wgmma}"
        )


@dataclass(frozen=True)
class AotRequest:
    """One compile job (see ``compile_report`` for the fields)."""

    kernel: Any
    signature: Mapping[str, str]
    constexprs: Mapping[str, Any]
    arch: int
    num_warps: int = 4
    num_stages: int = 3
    divisible_by_16: Sequence[str] | None = None


def compile_report(
    kernel: Any,
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any],
    arch: int,
    num_warps: int = 4,
    num_stages: int = 3,
    divisible_by_16: Sequence[str] | None = None,
    python: str | None = None,
) -> AotReport:
    """Compile ``kernel`` for ``sm_<arch>`` and report its resource usage.

    Args:
        kernel: a ``@triton.jit`` function, possibly wrapped by ``triton.autotune`` /
            ``triton.heuristics`` (the wrappers are peeled off; pass the constexprs they would
            have set). Must be a module-level name of an importable module.
        signature: every kernel argument -> Triton type: ``"*fp16"``, ``"*bf16"``, ``"*fp32"``,
            ``"*i32"``, ``"i32"``, ``"i64"``, ``"fp32"``, ... and ``"constexpr"`` for constexprs.
        constexprs: values of the constexpr arguments.
        arch: compute capability as an int (80 = A100, 90 = H100).
        num_warps, num_stages: launch options, as a config would set them.
        divisible_by_16: arguments to mark 16-divisible, as Triton's runtime specialisation does
            for aligned pointers and integers that are multiples of 16 (enables vector loads).
            ``None`` marks every pointer argument (torch allocations are aligned).
        python: interpreter to compile with (another environment = another Triton version);
            ``None`` uses this one.

    Raises:
        AotError: the compile (or the subprocess) failed.
    """
    request = AotRequest(kernel, dict(signature), dict(constexprs), arch, num_warps, num_stages, divisible_by_16)
    return compile_reports([request], python=python)[0]


def compile_reports(requests: Iterable[AotRequest], python: str | None = None, workers: int = 1) -> list[AotReport]:
    """Compile many kernels in ``workers`` subprocesses (compiles take seconds each, mostly in
    ptxas, so two workers roughly halve the wall time on a 2-core machine); reports come back in
    request order."""
    requests = list(requests)
    jobs = [_job(r) for r in requests]
    records = run_jobs(jobs, workers=workers, python=python, import_paths=_import_roots(requests))
    return [_report(r, record) for r, record in zip(requests, records)]


def _raw_function(kernel: Any) -> Any:
    """The plain Python function under any triton wrapper (JIT, interpreter, autotune)."""
    obj = kernel
    for _ in range(8):
        if inspect.isfunction(obj):
            return obj
        obj = getattr(obj, "fn", None)
    raise TypeError(f"cannot find the Python function of {kernel!r}")


def _import_roots(requests: list[AotRequest]) -> list[str]:
    """Directories from which a worker imports each kernel's module (a test module's too)."""
    roots = [str(Path(__file__).resolve().parent)]
    for request in requests:
        module_name = _raw_function(request.kernel).__module__
        module_file = getattr(sys.modules.get(module_name), "__file__", None)
        if module_file:
            roots.append(str(Path(module_file).resolve().parents[len(module_name.split(".")) - 1]))
    return list(dict.fromkeys(roots))


def _job(request: AotRequest) -> Job:
    raw = _raw_function(request.kernel)
    marked = request.divisible_by_16
    if marked is None:
        marked = [name for name, ty in request.signature.items() if ty.startswith("*")]
    return Job(raw.__module__, raw.__name__, dict(request.signature), dict(request.constexprs), request.arch,
               request.num_warps, request.num_stages, list(marked))


def _report(request: AotRequest, record: dict) -> AotReport:
    return AotReport(
        name=_raw_function(request.kernel).__name__,
        arch=request.arch,
        num_warps=request.num_warps,
        num_stages=request.num_stages,
        constexprs=dict(request.constexprs),
        registers=record["registers"],
        stack=record["stack"],
        local=record["local"],
        shared=record["shared"],
        uses_wgmma="wgmma" in record["mma_kinds"],
        triton_version=record["triton"],
        pointer_types=",".join(sorted({ty for ty in request.signature.values() if ty.startswith("*")})),
    )
