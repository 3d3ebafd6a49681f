"""``python -m elasticast_kernels.info``: a machine without a GPU reads as CPU-only, a broken or old
driver as a driver problem; the installed extras are listed with the install line of the others."""
from __future__ import annotations

import json
import sys

import pytest

from elasticast_kernels import info
from elasticast_kernels._optional import EXTRAS


class FakeLibcuda:
    """The four driver-API calls ``info`` makes, answering as a given machine would."""

    def __init__(self, version: int = 12040, init: int = 0, devices: int = 1) -> None:
        self.version, self.init, self.devices = version, init, devices

    def cuDriverGetVersion(self, out):  # noqa: N802 (the C names)
        out._obj.value = self.version
        return 0

    def cuInit(self, flags):  # noqa: N802
        return self.init

    def cuDeviceGetCount(self, out):  # noqa: N802
        out._obj.value = self.devices
        return 0

    def cuGetErrorName(self, code, out):  # noqa: N802
        names = {100: b"CUDA_ERROR_NO_DEVICE", 999: b"CUDA_ERROR_UNKNOWN", 804: b"CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"}
        if code not in names:
            return 1
        out._obj.value = names[code]
        return 0


def probe(lib=None):
    def load(name):
        assert name == "libcuda.so.1"
        if lib is None:
            raise OSError("libcuda.so.1: cannot open shared object file")
        return lib
    return info._probe_driver(load)


@pytest.mark.parametrize("lib, runtime, state, words", [
    (None, "12.4", "no_driver", "no NVIDIA driver on this machine"),
    (None, None, "no_driver", "CPU only"),
    (FakeLibcuda(init=100), "12.4", "no_device", "no CUDA device is visible"),
    (FakeLibcuda(devices=0), "12.4", "no_device", "no CUDA device is visible"),
    (FakeLibcuda(init=999), "12.4", "driver_error", "does not start: cuInit failed with CUDA_ERROR_UNKNOWN (999)"),
    (FakeLibcuda(init=3), "12.4", "driver_error", "cuInit failed with CUresult (3)"),
    (FakeLibcuda(version=11080), "12.4", "driver_too_old", "driver 11.8 supports CUDA up to 11.8, but this torch needs CUDA 12.4: update"),
    (FakeLibcuda(version=12020), "12.4", "ok", "NVIDIA driver 12.2, 1 CUDA device(s)"),
    (FakeLibcuda(version=13000, devices=8), None, "ok", "8 CUDA device(s)"),
])
def test_cuda_status_tells_no_gpu_apart_from_a_driver_problem(lib, runtime, state, words):
    got_state, message = info.cuda_status(probe(lib), runtime)
    assert got_state == state and words in message
    if state in ("no_driver", "no_device"):
        assert "insufficient" not in message and "update" not in message


def test_the_report_of_a_cpu_machine_says_cpu_only_not_update_your_driver():
    report = info.collect(driver=probe(None))
    text = info.format_report(report)
    assert report["cuda"]["state"] == "no_driver" and "GPU           none: CPU only" in text
    assert "insufficient" not in text.lower() and "update" not in text.lower()
    broken = info.format_report(info.collect(driver=probe(FakeLibcuda(init=999))))
    if report["gpu"] is None:  # on a GPU machine torch still sees its GPU whatever the fake says
        assert "none usable: NVIDIA driver 12.4 is installed but does not start" in broken


def test_a_cuda_build_of_the_extension_on_a_machine_without_a_driver_reports_no_driver(monkeypatch):
    class FakeNative:
        @staticmethod
        def has_cuda():
            return True

        @staticmethod
        def cuda_unavailable_reason():
            return "CUDA is not usable: CUDA driver version is insufficient for CUDA runtime version"

    import elasticast_kernels

    monkeypatch.setattr(elasticast_kernels, "_C", FakeNative, raising=False)
    monkeypatch.setitem(sys.modules, "elasticast_kernels._C", FakeNative)
    state, message = info.cuda_status(probe(None), "12.4")
    native = info._native_extension(state, message)
    assert native["cuda"] and not native["cuda_usable"]
    assert native["reason"].startswith("no NVIDIA driver") and "insufficient" in native["runtime_says"]
    driver_problem = info._native_extension(*info.cuda_status(probe(FakeLibcuda(version=12040)), "12.4"))
    assert "insufficient" in driver_problem["reason"]  # a driver is there: the runtime's words stand


def test_the_real_probe_on_this_machine_is_consistent_with_torch():
    import torch

    driver = info._probe_driver()
    state, _ = info.cuda_status(driver, torch.version.cuda)
    if torch.cuda.is_available():
        assert state in ("ok", "driver_too_old")
    if not driver["loaded"]:
        assert state == "no_driver" and not torch.cuda.is_available()


def test_extras_are_listed_with_versions_or_the_install_line(monkeypatch):
    extras = info.installed_extras()
    assert set(extras) == {extra for extra in EXTRAS.values() if extra != "dev"}
    assert {"audio", "bench", "plot", "hf", "xformers", "flash"} <= set(extras)
    for name, extra in extras.items():
        assert extra["install"] == f'pip install "elasticast-kernels[{name}]"'
        assert extra["installed"] == all(version is not None for version in extra["packages"].values())
    pytest.importorskip("soundfile")
    assert extras["audio"]["installed"] and extras["audio"]["packages"]["soundfile"][0].isdigit()

    real_find_spec = info.importlib.util.find_spec
    monkeypatch.setattr(info.importlib.util, "find_spec", lambda name: None if name == "soxr" else real_find_spec(name))
    report = info.collect()
    assert not report["extras"]["audio"]["installed"] and report["extras"]["audio"]["packages"]["soxr"] is None
    text = info.format_report(report)
    assert 'audio     not installed (no soxr): pip install "elasticast-kernels[audio]"' in text


def test_the_command_prints_the_cuda_state_and_extras(capsys):
    assert info.main([]) == 0
    text = capsys.readouterr().out
    assert "  CUDA          " in text and "  extras:" in text and "    audio" in text
    assert info.main(["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cuda"]["state"] in ("no_driver", "no_device", "ok", "driver_too_old", "driver_error")
    assert "audio" in report["extras"] and isinstance(report["extras"]["audio"]["installed"], bool)
