"""elasticast-kernels: packed varlen attention, fused segment pooling and a native packer for ElasticAST.

Public names are imported lazily, so ``import elasticast_kernels`` stays cheap and a missing
optional dependency only matters for the name that needs it.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "varlen_attention": "elasticast_kernels.ops",
    "flash_attn_varlen_func": "elasticast_kernels.ops",
    "segment_attention_pool": "elasticast_kernels.ops",
    "segment_mean": "elasticast_kernels.ops",
    "AttentionPool": "elasticast_kernels.modules",
    "pack_lengths": "elasticast_kernels.packing",
    "PackPlan": "elasticast_kernels.packing",
    "pack_spectrograms": "elasticast_kernels.packing",
    "PackedBatch": "elasticast_kernels.packing",
    "unpack": "elasticast_kernels.packing",
    "ElasticAST": "elasticast_kernels.models",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'elasticast_kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
