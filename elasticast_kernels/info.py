"""Diagnostics: ``python -m elasticast_kernels.info`` prints what this installation can do.

Versions (package, Python, torch, triton, CUDA runtime and driver), the GPU, whether the native
extension and its CUDA part loaded, which attention backends run here (and why the others do not),
and which one ``attention_backend="auto"`` picks. ``--json`` prints the same as JSON.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import platform
from typing import Any

import torch

import elasticast_kernels


def _driver_version() -> str | None:
    """The CUDA driver version from libcuda itself (None when no driver is installed)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{(version.value % 1000) // 10}"


def _native_extension() -> dict[str, Any]:
    try:
        from elasticast_kernels import _C
    except ImportError as exc:
        return {"loaded": False, "cuda": False, "cuda_usable": False, "reason": str(exc)}
    # compiled in is not enough: the static CUDA runtime also needs a recent enough driver
    unusable = _C.cuda_unavailable_reason() if _C.has_cuda() else "not compiled (no nvcc at build time)"
    return {"loaded": True, "cuda": _C.has_cuda(), "cuda_usable": not unusable, "reason": unusable or None}


def _triton_version() -> str | None:
    try:
        import triton
    except Exception:
        return None
    return triton.__version__


def collect() -> dict[str, Any]:
    """Everything ``info`` reports, as a JSON-serialisable dict."""
    from elasticast_kernels.backends import available_backends, resolve_backend

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = {"name": props.name, "capability": f"sm_{props.major}{props.minor}",
               "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count}
    backends = available_backends(device)
    try:
        auto = resolve_backend("auto", device)
    except Exception as exc:  # report rather than crash: this is a diagnostic
        auto = f"none ({exc})"
    return {
        "elasticast_kernels": elasticast_kernels.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda_runtime": torch.version.cuda,
        "cuda_driver": _driver_version(),
        "device": str(device),
        "gpu": gpu,
        "native_extension": _native_extension(),
        "backends": {name: ("available" if reason is None else f"unavailable: {reason}") for name, reason in backends.items()},
        "auto_backend": auto,
    }


def format_report(report: dict[str, Any]) -> str:
    native = report["native_extension"]
    gpu = report["gpu"]
    lines = [
        f"elasticast-kernels {report['elasticast_kernels']}",
        f"  python        {report['python']} ({report['platform']})",
        f"  torch         {report['torch']}",
        f"  triton        {report['triton'] or 'not installed'}",
        f"  CUDA runtime  {report['cuda_runtime'] or 'none (CPU build of torch)'}",
        f"  CUDA driver   {report['cuda_driver'] or 'none'}",
        f"  GPU           {gpu['name'] + ' (' + gpu['capability'] + ')' if gpu else 'none: CPU only'}",
        f"  native ext    {'loaded' if native['loaded'] else 'NOT loaded: ' + native['reason']}"
        + (f", CUDA packer {'usable' if native['cuda_usable'] else 'unusable: ' + native['reason']}" if native["loaded"] else ""),
        "  attention backends:",
    ]
    width = max(len(name) for name in report["backends"])
    lines += [f"    {name:<{width}}  {status}" for name, status in report["backends"].items()]
    lines.append(f"  auto picks    {report['auto_backend']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elasticast_kernels.info", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--version", action="version", version=f"elasticast-kernels {elasticast_kernels.__version__}")
    args = parser.parse_args(argv)
    report = collect()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
