"""Pooling: the fused segment attention pooling vs the published model's padded masked pooling,
forward (outputs compared) and forward + backward.

The cases are ``elasticast_kernels.bench.groups.pooling``'s, the same as ``elasticast-bench``'s (see conftest.py).
"""
GROUP = "pooling"


def test_pooling(case, run_case):
    run_case(case)
