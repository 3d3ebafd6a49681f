"""Where an op runs: the Triton kernels or the plain torch path.

Triton runs for CUDA tensors, and for CPU tensors when ``TRITON_INTERPRET=1`` is set (the
interpreter is how the kernels are tested without a GPU). Triton decides interpreted vs compiled
when a kernel module is imported, so the variable must be set before importing this package.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when ``import triton`` works (it is absent on macOS/Windows wheels)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_interpret() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set (read at call time, so tests can toggle the CPU path)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether an op on ``tensor`` should launch the Triton kernels."""
    if not triton_available():
        return False
    if tensor.is_cuda:
        return True
    return tensor.device.type == "cpu" and triton_interpret()


def on_device(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it ``tensor``'s (multi-GPU safety)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
