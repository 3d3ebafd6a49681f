"""What the static report compiles: every kernel x autotune candidate x arch x dtype x head_dim x causal.

Signatures are derived from the kernels' argument names, as Triton's runtime would specialise a
launch on torch tensors: data pointers in the op's dtype, log-sum-exp/delta buffers fp32, offsets
and schedules int32, every pointer and stride marked 16-divisible (torch allocations are aligned
and the kernels' strides are multiples of 16 at head_dim 32/64/128).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterator

from elasticast_kernels.bench.static.compile import Job

VARLEN_MODULE = "elasticast_kernels.ops.varlen_attention_kernels"
ARCHS = (80, 90)
DTYPES = ("fp16", "bf16")
HEAD_DIMS = (32, 64, 128)
TILE_ROWS, TILE_COLS = 128, 64  # instructions are normalised to one 128 x 64 score tile
# tensor-core work per score tile of BLOCK_M x BLOCK_N x head_dim, in GEMMs of that size:
# fwd S = QK^T, O += PV; dK/dV S^T, dV += P^T dO, dP^T = V dO^T, dK += dS^T Q; dQ S, dP, dQ += dS K
GEMMS_PER_TILE = {"fwd": 2, "dkdv": 4, "dq": 3}
_FP32_POINTERS = {"LSE", "DELTA"}
_CONSTEXPR_DEFAULTS = {"DOT_PRECISION": "tf32", "NEG_SCALE": False}


@dataclass(frozen=True)
class Case:
    """One compile of the report, with what the metrics need besides the compile result."""

    kernel: str  # "fwd", "dkdv", "dq", "preprocess" or a pooling kernel's name
    arch: int
    dtype: str
    head_dim: int
    causal: bool
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    default: bool  # the first autotune candidate (what a launch without tuning would use)
    job: Job

    def label(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "arch": self.arch, "dtype": self.dtype, "head_dim": self.head_dim,
                "causal": self.causal, "block_m": self.block_m, "block_n": self.block_n,
                "num_warps": self.num_warps, "num_stages": self.num_stages, "default": self.default}

    @property
    def min_macs_per_iteration(self) -> int | None:
        gemms = GEMMS_PER_TILE.get(self.kernel)
        return None if gemms is None else gemms * self.block_m * self.block_n * self.head_dim

    @property
    def tile_scale(self) -> float:
        """Main-loop iterations per 128 x 64 score tile."""
        return TILE_ROWS * TILE_COLS / (self.block_m * self.block_n)


def raw_function(kernel: Any) -> Any:
    while not inspect.isfunction(kernel):
        kernel = kernel.fn  # autotune, jit or interpreter wrappers
    return kernel


def varlen_signature(kernel: Any, dtype: str) -> tuple[dict[str, str], list[str]]:
    """Triton types of ``kernel``'s arguments and the names to mark 16-divisible."""
    types = {}
    for name, param in inspect.signature(raw_function(kernel)).parameters.items():
        if "constexpr" in str(param.annotation):
            types[name] = "constexpr"
        elif name in _FP32_POINTERS:
            types[name] = "*fp32"
        elif name.isupper() and (name.startswith("CU") or name.startswith("SCHED")):
            types[name] = "*i32"
        elif name.isupper():
            types[name] = f"*{dtype}"
        elif name.endswith("scale"):
            types[name] = "fp32"
        else:
            types[name] = "i32"
    divisible = [n for n, t in types.items() if t.startswith("*") or n.startswith("stride")]
    return types, divisible


def _constexprs(kernel: Any, given: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(raw_function(kernel)).parameters
    values = {k: v for k, v in _CONSTEXPR_DEFAULTS.items() if k in params}
    values.update(given)
    return values


def varlen_cases(archs=ARCHS, dtypes=DTYPES, head_dims=HEAD_DIMS, causals=(False, True),
                 defaults_only: bool = False) -> Iterator[Case]:
    """Every autotune candidate of the varlen kernels (the candidate lists the module holds)."""
    from elasticast_kernels.ops import varlen_attention_kernels as kernels

    functions = {"fwd": kernels._fwd_kernel, "dkdv": kernels._bwd_dkdv_kernel, "dq": kernels._bwd_dq_kernel}
    for arch in archs:
        family = kernels.arch_family((arch // 10, arch % 10))
        for name, function in functions.items():
            for head_dim in head_dims:
                configs = kernels.gpu_configs(name, head_dim, family)
                for index, config in enumerate(configs[:1] if defaults_only else configs):
                    for dtype in dtypes:
                        types, divisible = varlen_signature(function, dtype)
                        for causal in causals:
                            consts = _constexprs(function, dict(HEAD_DIM=head_dim, CAUSAL=causal, **config.kwargs))
                            job = Job(VARLEN_MODULE, raw_function(function).__name__, types, consts, arch,
                                      config.num_warps, config.num_stages, divisible)
                            yield Case(name, arch, dtype, head_dim, causal, config.kwargs["BLOCK_M"],
                                       config.kwargs["BLOCK_N"], config.num_warps, config.num_stages,
                                       index == 0, job)
        for dtype in dtypes:
            for head_dim in head_dims:
                types, divisible = varlen_signature(kernels._bwd_preprocess_kernel, dtype)
                block = getattr(kernels, "_PREPROCESS_BLOCK", 64)
                job = Job(VARLEN_MODULE, "_bwd_preprocess_kernel", types, dict(HEAD_DIM=head_dim, BLOCK=block),
                          arch, 4, 1, divisible)
                yield Case("preprocess", arch, dtype, head_dim, False, block, head_dim, 4, 1, True, job)


# --- pooling kernels ----------------------------------------------------------------------------

POOL_MODULE = "elasticast_kernels.ops.segment_pool_kernels"
POOL_WIDTH = 768  # segment-mean width: a ViT-B embedding (12 heads x 64)
_POOL_DATA_POINTERS = {"Q", "K", "V", "OUT", "DOUT", "DK", "DV", "X", "DX"}


def pool_signature(kernel: Any, dtype: str) -> tuple[dict[str, str], list[str]]:
    """Triton types of a pooling kernel's arguments: data in ``dtype``, ``CU`` int32, partials fp32."""
    types = {}
    for name, param in inspect.signature(raw_function(kernel)).parameters.items():
        if "constexpr" in str(param.annotation):
            types[name] = "constexpr"
        elif name.isupper():
            types[name] = f"*{dtype}" if name in _POOL_DATA_POINTERS else ("*i32" if name == "CU" else "*fp32")
        else:
            types[name] = "fp32" if "scale" in name else "i32"
    divisible = [n for n, t in types.items() if t.startswith("*") or n.startswith("stride") or n == "width"]
    return types, divisible


def _pool_pickers(kernels: Any) -> tuple[Any, Any, Any, Any, int]:
    """(pool_config, mean_config, merge_block, slot_sum_block, BLOCK_B) wherever this checkout keeps them
    (``segment_pool_kernels``; ``segment_pool`` with a leading underscore before the move)."""
    if hasattr(kernels, "pool_config"):
        home, prefix = kernels, ""
    else:
        from elasticast_kernels.ops import segment_pool as home  # the layout up to 9b590a3
        prefix = "_"
    return (getattr(home, f"{prefix}pool_config"), getattr(home, f"{prefix}mean_config"), home._merge_block,
            home._slot_sum_block, home._BLOCK_B)


def pool_cases(archs=ARCHS, dtypes=DTYPES, head_dims=HEAD_DIMS) -> Iterator[Case]:
    """The configurations the pooling launchers pick on a GPU, for each kernel."""
    import torch

    from elasticast_kernels.ops import segment_pool_kernels as kernels

    cuda = torch.device("cuda")  # only read by the config pickers; nothing runs on it
    pool_config, mean_config, merge_block, slot_sum_block, block_b = _pool_pickers(kernels)

    def case(name, arch, dtype, head_dim, consts, block_m, block_n, warps):
        function = getattr(kernels, name)
        types, divisible = pool_signature(function, dtype)
        job = Job(POOL_MODULE, name, types, consts, arch, warps, 1, divisible)
        return Case(name, arch, dtype, head_dim, False, block_m, block_n, warps, 1, True, job)

    for arch in archs:
        for dtype in dtypes:
            for head_dim in head_dims:
                for name, backward in (("_pool_fwd_partial_kernel", False), ("_pool_bwd_kernel", True)):
                    block_n, block_d, warps = pool_config(head_dim, cuda, backward=backward)
                    consts = dict(HEAD_DIM=head_dim, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_B=block_b,
                                  INT64_INDEX=False)
                    yield case(name, arch, dtype, head_dim, consts, block_n, block_d, warps)
                block_d = pool_config(head_dim, cuda, backward=False)[1]
                consts = dict(HEAD_DIM=head_dim, BLOCK_S=merge_block(cuda), BLOCK_D=block_d)
                yield case("_pool_combine_kernel", arch, dtype, head_dim, consts, merge_block(cuda), block_d, 4)
            block_n, block_w, warps = mean_config(POOL_WIDTH, cuda)
            mean_consts = dict(BLOCK_N=block_n, BLOCK_W=block_w, BLOCK_B=block_b, INT64_INDEX=False)
            for name in ("_segment_sum_partial_kernel", "_segment_mean_bwd_kernel"):
                yield case(name, arch, dtype, POOL_WIDTH, mean_consts, block_n, block_w, warps)
            block_w = slot_sum_block(POOL_WIDTH, cuda)
            consts = dict(MEAN=True, BLOCK_S=merge_block(cuda), BLOCK_W=block_w)
            yield case("_slot_sum_kernel", arch, dtype, POOL_WIDTH, consts, merge_block(cuda), block_w, 4)
