"""The kernel cases: what the static report and the AOT tests compile (one list for both).

Varlen attention: every kernel x autotune candidate x arch x dtype x head_dim x feature variant.
Pooling: the configurations the launchers pick. Signatures are derived from the kernels'
argument names, as Triton's runtime would specialise a launch on torch tensors: data pointers in
the op's dtype, log-sum-exp/delta buffers fp32, offsets and schedules int32, every pointer and
stride marked 16-divisible (torch allocations are aligned and the kernels' strides are multiples
of 16 at the kernels' head_dims), and an integer argument equal to 1 compiled as the constant 1
(``group`` without grouped heads).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from tools.static_report.compile import Job

VARLEN_MODULE = "elasticast_kernels.ops.varlen_attention_kernels"
ARCHS = (80, 90)
DTYPES = ("fp16", "bf16")
HEAD_DIMS = (32, 64, 128, 256)
TILE_ROWS, TILE_COLS = 128, 64  # instructions are normalised to one 128 x 64 score tile
# tensor-core work per score tile of BLOCK_M x BLOCK_N x head_dim, in GEMMs of that size:
# fwd S = QK^T, O += PV; dK/dV S^T, dV += P^T dO, dP^T = V dO^T, dK += dS^T Q; dQ S, dP, dQ += dS K
# (above _DKDV_SPLIT_HEAD_DIM the dK/dV kernel runs as a dV pass, S and dV += P^T dO, and a dK pass)
GEMMS_PER_TILE = {"fwd": 2, "dkdv": 4, "dv": 2, "dk": 3, "dq": 3}
_FP32_POINTERS = {"LSE", "DELTA"}
_FP32_SCALARS = {"qk_scale", "sm_scale", "cap_scale", "cap_log2"}

# Feature variants of the varlen kernels: their constexprs, and whether ``group`` is a runtime
# value (grouped heads) or the constant 1. "plain" is ElasticAST's self-attention.
_OFF = dict(WINDOW_LEFT=False, WINDOW_RIGHT=False, CROSS=False, SOFTCAP=False, GROUPED=False)
VARIANTS: dict[str, tuple[dict[str, bool], bool]] = {
    "plain": (_OFF, False),
    "causal": ({**_OFF, "WINDOW_RIGHT": True}, False),
    "window": ({**_OFF, "WINDOW_LEFT": True, "WINDOW_RIGHT": True}, False),
    "softcap": ({**_OFF, "SOFTCAP": True}, False),
    "gqa_cross": ({**_OFF, "WINDOW_RIGHT": True, "CROSS": True, "GROUPED": True}, True),
    "all": (dict(WINDOW_LEFT=True, WINDOW_RIGHT=True, CROSS=True, SOFTCAP=True, GROUPED=True), True),
}
_CONSTEXPR_DEFAULTS = {"DOT_PRECISION": "tf32", "NEG_SCALE": False, "TRIPS": None}

# Spills the varlen kernels accept knowingly, per head_dim: (bytes, local-memory accesses per main-loop
# iteration). At head_dim 256 the fp32 accumulator alone takes 128 of ptxas' 255 registers per thread
# (16 rows per mma.sync warp, or 64 per wgmma warpgroup, x 256 columns / 32 lanes), so every tile with
# minimal tensor-core work runs at the cap, and a smaller tile cannot help (its rows per warp are
# already the MMA minimum). The values that do not fit are mostly loop-invariant; the report counts
# the local-memory accesses left inside the main loop. The AOT tests hold every case to these bounds.
VARLEN_ACCEPTED_SPILLS = {256: (128, 8)}


@dataclass(frozen=True)
class Case:
    """One compile of the report, with what the metrics need besides the compile result."""

    kernel: str  # "fwd", "dkdv", "dq", "preprocess" or a pooling kernel's name
    arch: int
    dtype: str
    head_dim: int
    variant: str  # a key of VARIANTS for the varlen kernels; "plain" or "int64" for pooling
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    default: bool  # the first autotune candidate (what a launch without tuning would use)
    job: Job

    def label(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "arch": self.arch, "dtype": self.dtype, "head_dim": self.head_dim,
                "variant": self.variant, "block_m": self.block_m, "block_n": self.block_n,
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


def varlen_signature(kernel: Any, dtype: str, grouped: bool = False) -> tuple[dict[str, str], list[str]]:
    """Triton types of ``kernel``'s arguments and the names to mark 16-divisible."""
    types = {}
    for name, param in inspect.signature(raw_function(kernel)).parameters.items():
        if "constexpr" in str(param.annotation) or name == "TRIPS" or (name == "group" and not grouped):
            types[name] = "constexpr"
        elif name in _FP32_POINTERS:
            types[name] = "*fp32"
        elif name.isupper() and (name.startswith("CU") or name.startswith("SCHED")):
            types[name] = "*i32"
        elif name.isupper():
            types[name] = f"*{dtype}"
        elif name in _FP32_SCALARS:
            types[name] = "fp32"
        else:
            types[name] = "i32"
    divisible = [n for n, t in types.items() if t.startswith("*") or n.startswith("stride")]
    return types, divisible


def _constexprs(kernel: Any, types: dict[str, str], given: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(raw_function(kernel)).parameters
    values = {k: v for k, v in _CONSTEXPR_DEFAULTS.items() if k in params}
    if types.get("group") == "constexpr":
        values["group"] = 1
    values.update((k, v) for k, v in given.items() if k in params)
    return values


def varlen_cases(archs: Iterable[int] = ARCHS, dtypes: Iterable[str] = DTYPES,
                 head_dims: Iterable[int] = HEAD_DIMS, variants: Iterable[str] = tuple(VARIANTS),
                 defaults_only: bool = False, kernels: Iterable[str] = ("fwd", "dkdv", "dq", "preprocess")
                 ) -> Iterator[Case]:
    """Every autotune candidate of the varlen kernels (the candidate lists the module holds)."""
    from elasticast_kernels.ops import varlen_attention_kernels as module

    functions = {"fwd": module._fwd_kernel, "dkdv": module._bwd_dkdv_kernel, "dq": module._bwd_dq_kernel}
    archs, dtypes, head_dims, variants, kernels = (tuple(x) for x in (archs, dtypes, head_dims, variants, kernels))
    for arch in archs:
        family = module.arch_family((arch // 10, arch % 10))
        for name in (k for k in functions if k in kernels):
            function = functions[name]
            for head_dim in head_dims:
                passes = {name: 3}
                if name == "dkdv" and head_dim > module._DKDV_SPLIT_HEAD_DIM:
                    passes = {"dv": 1, "dk": 2}
                for variant in variants:
                    flags, grouped = VARIANTS[variant]
                    heavy = module.heavy_features(flags["WINDOW_LEFT"], flags["SOFTCAP"], grouped)
                    configs = module.gpu_configs(name, head_dim, family, heavy)
                    for index, config in enumerate(configs[:1] if defaults_only else configs):
                        for dtype in dtypes:
                            types, divisible = varlen_signature(function, dtype, grouped)
                            for label, outputs in passes.items():
                                consts = _constexprs(function, types, dict(HEAD_DIM=head_dim, OUTPUTS=outputs, **flags,
                                                                           **config.kwargs))
                                job = Job(VARLEN_MODULE, raw_function(function).__name__, types, consts, arch,
                                          config.num_warps, config.num_stages, divisible)
                                yield Case(label, arch, dtype, head_dim, variant, config.kwargs["BLOCK_M"],
                                           config.kwargs["BLOCK_N"], config.num_warps, config.num_stages,
                                           index == 0, job)
        if "preprocess" not in kernels:
            continue
        for dtype in dtypes:
            for head_dim in head_dims:
                types, divisible = varlen_signature(module._bwd_preprocess_kernel, dtype)
                block = module._PREPROCESS_BLOCK
                job = Job(VARLEN_MODULE, "_bwd_preprocess_kernel", types, dict(HEAD_DIM=head_dim, BLOCK=block),
                          arch, 4, 1, divisible)
                yield Case("preprocess", arch, dtype, head_dim, "plain", block, head_dim, 4, 1, True, job)


# --- pooling kernels ----------------------------------------------------------------------------

POOL_MODULE = "elasticast_kernels.ops.segment_pool_kernels"
POOL_WIDTH = 768  # segment-mean width: a ViT-B embedding (12 heads x 64)
POOL_HEAD_DIMS = (32, 64, 128, 256)
_POOL_DATA_POINTERS = {"Q", "K", "V", "OUT", "DOUT", "DK", "DV", "X", "DX"}
# spills the pooling launchers accept knowingly (see segment_pool_kernels.pool_config): case -> bytes
POOL_KNOWN_SPILLS = {("_pool_fwd_partial_kernel", 80, "bf16", 128, "plain"): 8}
POOL_ATTENTION_KERNELS = ("_pool_fwd_partial_kernel", "_pool_bwd_kernel", "_pool_combine_kernel")
POOL_MEAN_KERNELS = ("_segment_sum_partial_kernel", "_segment_mean_bwd_kernel", "_slot_sum_kernel")


def accepted_spill(row: dict) -> str | None:
    """Why a report row's spill is accepted (None: it is not, or the row does not spill): the
    head_dim bound of `VARLEN_ACCEPTED_SPILLS` or the pooling entry of `POOL_KNOWN_SPILLS`."""
    if not row["spill_bytes"]:
        return None
    pooled = POOL_KNOWN_SPILLS.get((row["kernel"], row["arch"], row["dtype"], row["head_dim"], row["variant"]))
    if pooled is not None:
        within = row["spill_bytes"] <= pooled
        return f"pooling: at most {pooled} B (segment_pool_kernels.pool_config)" if within else None
    bound = None if row["kernel"].startswith("_") else VARLEN_ACCEPTED_SPILLS.get(row["head_dim"])
    if bound is None or row["spill_bytes"] > bound[0] or (row.get("loop_spill_ops") or 0) > bound[1]:
        return None
    return f"head_dim {row['head_dim']}: at most {bound[0]} B and {bound[1]} loop accesses"


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


def pool_cases(archs: Iterable[int] = ARCHS, dtypes: Iterable[str] = DTYPES,
               head_dims: Iterable[int] = POOL_HEAD_DIMS, mean: bool = True, int64_index: bool = True
               ) -> Iterator[Case]:
    """The configurations the pooling launchers pick on a GPU, for each kernel: the attention-pooling
    kernels per head_dim (and, with ``int64_index``, the variant for tensors past 2^31 elements at
    head_dim 64), the segment-mean kernels (``mean``) at width 768."""
    import torch

    from elasticast_kernels.ops import segment_pool_kernels as kernels

    cuda = torch.device("cuda")  # only read by the config pickers; nothing runs on it
    merge_block = kernels._merge_block(cuda)

    def case(name, arch, dtype, head_dim, consts, block_m, block_n, warps, variant="plain"):
        types, divisible = pool_signature(getattr(kernels, name), dtype)
        job = Job(POOL_MODULE, name, types, consts, arch, warps, 1, divisible)
        return Case(name, arch, dtype, head_dim, variant, block_m, block_n, warps, 1, True, job)

    for arch in archs:
        for dtype in dtypes:
            for head_dim in head_dims:
                for wide in (False, True) if int64_index and head_dim == 64 else (False,):
                    for name, backward in (("_pool_fwd_partial_kernel", False), ("_pool_bwd_kernel", True)):
                        block_n, block_d, warps = kernels.pool_config(head_dim, cuda, backward=backward)
                        consts = dict(HEAD_DIM=head_dim, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_B=kernels._BLOCK_B,
                                      INT64_INDEX=wide)
                        yield case(name, arch, dtype, head_dim, consts, block_n, block_d, warps,
                                   "int64" if wide else "plain")
                block_d = kernels.pool_config(head_dim, cuda, backward=False)[1]
                consts = dict(HEAD_DIM=head_dim, BLOCK_S=merge_block, BLOCK_D=block_d)
                yield case("_pool_combine_kernel", arch, dtype, head_dim, consts, merge_block, block_d, 4)
            if not mean:
                continue
            block_n, block_w, warps = kernels.mean_config(POOL_WIDTH, cuda)
            mean_consts = dict(BLOCK_N=block_n, BLOCK_W=block_w, BLOCK_B=kernels._BLOCK_B, INT64_INDEX=False)
            for name in ("_segment_sum_partial_kernel", "_segment_mean_bwd_kernel"):
                yield case(name, arch, dtype, POOL_WIDTH, mean_consts, block_n, block_w, warps)
            block_w = kernels._slot_sum_block(POOL_WIDTH, cuda)
            consts = dict(MEAN=True, BLOCK_S=merge_block, BLOCK_W=block_w)
            yield case("_slot_sum_kernel", arch, dtype, POOL_WIDTH, consts, merge_block, block_w, 4)


def all_cases(tiny: bool = False, defaults_only: bool = False, dtypes: Iterable[str] = DTYPES) -> list[Case]:
    """The report's sweep: every varlen candidate x variant x head_dim and the pooling cases, in
    ``dtypes``; ``defaults_only``: the first candidate of each list; ``tiny``: the plain default
    configs at head_dim 64, sm_90, bf16."""
    if tiny:
        return [*varlen_cases(archs=(90,), dtypes=("bf16",), head_dims=(64,), variants=("plain",),
                              defaults_only=True),
                *pool_cases(archs=(90,), dtypes=("bf16",), head_dims=(64,), int64_index=False)]
    dtypes = tuple(dtypes)
    return [*varlen_cases(dtypes=dtypes, defaults_only=defaults_only), *pool_cases(dtypes=dtypes)]
