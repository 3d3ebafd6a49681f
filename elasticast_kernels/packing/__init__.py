"""Packing for ElasticAST: which samples share a pack (plans) and the packed patch tensors.

    plan = pack_lengths(token_counts, max_tokens=2048, strategy="histogram")
    batch = pack_spectrograms(specs, patch_size=16, plan=plan)   # PackedBatch
    per_sample = unpack(batch.patches, batch.cu_seqlens)

Plans and gathers run in the native extension ``elasticast_kernels._C`` when it is built, with
pure Python / torch fallbacks otherwise (``has_native()`` says which).
"""
from __future__ import annotations

from ._native import native as _native
from ._native import native_cuda as _native_cuda
from .batch import PackedBatch
from .plans import STRATEGIES, PackPlan, as_lengths, pack_lengths, pack_order
from .tensors import pack_spectrograms, patchify, unpack


def has_native() -> bool:
    """True when the C++ extension is importable (and not disabled by ELASTICAST_NO_NATIVE=1)."""
    return _native() is not None


def has_native_cuda() -> bool:
    """True when the extension's CUDA gather can run on this machine."""
    return _native_cuda() is not None


__all__ = [
    "STRATEGIES",
    "PackPlan",
    "PackedBatch",
    "as_lengths",
    "has_native",
    "has_native_cuda",
    "pack_lengths",
    "pack_order",
    "pack_spectrograms",
    "patchify",
    "unpack",
]
