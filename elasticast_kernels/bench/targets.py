"""The performance claims of the issues, checked against a run's results.

Each target names the case it reads (group, name, variant, a few params), the metric, the
threshold and the device it applies to ("cpu", "cuda" or "any"). A target whose case did not
run is reported as not measured, never as met.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    claim: str
    group: str
    name: str
    variant: str
    metric: str
    threshold: float
    device: str = "any"
    params: tuple[tuple[str, Any], ...] = ()
    at_most: bool = False  # True: the metric must be <= threshold
    workload: str = "voxceleb"


TARGETS = (
    Target("next_fit efficiency about 0.88 (reference grouping)", "packing", "plan", "next_fit", "efficiency", 0.85),
    Target("best_fit_decreasing efficiency >= 0.97", "packing", "plan", "best_fit_decreasing", "efficiency", 0.97),
    Target("histogram efficiency >= 0.995", "packing", "plan", "histogram", "efficiency", 0.995),
    Target("best_fit_window(256) efficiency >= 0.96", "packing", "plan", "best_fit_window", "efficiency", 0.96),
    Target("C++ best-fit >= 10M lengths/s (CPU)", "packing", "plan", "best_fit_decreasing", "lengths_per_s", 10e6, "cpu"),
    Target("C++ best-fit >= 100x pure Python", "packing", "plan", "best_fit_decreasing", "speedup_vs_python", 100.0),
    Target("varlen fwd >= 300 TFLOP/s real work (H100, bf16)", "attention", "seqlen", "triton", "tflops_real", 300.0,
           "cuda", (("pass_", "fwd"), ("seqlen", 1024)), workload="fixed"),
    Target("varlen fwd+bwd >= 2x masked SDPA", "attention", "step", "triton", "speedup_vs_baseline", 2.0, "cuda",
           (("pass_", "fwd_bwd"),)),
    Target("pooling fwd >= 5x padded masked pooling", "pooling", "step", "segment_attention_pool",
           "speedup_vs_baseline", 5.0, "cuda", (("pass_", "fwd"),)),
    Target("pooling fwd >= 70% of copy bandwidth (k, v bytes)", "pooling", "step", "segment_attention_pool",
           "fraction_of_copy_bandwidth", 0.7, "cuda", (("pass_", "fwd"),)),
    # Issue 6 compares with the published model, whose attention is explicit masked scores + softmax:
    # that is sdpa_masked under the MATH SDPA kernel. The ratio vs fused sdpa_masked is reported too
    # (speedup_vs_baseline), with no target of its own.
    Target("CPU eval forward: torch backend >= 3x published-faithful sdpa_masked_math (explicit softmax)",
           "model", "eval_forward", "torch", "speedup_vs_sdpa_masked_math", 3.0, "cpu"),
    Target("CPU eval forward, 32 equal 5 s clips: torch backend >= 1.0x AST-style per-sample padding",
           "model", "eval_forward_equal_lengths", "torch", "speedup_vs_padded", 1.0, "cpu", workload="equal_5s"),
    Target("GPU training step: triton >= 1.5x sdpa_masked throughput", "model", "train_step", "triton",
           "speedup_vs_baseline", 1.5, "cuda", (("dtype", "bf16"),)),
    Target("GPU training step: >= 30% less peak memory", "model", "train_step", "triton",
           "memory_vs_baseline", 0.7, "cuda", (("dtype", "bf16"),), at_most=True),
)


def check_targets(results: list[dict], device: str) -> list[dict]:
    """One row per target that applies to ``device``: value (None if not measured) and ``met``."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    rows = []
    for t in TARGETS:
        if t.device not in ("any", kind):
            continue
        value = None
        for r in results:
            if (r["group"], r["name"], r["variant"], r["workload"]) != (t.group, t.name, t.variant, t.workload):
                continue
            if r["status"] != "ok" or any(r["params"].get(k) != v for k, v in t.params):
                continue
            value = r["metrics"].get(t.metric)
            if value is not None:
                break
        met = None if value is None else (value <= t.threshold if t.at_most else value >= t.threshold)
        rows.append({"claim": t.claim, "metric": t.metric, "threshold": t.threshold, "value": value, "met": met})
    return rows
