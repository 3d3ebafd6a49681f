"""Build the native extension ``elasticast_kernels._C`` with CMake + Ninja.

Environment variables:
  ELASTICAST_CUDA        auto (default) | 0 | 1   compile the CUDA sources in csrc/ (auto: when nvcc is found)
  ELASTICAST_CUDA_ARCHS  "80;90" by default        CUDA architectures to compile for
  MAX_JOBS               parallel compile jobs      (default: all cores)
  CMAKE_BUILD_TYPE       Release by default
  ELASTICAST_BUILD_DIR   CMake build folder (default: build/cmake-<hash of the toolchain> in the
                         source tree, kept between builds so a rebuild only recompiles what changed)

Rebuilds are safe while the package is in use: CMake links the module inside its build folder,
and the result reaches the place setuptools expects (``get_ext_fullpath``: build/lib..., or the
source tree for editable/in-place builds) by a copy to a temporary name in the destination folder
plus ``os.replace``. A running process keeps its mapped (old) file; a new one sees either the
old or the new file, never a half-written one. An unchanged module is left alone.
"""
import filecmp
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
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


def _install_atomically(src: Path, dest: Path) -> bool:
    """Copy ``src`` to ``dest`` via a temporary file in ``dest``'s folder and an atomic rename.

    Writing into a loaded shared library in place makes the processes that mapped it crash;
    renaming a new file over it does not (they keep the old inode). Returns False, touching
    nothing, when ``dest`` already has the same bytes.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and filecmp.cmp(src, dest, shallow=False):
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
        shutil.copymode(src, tmp)  # mkstemp makes 0600; the module needs the linker's 0755
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


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
        dest = Path(self.get_ext_fullpath(ext.name)).resolve()
        with_cuda, nvcc = _cuda_setting()
        import pybind11

        build_dir = _build_dir(Path(self.build_temp).resolve() / ext.name, with_cuda, nvcc, pybind11.get_cmake_dir())
        build_dir.mkdir(parents=True, exist_ok=True)
        lib_dir = build_dir / "lib"  # the linker writes here, never over a module in use

        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={lib_dir}{os.sep}",
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
        built = self._built_module(lib_dir, ext.name.rpartition(".")[2], dest.name)
        changed = _install_atomically(built, dest)
        print(f"elasticast-kernels: {'installed' if changed else 'unchanged'} {dest}")

    @staticmethod
    def _built_module(lib_dir: Path, stem: str, expected: str) -> Path:
        """The module CMake linked: ``expected`` (setuptools' file name) or, if pybind11 chose
        another suffix, the newest ``<stem>.*`` shared library in ``lib_dir``."""
        if (lib_dir / expected).is_file():
            return lib_dir / expected
        found = [p for p in lib_dir.glob(f"{stem}.*") if p.suffix in (".so", ".pyd", ".dylib")]
        if not found:
            raise RuntimeError(f"CMake built no {stem} module in {lib_dir}")
        return max(found, key=lambda p: p.stat().st_mtime)

    def copy_file(self, infile, outfile, *args, **kwargs):
        """Atomic replacement for the in-place copy of editable/--inplace builds
        (``copy_extensions_to_source``), which would otherwise rewrite the source tree's module."""
        src, dest = Path(infile), Path(outfile)
        if dest.is_dir():
            dest = dest / src.name
        if not src.is_file() or dest.suffix not in (".so", ".pyd", ".dylib"):
            return super().copy_file(infile, outfile, *args, **kwargs)
        _install_atomically(src, dest)
        return str(dest), True


setup(ext_modules=[CMakeExtension("elasticast_kernels._C")], cmdclass={"build_ext": CMakeBuild})
