"""Compile worker: ``python _worker.py JOBS.json`` compiles each job and prints one JSON line.

Run as a script in a fresh Python (``compile.run_jobs`` starts it), so that it works whichever
Triton that Python has (3.6 or 3.9) and whatever ``TRITON_INTERPRET`` the caller had. It needs
only the standard library, Triton and the kernel modules; the SASS reader next to it is loaded
by path. Output: ``STATIC_RESULT {"records": [...]}`` or ``STATIC_RESULT {"error": "..."}``.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def _load_sass():
    spec = importlib.util.spec_from_file_location("_static_sass", Path(__file__).with_name("sass.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _jit_function(kernel):
    from triton.runtime.jit import JITFunction

    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn  # autotune / heuristics wrappers
    return kernel


def _cuobjdump(args: list[str], cubin: bytes) -> str:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([str(tool), *args, str(path)], capture_output=True, text=True, check=True)
    return out.stdout


def compile_job(job: dict, sass) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _jit_function(getattr(importlib.import_module(job["module"]), job["kernel"]))
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in job["divisible"]}
    source = ASTSource(fn=fn, signature=job["signature"], constexprs=job["constexprs"], attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", job["arch"], 32),
                              options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]})
    cubin = compiled.asm["cubin"]
    usage = _cuobjdump(["--dump-resource-usage"], cubin)
    resources = {key: int(re.search(rf"\b{key}:(\d+)", usage).group(1)) for key in ("REG", "STACK", "LOCAL")}
    functions = sass.parse_sass(_cuobjdump(["-sass"], cubin))
    instructions = functions.get(fn.__name__) or next(iter(functions.values()))
    loop = sass.main_loop(instructions)
    stats = None if loop is None else sass.loop_stats(loop, job["num_warps"]).__dict__
    return {
        "triton": triton.__version__,
        "registers": resources["REG"],
        "stack": resources["STACK"],
        "local": resources["LOCAL"],
        "shared": int(compiled.metadata.shared),
        "total_instructions": len(instructions),
        "loops": len(sass.find_loops(instructions)),
        "main_loop": stats,
        "ex2_total": sum(1 for i in instructions if i.opcode.startswith("MUFU.EX2")),
        "mma_kinds": sorted({sass.mma_macs_per_warp_instruction(i.opcode)[0] for i in instructions if sass.is_mma(i)}),
    }


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    sass = _load_sass()
    try:
        payload = {"records": [compile_job(job, sass) for job in jobs]}
    except Exception as exc:  # report any compiler failure to the parent with its message
        payload = {"error": f"{type(exc).__name__}: {exc}"}
    print("STATIC_RESULT " + json.dumps(payload))


if __name__ == "__main__":
    main()
