"""Sweep: attention throughput at several pack limits, steps and packing strategies, our packed
backend vs masked SDPA on the padded rows.

The cases are ``elasticast_kernels.bench.groups.sweep``'s, the same as ``elasticast-bench``'s (see conftest.py).
"""
GROUP = "sweep"


def test_sweep(case, run_case):
    run_case(case)
