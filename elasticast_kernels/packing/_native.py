"""Access to the native extension ``elasticast_kernels._C``, if it was built.

``ELASTICAST_NO_NATIVE=1`` (read at call time) hides the extension, so the pure Python / torch
fallbacks can be exercised on a machine where it is installed.
"""
from __future__ import annotations

import os
from types import ModuleType

try:  # the package still works without a compiler: every caller has a fallback
    from elasticast_kernels import _C as _EXTENSION
except ImportError:  # pragma: no cover - depends on how the package was installed
    _EXTENSION = None


def native() -> ModuleType | None:
    """The extension module, or None when it is missing or disabled."""
    if os.environ.get("ELASTICAST_NO_NATIVE", "0") not in ("", "0"):
        return None
    return _EXTENSION


_cuda_reason: str | None = None


def native_cuda() -> ModuleType | None:
    """The extension when its CUDA gather can run here (compiled in and a driver/device found)."""
    global _cuda_reason
    ext = native()
    if ext is None or not ext.has_cuda():
        return None
    if _cuda_reason is None:  # asks the driver once
        _cuda_reason = ext.cuda_unavailable_reason()
    return ext if _cuda_reason == "" else None
