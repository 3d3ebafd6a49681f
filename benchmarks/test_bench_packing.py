"""Packing: plans per strategy (checked: every sample once, no pack over capacity), the C++ best
fit vs a textbook pure-Python one on the same lengths, and pack_spectrograms vs unfold + cat.

The cases are ``elasticast_kernels.bench.groups.packing``'s, the same as ``elasticast-bench``'s (see conftest.py).
"""
GROUP = "packing"


def test_packing(case, run_case):
    run_case(case)
