"""Ahead-of-time compiles of the pooling kernels for sm_80/sm_90 (no GPU needed): no spills.

Compiles exactly the configurations the launchers pick (``pool_config``, ``mean_config``), under
this environment's Triton and, when ``.venv-t36`` (or ``$ELASTICAST_TRITON36_PYTHON``) exists,
under Triton 3.6, the GPU machine's version. All compiles of one environment share one subprocess.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from aot import AotRequest, compile_reports
from elasticast_kernels.bench.static.specs import pool_signature, raw_function
from elasticast_kernels.ops import segment_pool_kernels as kernels

CUDA = torch.device("cuda")  # only read by the config helpers; nothing runs on it
TRITON36_PYTHON = os.environ.get(
    "ELASTICAST_TRITON36_PYTHON", str(Path(__file__).resolve().parent.parent / ".venv-t36" / "bin" / "python")
)

def request(kernel, dtype, arch, constexprs, num_warps):
    # As Triton's runtime specialises them for torch tensors: aligned pointers, 16-multiple
    # strides and head_dim (head_dim 64/128, dim 768).
    signature, aligned = pool_signature(kernel, dtype)
    return AotRequest(kernel, signature, constexprs, arch, num_warps=num_warps, num_stages=1, divisible_by_16=aligned)


def pool_requests(head_dim, dtype, arch, int64_index=False):
    out = []
    for kernel, backward in ((kernels._pool_fwd_partial_kernel, False), (kernels._pool_bwd_kernel, True)):
        block_n, block_d, warps = kernels.pool_config(head_dim, CUDA, backward=backward)
        consts = dict(HEAD_DIM=head_dim, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_B=kernels._BLOCK_B,
                      INT64_INDEX=int64_index)
        out.append(request(kernel, dtype, arch, consts, warps))
    return out


def aux_requests(dtype, arch):
    block_n, block_w, warps = kernels.mean_config(768, CUDA)
    mean_consts = dict(BLOCK_N=block_n, BLOCK_W=block_w, BLOCK_B=kernels._BLOCK_B, INT64_INDEX=False)
    return [
        request(kernels._pool_combine_kernel, dtype, arch,
                dict(HEAD_DIM=64, BLOCK_S=kernels._merge_block(CUDA), BLOCK_D=64), 4),
        request(kernels._slot_sum_kernel, dtype, arch,
                dict(MEAN=True, BLOCK_S=kernels._merge_block(CUDA), BLOCK_W=kernels._slot_sum_block(768, CUDA)), 4),
        request(kernels._segment_sum_partial_kernel, dtype, arch, mean_consts, warps),
        request(kernels._segment_mean_bwd_kernel, dtype, arch, mean_consts, warps),
    ]


def current_requests():
    reqs = [r for arch in (80, 90) for dtype in ("fp16", "bf16") for r in pool_requests(64, dtype, arch)]
    reqs += [r for head_dim in (32, 128, 256) for r in pool_requests(head_dim, "bf16", 90)]
    # sm_80 at head_dim 128 in fp16; bf16 keeps 8 B of call stack there (see pool_config)
    reqs += pool_requests(128, "fp16", 80) + pool_requests(256, "bf16", 80)
    reqs += pool_requests(64, "bf16", 90, int64_index=True)  # tensors past 2^31 elements
    reqs += aux_requests("bf16", 90) + aux_requests("fp16", 80)
    return reqs


def triton36_requests():
    return pool_requests(64, "bf16", 90) + pool_requests(128, "fp16", 80) + aux_requests("bf16", 90)


def describe(req):
    return f"{raw_function(req.kernel).__name__}-sm{req.arch}-{req.signature['K' if 'K' in req.signature else 'X']}"


@pytest.fixture(scope="module")
def reports_current():
    return compile_reports(current_requests())


@pytest.fixture(scope="module")
def reports_triton36():
    if not Path(TRITON36_PYTHON).exists():
        pytest.skip(f"no Triton 3.6 environment at {TRITON36_PYTHON}")
    return compile_reports(triton36_requests(), python=TRITON36_PYTHON)


def check(reports, requests):
    assert len(reports) == len(requests)
    for req, report in zip(requests, reports):
        print(report)  # registers / spills / shared memory, for the record (pytest -s)
        assert not report.spills, f"{describe(req)} spills: {report}"
        limit = 163 * 1024 if req.arch == 80 else 227 * 1024
        assert report.shared <= limit, f"{describe(req)} needs {report.shared} B of shared memory"


def test_aot_current_triton(reports_current):
    check(reports_current, current_requests())


def test_aot_triton36(reports_triton36):
    check(reports_triton36, triton36_requests())
