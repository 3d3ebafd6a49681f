"""Model: the drop-in ElasticAST with our packed backend vs the padded baselines, eval forward
(logits checked against the masked baseline's) and a training step (every parameter updated), and a
batch of equal-length clips vs AST-style per-sample padding.

The cases are ``elasticast_kernels.bench.groups.model``'s, the same as ``elasticast-bench``'s (see conftest.py).
"""
GROUP = "model"


def test_model(case, run_case):
    run_case(case)
