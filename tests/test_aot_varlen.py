"""Ahead-of-time compile of the varlen attention kernels for sm_80 (A100) and sm_90 (H100).

No GPU needed: the kernels compile with Triton's NVIDIA backend and the resource usage is read
from the cubin (tests/aot.py). Each kernel's default config (the first autotune candidate of the
arch's family) at head_dim 64 and, for the backward, 128, in fp16 and bf16, must compile without
spilling registers; the table of registers and shared memory is printed (``pytest -s`` shows it).

Set ``ELASTICAST_AOT_PYTHONS`` to other interpreters (``os.pathsep``-separated) to compile with
their Triton as well, e.g. a Triton 3.6 environment. ``ELASTICAST_AOT_ALL=1`` also compiles every
autotune candidate, causal and not (about 70 compiles: minutes, so off by default).
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
    pytest.skip("this triton has no NVIDIA backend tools", allow_module_level=True)

from aot import AotRequest, _raw_function, compile_reports  # noqa: E402
from elasticast_kernels.ops import varlen_attention_kernels as kernels  # noqa: E402

ARCHS = (80, 90)
DTYPES = ("fp16", "bf16")
# kernel name -> (kernel, head_dims checked by default)
KERNELS = {
    "fwd": (kernels._fwd_kernel, (64,)),
    "dkdv": (kernels._bwd_dkdv_kernel, (64, 128)),
    "dq": (kernels._bwd_dq_kernel, (64, 128)),
}
PYTHONS = [None] + [p for p in os.environ.get("ELASTICAST_AOT_PYTHONS", "").split(os.pathsep) if p]


def signature(kernel, dtype: str) -> tuple[dict[str, str], list[str]]:
    """Triton types of every argument, and the ones Triton's runtime would mark 16-divisible.

    Data pointers are torch allocations (aligned); every stride is a multiple of 16 at the
    kernel head_dims (token strides are multiples of heads * head_dim, the log-sum-exp rows are
    padded to 16), so they are marked too, as the runtime specialisation would.
    """
    types = {}
    for name, param in inspect.signature(_raw_function(kernel)).parameters.items():
        if "constexpr" in str(param.annotation):
            types[name] = "constexpr"
        elif name in ("LSE", "DELTA"):
            types[name] = "*fp32"
        elif name == "CU_SEQLENS":
            types[name] = "*i32"
        elif name.isupper():
            types[name] = f"*{dtype}"
        elif name.endswith("scale"):
            types[name] = "fp32"
        else:
            types[name] = "i32"
    divisible = [n for n, t in types.items() if t.startswith("*") or n.startswith("stride")]
    return types, divisible


def request(kind: str, head_dim: int, dtype: str, arch: int, config, causal: bool = False) -> AotRequest:
    kernel = KERNELS[kind][0]
    types, divisible = signature(kernel, dtype)
    constexprs = dict(HEAD_DIM=head_dim, CAUSAL=causal, DOT_PRECISION="tf32", **config.kwargs)
    return AotRequest(kernel, types, constexprs, arch, config.num_warps, config.num_stages, divisible)


def default_config(kind: str, head_dim: int, arch: int):
    return kernels.gpu_configs(kind, head_dim, kernels.arch_family((arch // 10, arch % 10)))[0]


def default_requests() -> list[AotRequest]:
    requests = []
    for kind, (_, head_dims) in KERNELS.items():
        for head_dim in head_dims:
            requests += [request(kind, head_dim, dtype, arch, default_config(kind, head_dim, arch))
                         for dtype in DTYPES for arch in ARCHS]
    # causal adds the diagonal masks: check its register use once per arch
    requests += [request("fwd", 64, "bf16", arch, default_config("fwd", 64, arch), causal=True) for arch in ARCHS]
    preprocess_types = {"O": "*bf16", "DO": "*bf16", "DELTA": "*fp32", "stride_ot": "i32", "stride_oh": "i32",
                        "stride_dot": "i32", "stride_doh": "i32", "stride_delta_h": "i32", "total_tokens": "i32",
                        "HEAD_DIM": "constexpr", "BLOCK": "constexpr"}
    requests += [AotRequest(kernels._bwd_preprocess_kernel, preprocess_types, {"HEAD_DIM": 64, "BLOCK": 64}, arch, 4, 1)
                 for arch in ARCHS]
    return requests


def check_reports(reports) -> None:
    print()
    for report in reports:
        print(report)
    spilled = [str(report) for report in reports if report.spills]
    assert not spilled, "kernels spill registers:\n" + "\n".join(spilled)
    for report in reports:
        limit = 227 * 1024 if report.arch >= 90 else 163 * 1024
        assert report.shared <= limit, f"{report}: shared memory over the sm_{report.arch} limit"
        if report.arch >= 90 and report.name != "_bwd_preprocess_kernel":
            assert report.uses_wgmma, f"{report}: no wgmma on sm_90"


@pytest.mark.parametrize("python", PYTHONS, ids=lambda p: "this-triton" if p is None else p)
def test_default_configs_compile_without_spills(python):
    check_reports(compile_reports(default_requests(), python=python, workers=2))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ELASTICAST_AOT_ALL") != "1", reason="set ELASTICAST_AOT_ALL=1 (minutes)")
@pytest.mark.parametrize("python", PYTHONS, ids=lambda p: "this-triton" if p is None else p)
def test_every_autotune_config_compiles_without_spills(python):
    requests = [
        request(kind, head_dim, "bf16", arch, config, causal)
        for arch in ARCHS
        for kind, table in kernels.GPU_CONFIGS[kernels.arch_family((arch // 10, 0))].items()
        for head_dim, configs in table.items()
        for config in configs
        for causal in (False, True)
    ]
    check_reports(compile_reports(requests, python=python, workers=2))
