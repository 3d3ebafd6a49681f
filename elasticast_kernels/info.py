"""Diagnostics: ``python -m elasticast_kernels.info`` prints what this installation can do.

Versions (package, Python, torch, triton, CUDA runtime and driver), the GPU, whether the native
extension and its CUDA part loaded, which attention backends run here (and why the others do not),
which one ``attention_backend="auto"`` picks, and which optional extras are installed. A machine
without an NVIDIA driver or GPU is reported as CPU-only, not as a driver problem; a driver that is
there but does not start, or is older than torch's CUDA, is. ``--json`` prints the same as JSON.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import importlib.util
import json
import platform
from typing import Any, Callable

import torch

import elasticast_kernels
from elasticast_kernels._optional import EXTRAS


#: CUresult codes of the driver API that mean "there is no GPU here", not "the driver is broken"
_CUDA_ERROR_NO_DEVICE = 100


def _probe_driver(load: Callable[[str], Any] = ctypes.CDLL) -> dict[str, Any]:
    """What libcuda itself says: ``{"loaded", "version", "init_error", "devices"}``.

    ``load`` opens the library (a test passes a fake). Nothing here needs torch's CUDA build:
    the CUDA runtime reports a missing driver as "CUDA driver version is insufficient", which
    reads as "update your driver" on a machine that simply has no GPU; libcuda tells them apart.
    """
    try:
        libcuda = load("libcuda.so.1")
    except OSError:
        return {"loaded": False, "version": None, "init_error": None, "devices": 0}
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        version.value = 0
    code = int(libcuda.cuInit(0))
    devices = ctypes.c_int(0)
    if code == 0 and libcuda.cuDeviceGetCount(ctypes.byref(devices)) != 0:
        devices.value = 0
    init_error = None
    if code != 0:
        name = ctypes.c_char_p()
        known = libcuda.cuGetErrorName(code, ctypes.byref(name)) == 0 and name.value
        init_error = f"{name.value.decode() if known else 'CUresult'} ({code})"
    text = f"{version.value // 1000}.{(version.value % 1000) // 10}" if version.value else None
    return {"loaded": True, "version": text, "init_error": init_error, "init_code": code, "devices": int(devices.value)}


def cuda_status(driver: dict[str, Any], runtime: str | None) -> tuple[str, str]:
    """``(state, message)`` of this machine's CUDA from a :func:`_probe_driver` result and the
    CUDA version torch was built for (``torch.version.cuda``; None for a CPU build).

    States: ``"no_driver"`` and ``"no_device"`` (a CPU machine: nothing to fix), ``"ok"``,
    ``"driver_too_old"`` (the driver's CUDA major version is below torch's: update the driver)
    and ``"driver_error"`` (libcuda is there but does not start: a real driver problem).
    """
    if not driver["loaded"]:
        return "no_driver", "no NVIDIA driver on this machine (libcuda not found): CPU only"
    version = driver["version"] or "of unknown version"
    if driver["init_error"] is not None:
        if driver.get("init_code") == _CUDA_ERROR_NO_DEVICE:
            return "no_device", f"NVIDIA driver {version} installed, but no CUDA device is visible (check CUDA_VISIBLE_DEVICES)"
        return "driver_error", f"NVIDIA driver {version} is installed but does not start: cuInit failed with {driver['init_error']}"
    if driver["devices"] == 0:
        return "no_device", f"NVIDIA driver {version} installed, but no CUDA device is visible (check CUDA_VISIBLE_DEVICES)"
    if runtime and driver["version"] and int(driver["version"].split(".")[0]) < int(runtime.split(".")[0]):
        return "driver_too_old", (f"NVIDIA driver {driver['version']} supports CUDA up to {driver['version']}, but this "
                                  f"torch needs CUDA {runtime}: update the driver")
    return "ok", f"NVIDIA driver {version}, {driver['devices']} CUDA device(s)"


def installed_extras() -> dict[str, dict[str, Any]]:
    """For each extra of the package (``pip install "elasticast-kernels[extra]"``): whether its
    packages are importable and their versions. Nothing is imported (``find_spec`` only)."""
    try:
        distributions = importlib.metadata.packages_distributions()
    except Exception:  # a broken environment: report "installed" without versions
        distributions = {}
    extras: dict[str, dict[str, Any]] = {}
    for module, extra in EXTRAS.items():
        if extra == "dev":  # the developers' extra, not a feature of the package
            continue
        entry = extras.setdefault(extra, {"installed": True, "packages": {}, "install": f'pip install "elasticast-kernels[{extra}]"'})
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        version = None
        if found:
            version = "installed"
            for distribution in distributions.get(module, [])[:1]:
                try:
                    version = importlib.metadata.version(distribution)
                except importlib.metadata.PackageNotFoundError:
                    pass
        entry["packages"][module] = version
        entry["installed"] = entry["installed"] and found
    return extras


def _native_extension(cuda_state: str, cuda_message: str) -> dict[str, Any]:
    try:
        from elasticast_kernels import _C
    except ImportError as exc:
        return {"loaded": False, "cuda": False, "cuda_usable": False, "reason": str(exc)}
    if not _C.has_cuda():
        return {"loaded": True, "cuda": False, "cuda_usable": False, "reason": "not compiled (no nvcc at build time)"}
    # compiled in is not enough: the static CUDA runtime also needs a driver and a device. Its
    # own words for "no driver" are "driver version is insufficient": say what libcuda found.
    unusable = _C.cuda_unavailable_reason()
    if unusable and cuda_state in ("no_driver", "no_device"):
        return {"loaded": True, "cuda": True, "cuda_usable": False, "reason": cuda_message, "runtime_says": unusable}
    return {"loaded": True, "cuda": True, "cuda_usable": not unusable, "reason": unusable or None}


def _triton_version() -> str | None:
    try:
        import triton
    except Exception:
        return None
    return triton.__version__


def collect(driver: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``info`` reports, as a JSON-serialisable dict (``driver``: a
    :func:`_probe_driver` result to use instead of probing this machine)."""
    from elasticast_kernels.backends import available_backends, resolve_backend

    driver = _probe_driver() if driver is None else driver
    state, message = cuda_status(driver, torch.version.cuda)

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
        "cuda_driver": driver["version"],
        "cuda": {"state": state, "message": message},
        "device": str(device),
        "gpu": gpu,
        "native_extension": _native_extension(state, message),
        "backends": {name: ("available" if reason is None else f"unavailable: {reason}") for name, reason in backends.items()},
        "auto_backend": auto,
        "extras": installed_extras(),
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
        f"  CUDA          {report['cuda']['message']}",
        f"  GPU           {gpu['name'] + ' (' + gpu['capability'] + ')' if gpu else _no_gpu(report)}",
        f"  native ext    {'loaded' if native['loaded'] else 'NOT loaded: ' + native['reason']}"
        + (f", CUDA packer {'usable' if native['cuda_usable'] else 'unusable: ' + native['reason']}" if native["loaded"] else ""),
        "  attention backends:",
    ]
    width = max(len(name) for name in report["backends"])
    lines += [f"    {name:<{width}}  {status}" for name, status in report["backends"].items()]
    lines.append(f"  auto picks    {report['auto_backend']}")
    lines.append("  extras:")
    width = max(len(name) for name in report["extras"])
    for name, extra in report["extras"].items():
        if extra["installed"]:
            found = ", ".join(f"{module} {version}" for module, version in extra["packages"].items())
            lines.append(f"    {name:<{width}}  installed ({found})")
        else:
            missing = ", ".join(module for module, version in extra["packages"].items() if version is None)
            lines.append(f"    {name:<{width}}  not installed (no {missing}): {extra['install']}")
    return "\n".join(lines)


def _no_gpu(report: dict[str, Any]) -> str:
    state = report["cuda"]["state"]
    if state in ("no_driver", "no_device"):
        return "none: CPU only"
    if state == "ok":
        if report["cuda_runtime"] is None:
            return "none usable: this torch is a CPU build (install a CUDA build of torch to use the GPU)"
        return "none usable: the driver sees a GPU but torch.cuda.is_available() is False"
    return f"none usable: {report['cuda']['message']}"


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
