"""Attention: one encoder block's self-attention on a packed step (forward, backward,
forward + backward) for every implementation, vs sequence length, and memory vs batch. Forward
outputs are checked against per-sample SDPA; implementations unavailable here skip with the reason.

The cases are ``elasticast_kernels.bench.groups.attention``'s, the same as ``elasticast-bench``'s (see conftest.py).
"""
GROUP = "attention"


def test_attention(case, run_case):
    run_case(case)
