"""One benchmark case's outcome, and the environment record that goes with a report."""
from __future__ import annotations

import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


def case_key(group: str, name: str, variant: str, workload: str, params: dict[str, Any]) -> str:
    """The identity of a case across runs: ``group/name/variant/workload[param=value,...]``
    (``--compare`` matches on it)."""
    extra = ",".join(f"{k}={params[k]}" for k in sorted(params))
    return f"{group}/{name}/{variant}/{workload}[{extra}]"


@dataclass
class CaseResult:
    """A measured (or skipped) case.

    ``key`` identifies the case across runs (``--compare`` matches on it); ``metrics`` holds
    only finite numbers (None where a figure does not apply); a skipped or failed case keeps
    its reason.
    """

    group: str
    name: str
    variant: str
    workload: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    reason: str | None = None

    @property
    def key(self) -> str:
        return case_key(self.group, self.name, self.variant, self.workload, self.params)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["key"] = self.key
        out["metrics"] = {k: _finite(v) for k, v in self.metrics.items()}
        out["params"] = {k: _finite(v) for k, v in self.params.items()}
        return out


def _finite(value: Any) -> Any:
    """JSON-safe value: numpy scalars to Python, NaN/inf to None."""
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def skipped(group: str, name: str, variant: str, workload: str, reason: str, **params: Any) -> CaseResult:
    return CaseResult(group, name, variant, workload, params, {}, "skipped", reason)


def git_commit(root: Path | None = None) -> str | None:
    """HEAD commit (``-dirty`` with local changes) of the checkout holding this package, else of
    the working directory's checkout (a copied or installed package), else None."""
    if root is None:
        return git_commit(Path(__file__).resolve().parents[2]) or git_commit(Path.cwd())
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "") if commit else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    """Machine, GPU and library versions for the report."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - absent or broken triton is a fact to record, not an error
        triton_version = None
    try:
        import numpy

        numpy_version = numpy.__version__
    except Exception:  # noqa: BLE001
        numpy_version = None
    from elasticast_kernels import __version__

    cuda = torch.device(device).type == "cuda"
    gpu_name = torch.cuda.get_device_name() if cuda else None
    env = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "numpy": numpy_version,
        "cuda_runtime": torch.version.cuda,
        "elasticast_kernels": __version__,
        "git_commit": git_commit(),
        "device": device,
        "device_label": f"GPU: {gpu_name}" if cuda else "CPU (reference torch paths; no GPU kernels timed)",
        "gpu_name": gpu_name,
    }
    if cuda:
        props = torch.cuda.get_device_properties(torch.device(device))
        env["gpu_memory_bytes"] = int(props.total_memory)
        env["gpu_sm_count"] = int(props.multi_processor_count)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["cuda_driver"] = _driver_version()
    return env


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (processes running or waiting for a CPU), or None
    where the platform has none. Other processes skew CPU timings; the run records how much."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# Load average per CPU before a run from which other processes take a noticeable share of the CPUs.
BUSY_LOAD_PER_CPU = 0.5


def busy(env: dict) -> bool:
    """Whether other processes were competing for the CPUs when the run started (``env`` as in a
    report: ``load_average_before`` and ``cpu_count``)."""
    before, cpus = env.get("load_average_before"), env.get("cpu_count")
    return bool(before and cpus and before[0] / cpus >= BUSY_LOAD_PER_CPU)


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
