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

Why a subprocess: under ``TRITON_INTERPRET=1`` (set by tests/conftest.py on machines without a
GPU) ``@triton.jit`` builds interpreter objects that cannot be compiled. ``compile_report`` then
re-imports the kernel's module in a fresh Python with the interpreter off and compiles there. The
same route compiles with another Python environment (``python=``), which is how kernels are
checked against a second Triton version (e.g. 3.6, the GPU machine's).

Registers and spills come from Triton's bundled ``cuobjdump --dump-resource-usage`` run on the
cubin: the CUDA 13 toolkit's ``ptxas`` cannot read the PTX of recent Triton releases.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]


class AotError(RuntimeError):
    """Compiling a kernel failed; the message holds the compiler's error."""


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
            have set). Must be a module-level name of an importable module, so a subprocess
            can import it (from the directory the module was loaded from).
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
    request = AotRequest(kernel, dict(signature), dict(constexprs), arch, num_warps, num_stages,
                         None if divisible_by_16 is None else list(divisible_by_16))
    return compile_reports([request], python=python)[0]


def compile_reports(requests: Iterable[AotRequest], python: str | None = None, workers: int = 1) -> list[AotReport]:
    """Compile many kernels at once; reports come back in request order.

    Runs in this process when it can (no ``python``, kernels not interpreted, ``workers=1``);
    otherwise in ``workers`` subprocesses that share the requests (compiles take seconds each,
    mostly in ptxas, so two workers roughly halve the wall time on a 2-core machine).
    """
    requests = list(requests)
    in_process = python is None and workers <= 1 and all(_is_compilable(r.kernel) for r in requests)
    if in_process:
        return [_compile_one(_jit_function(r.kernel), r) for r in requests]
    jobs = [_to_job(r) for r in requests]
    workers = max(1, min(workers, len(jobs)))
    shares = [jobs[i::workers] for i in range(workers)]
    running = [_start_subprocess(share, python or sys.executable) for share in shares]
    results = [_finish_subprocess(proc, python or sys.executable) for proc in running]
    # undo the round-robin split
    ordered: list[AotReport] = [None] * len(jobs)  # type: ignore[list-item]
    for i, reports in enumerate(results):
        ordered[i::workers] = reports
    return ordered


# --- in-process compile -------------------------------------------------------------------------


def _jit_function(kernel: Any) -> Any:
    """Peel autotune/heuristics wrappers down to the ``JITFunction``."""
    from triton.runtime.jit import JITFunction

    obj = kernel
    while not isinstance(obj, JITFunction):
        inner = getattr(obj, "fn", None)
        if inner is None or isinstance(obj, types.FunctionType):
            raise TypeError(f"{kernel!r} is not a compilable @triton.jit kernel")
        obj = inner
    return obj


def _is_compilable(kernel: Any) -> bool:
    try:
        _jit_function(kernel)
    except (TypeError, ImportError):
        return False
    return True


def _raw_function(kernel: Any) -> types.FunctionType:
    """The plain Python function under any triton wrapper (JIT, interpreter, autotune)."""
    obj = kernel
    for _ in range(8):
        if isinstance(obj, types.FunctionType):
            return obj
        obj = getattr(obj, "fn", None)
    raise TypeError(f"cannot find the Python function of {kernel!r}")


def _resource_usage(cubin: bytes) -> dict[str, int]:
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        raise AotError(f"triton's bundled cuobjdump is missing ({cuobjdump})")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(path)],
                             capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise AotError(f"cuobjdump failed: {out.stderr.strip()}")
    usage = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        match = re.search(rf"\b{key}:(\d+)", out.stdout)
        if match is None:
            raise AotError(f"no {key} in cuobjdump output:\n{out.stdout}")
        usage[key] = int(match.group(1))
    return usage


def _compile_one(fn: Any, request: AotRequest) -> AotReport:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = dict(request.signature)
    missing = [name for name in fn.arg_names if name not in signature]
    if missing:
        raise AotError(f"{fn.__name__}: signature lacks {missing}")
    marked = request.divisible_by_16
    if marked is None:
        marked = [name for name, ty in signature.items() if ty.startswith("*")]
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in marked}
    src = ASTSource(fn=fn, signature=signature, constexprs=dict(request.constexprs), attrs=attrs)
    try:
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", request.arch, 32),
            options={"num_warps": request.num_warps, "num_stages": request.num_stages},
        )
    except Exception as exc:  # the compiler raises many types; keep its message
        raise AotError(f"{fn.__name__} failed to compile for sm_{request.arch}: {exc}") from exc
    usage = _resource_usage(compiled.asm["cubin"])
    return AotReport(
        name=fn.__name__,
        arch=request.arch,
        num_warps=request.num_warps,
        num_stages=request.num_stages,
        constexprs=dict(request.constexprs),
        registers=usage["REG"],
        stack=usage["STACK"],
        local=usage["LOCAL"],
        # Triton's own figure: dynamic shared memory, which is where its buffers live.
        shared=int(compiled.metadata.shared),
        uses_wgmma="wgmma" in compiled.asm["ptx"],
        triton_version=triton.__version__,
        pointer_types=",".join(sorted({ty for ty in signature.values() if ty.startswith("*")})),
    )


# --- subprocess route ---------------------------------------------------------------------------


def _to_job(request: AotRequest) -> dict[str, Any]:
    raw = _raw_function(request.kernel)
    job = dataclasses.asdict(dataclasses.replace(request, kernel=None))
    job["kernel"] = [raw.__module__, raw.__name__]
    return job


def _import_roots(jobs: list[dict[str, Any]]) -> list[str]:
    """Directories from which the subprocess can import each job's kernel module."""
    roots = []
    for module_name, _ in (job["kernel"] for job in jobs):
        module_file = getattr(sys.modules.get(module_name), "__file__", None)
        if module_file:
            root = Path(module_file).resolve().parents[len(module_name.split(".")) - 1]
            roots.append(str(root))
    return list(dict.fromkeys(roots))


def _start_subprocess(jobs: list[dict[str, Any]], python: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["TRITON_INTERPRET"] = "0"
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    # The kernels' modules import from the repository (installed or not) and from tests/.
    env["PYTHONPATH"] = os.pathsep.join(
        [*_import_roots(jobs), str(REPO_ROOT), str(Path(__file__).parent), env.get("PYTHONPATH", "")]
    )
    # jobs travel in a file: every worker starts at once, and communicate() drains both pipes
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(jobs, handle)
    proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--jobs-json", handle.name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc.jobs_file = handle.name  # type: ignore[attr-defined]
    return proc


def _finish_subprocess(proc: subprocess.Popen, python: str) -> list[AotReport]:
    stdout, stderr = proc.communicate()
    os.unlink(proc.jobs_file)  # type: ignore[attr-defined]
    if proc.returncode != 0:
        raise AotError(f"AOT subprocess ({python}) failed:\n{stderr[-4000:]}")
    lines = [line for line in stdout.splitlines() if line.startswith("AOT_RESULT ")]
    if len(lines) != 1:
        raise AotError(f"AOT subprocess printed no result:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    payload = json.loads(lines[0][len("AOT_RESULT "):])
    if "error" in payload:
        raise AotError(payload["error"])
    return [AotReport(**item) for item in payload["reports"]]


def _main() -> None:
    import importlib

    jobs = json.loads(Path(sys.argv[2]).read_text())
    try:
        reports = []
        for job in jobs:
            module_name, name = job.pop("kernel")
            kernel = getattr(importlib.import_module(module_name), name)
            request = AotRequest(kernel=kernel, **job)
            reports.append(dataclasses.asdict(_compile_one(_jit_function(kernel), request)))
        payload: dict[str, Any] = {"reports": reports}
    except Exception as exc:
        payload = {"error": f"{type(exc).__name__}: {exc}"}
    print("AOT_RESULT " + json.dumps(payload))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--jobs-json":
        _main()
    else:
        sys.exit("usage: python tests/aot.py --jobs-json JOBS.json (internal; use compile_report)")
