"""Build the native extension ``elasticast_kernels._C`` with CMake + Ninja.

Environment variables:
  ELASTICAST_CUDA        auto (default) | 0 | 1   compile the CUDA sources in csrc/ (auto: when nvcc is found)
  ELASTICAST_CUDA_ARCHS  "80;90" by default        CUDA architectures to compile for
  MAX_JOBS               parallel compile jobs      (default: all cores)
  CMAKE_BUILD_TYPE       Release by default
  ELASTICAST_BUILD_DIR   CMake build folder (default: build/cmake-<hash of the toolchain> in the
                         source tree, kept between builds so a rebuild only recompiles what changed)
"""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _find_nvcc() -> str | None:
    nvcc = shutil.which("nvcc")
    if nvcc:
        return nvcc
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return None


def _cuda_setting() -> tuple[bool, str | None]:
    choice = os.environ.get("ELASTICAST_CUDA", "auto").strip().lower()
    if choice not in {"auto", "0", "1"}:
        raise ValueError(f"ELASTICAST_CUDA must be auto, 0 or 1, got {choice!r}")
    nvcc = _find_nvcc() if choice != "0" else None
    if choice == "1" and nvcc is None:
        raise RuntimeError("ELASTICAST_CUDA=1 but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    return nvcc is not None, nvcc


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _build_dir(fallback: Path, with_cuda: bool, nvcc: str | None, pybind11_dir: str) -> Path:
    """A persistent CMake folder per toolchain (interpreter, pybind11, CUDA choice and archs), so
    editable reinstalls are incremental and a cache never mixes two toolchains."""
    if os.environ.get("ELASTICAST_BUILD_DIR"):
        return Path(os.environ["ELASTICAST_BUILD_DIR"]).resolve()
    key = "|".join([sys.executable, sys.version, pybind11_dir, str(with_cuda), str(nvcc),
                    os.environ.get("ELASTICAST_CUDA_ARCHS", "80;90"), os.environ.get("CMAKE_BUILD_TYPE", "Release")])
    folder = ROOT / "build" / f"cmake-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:  # read-only source tree
        return fallback


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        with_cuda, nvcc = _cuda_setting()
        import pybind11

        build_dir = _build_dir(Path(self.build_temp).resolve() / ext.name, with_cuda, nvcc, pybind11.get_cmake_dir())
        build_dir.mkdir(parents=True, exist_ok=True)

        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('CMAKE_BUILD_TYPE', 'Release')}",
            f"-DELASTICAST_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DELASTICAST_CUDA_ARCHS={os.environ.get('ELASTICAST_CUDA_ARCHS', '80;90')}",
            "-G", "Ninja",
        ]
        if with_cuda:
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        print(f"elasticast-kernels: building the native extension, CUDA {'on (' + nvcc + ')' if with_cuda else 'off'}")
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


setup(ext_modules=[CMakeExtension("elasticast_kernels._C")], cmdclass={"build_ext": CMakeBuild})
