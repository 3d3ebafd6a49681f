"""End to end: spectrograms in host memory -> logits, packing included, for each backend and
packing strategy; a packing strategy never changes a sample's logits (checked).

The cases are ``elasticast_kernels.bench.groups.end_to_end``'s, the same as ``elasticast-bench``'s (see conftest.py).
"""
GROUP = "end_to_end"


def test_end_to_end(case, run_case):
    run_case(case)
