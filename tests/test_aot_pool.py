"""Ahead-of-time compiles of the pooling kernels for sm_80/sm_90 (no GPU needed): no spills.

Compiles the configurations the launchers pick (``pool_config``, ``mean_config``), taken from the
static report's own list of cases (``specs.pool_cases``), under this environment's Triton and,
when ``.venv-t36`` (or ``$ELASTICAST_TRITON36_PYTHON``) exists, under Triton 3.6, the GPU
machine's version. The one spill the launchers accept knowingly (``specs.POOL_KNOWN_SPILLS``, see
``segment_pool_kernels.pool_config``) is held to its stated size.
"""
from __future__ import annotations

import pytest

import aot

if not aot.tools_present():
    pytest.skip("this triton has no NVIDIA backend tools", allow_module_level=True)

specs = aot.specs


def current_cases() -> list:
    cases = list(specs.pool_cases(head_dims=(64,)))  # both archs and dtypes, the int64 variant, the mean kernels
    cases += specs.pool_cases(archs=(90,), dtypes=("bf16",), head_dims=(32, 128, 256), mean=False, int64_index=False)
    cases += specs.pool_cases(archs=(80,), head_dims=(128, 256), mean=False, int64_index=False)
    return cases


def triton36_cases() -> list:
    return [*specs.pool_cases(archs=(90,), dtypes=("bf16",), head_dims=(64,), int64_index=False),
            *specs.pool_cases(archs=(80,), dtypes=("fp16",), head_dims=(128,), mean=False, int64_index=False)]


@pytest.fixture(scope="module")
def rows_current():
    return aot.compile_rows(current_cases())


@pytest.fixture(scope="module")
def rows_triton36():
    python = aot.triton36_python()
    if python is None:
        pytest.skip(f"no Triton 3.6 environment at {aot.TRITON36_PYTHON}")
    return aot.compile_rows(triton36_cases(), python=python)


def check(rows: list[dict]) -> None:
    assert rows
    for row in rows:
        print(aot.describe(row))  # registers / spills / shared memory, for the record (pytest -s)
        assert row["spill_bytes"] == 0 or specs.accepted_spill(row), f"spills: {aot.describe(row)}"
        assert row["shared"] <= aot.SHARED_LIMIT[row["arch"]], f"shared memory: {aot.describe(row)}"


def test_aot_current_triton(rows_current):
    check(rows_current)


def test_aot_triton36(rows_triton36):
    check(rows_triton36)
