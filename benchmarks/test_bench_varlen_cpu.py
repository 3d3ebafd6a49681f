"""CPU benchmark of the op-level ``varlen_attention`` torch path (what runs without a GPU).

Three questions, each answered as ratios measured in one run:

1. equal-length segments (32x248, 128x48, 12x504 tokens, 6 heads, head_dim 64), forward and
   forward+backward: ``varlen_attention`` on the packed ``[tokens, heads, 64]`` tensors against ONE
   batched ``scaled_dot_product_attention`` call on ``[batch, heads, length, 64]`` tensors already
   in SDPA's preferred layout (the best case of the baseline). Target: >= 0.9x.
2. mixed lengths (a ragged step of distinct lengths): ``varlen_attention`` against one SDPA call
   per sample (what a varlen op cannot beat by much on CPU, and what it must not fall behind).
3. sliding window (128 keys back, causal) on one sample of 1k..8k tokens: time per token, which
   must stay flat (work linear in length for a fixed window), next to full causal attention.

Timing: the machine this runs on may be shared, so the two sides of a ratio are timed in
alternation, round after round, and each side keeps its fastest round (the least disturbed).
Run ``python benchmarks/test_bench_varlen_cpu.py`` for the table; ``pytest benchmarks/ -k varlen_cpu``
prints it too. With ``--benchmark-disable`` (the CI smoke) the same code runs at tiny sizes and
only checks that both sides agree.
"""
from __future__ import annotations

import time
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from elasticast_kernels.ops import varlen_attention

HEADS, HEAD_DIM = 6, 64
EQUAL_SHAPES = ((32, 248), (128, 48), (12, 504))  # (segments, tokens per segment)
MIXED_LENGTHS = (497, 31, 250, 129, 7, 402, 88, 1, 300, 64, 190, 45)
WINDOW_LENGTHS = (1024, 2048, 4096, 8192)
WINDOW = (128, 0)


def fastest_alternating(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Seconds of each function's fastest call, the functions called in turn each round."""
    for fn in fns.values():  # warm-up (allocator, thread pool)
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _packed(total: int, requires_grad: bool, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(total, HEADS, HEAD_DIM, generator=gen).requires_grad_(requires_grad) for _ in range(3)]


def _offsets(lengths) -> torch.Tensor:
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32)


def equal_length_case(segments: int, length: int, backward: bool, rounds: int) -> dict[str, float]:
    """varlen_attention vs one batched SDPA call on the same values; returns times and the ratio."""
    packed = _packed(segments * length, backward)
    dense = [x.detach().view(segments, length, HEADS, HEAD_DIM).transpose(1, 2).contiguous().requires_grad_(backward)
             for x in packed]
    cu = _offsets([length] * segments)
    grad = torch.randn(segments * length, HEADS, HEAD_DIM)
    grad_dense = grad.view(segments, length, HEADS, HEAD_DIM).transpose(1, 2).contiguous()
    ours = varlen_attention(*packed, cu)
    sdpa = F.scaled_dot_product_attention(*dense)
    torch.testing.assert_close(ours.detach(), sdpa.detach().transpose(1, 2).reshape_as(ours), atol=1e-5, rtol=1e-5)

    if backward:
        fns = {"ours": lambda: varlen_attention(*packed, cu).backward(grad),
               "sdpa": lambda: F.scaled_dot_product_attention(*dense).backward(grad_dense)}
    else:
        fns = {"ours": torch.no_grad()(lambda: varlen_attention(*packed, cu)),
               "sdpa": torch.no_grad()(lambda: F.scaled_dot_product_attention(*dense))}
    times = fastest_alternating(fns, rounds)
    return {**times, "ratio": times["sdpa"] / times["ours"]}


def mixed_length_case(lengths, backward: bool, rounds: int) -> dict[str, float]:
    """varlen_attention vs one SDPA call per sample (ratio > 1: ours is faster)."""
    packed = _packed(sum(lengths), backward)
    cu = _offsets(lengths)
    bounds = cu.tolist()
    grad = torch.randn(sum(lengths), HEADS, HEAD_DIM)

    def per_sample():
        outs = [F.scaled_dot_product_attention(*(x[a:b].transpose(0, 1) for x in packed)).transpose(0, 1)
                for a, b in zip(bounds[:-1], bounds[1:])]
        return torch.cat(outs)

    torch.testing.assert_close(varlen_attention(*packed, cu).detach(), per_sample().detach(), atol=1e-5, rtol=1e-5)
    if backward:
        fns = {"ours": lambda: varlen_attention(*packed, cu).backward(grad),
               "per_sample_sdpa": lambda: per_sample().backward(grad)}
    else:
        fns = {"ours": torch.no_grad()(lambda: varlen_attention(*packed, cu)),
               "per_sample_sdpa": torch.no_grad()(per_sample)}
    times = fastest_alternating(fns, rounds)
    return {**times, "ratio": times["per_sample_sdpa"] / times["ours"]}


def window_case(lengths, rounds: int) -> list[dict[str, float]]:
    """Forward time per token of one causal sample with a fixed window, and of full causal attention."""
    rows = []
    for length in lengths:
        packed = _packed(length, False)
        cu = _offsets([length])
        fns = {"window": torch.no_grad()(lambda: varlen_attention(*packed, cu, causal=True, window_size=WINDOW)),
               "causal": torch.no_grad()(lambda: varlen_attention(*packed, cu, causal=True))}
        times = fastest_alternating(fns, rounds)
        rows.append({"length": length, "window_us_per_token": times["window"] / length * 1e6,
                     "causal_us_per_token": times["causal"] / length * 1e6})
    return rows


def report(tiny: bool = False, rounds: int = 7) -> list[str]:
    """The whole benchmark as table lines (``tiny``: the CI-smoke sizes)."""
    shapes = ((3, 17), (5, 8)) if tiny else EQUAL_SHAPES
    mixed = (9, 3, 14, 1) if tiny else MIXED_LENGTHS
    window_lengths = (64, 128) if tiny else WINDOW_LENGTHS
    lines = [f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32, {HEADS} heads, "
             f"head_dim {HEAD_DIM}; fastest of {rounds} alternating rounds",
             "case | pass | varlen_attention ms | baseline ms | baseline / ours"]
    for segments, length in shapes:
        for backward in (False, True):
            r = equal_length_case(segments, length, backward, rounds)
            lines.append(f"equal {segments}x{length} | {'fwd+bwd' if backward else 'fwd'} | {r['ours'] * 1e3:.2f} | "
                         f"{r['sdpa'] * 1e3:.2f} (one batched SDPA) | {r['ratio']:.2f}")
    for backward in (False, True):
        r = mixed_length_case(mixed, backward, rounds)
        lines.append(f"mixed {len(mixed)} lengths, {sum(mixed)} tokens | {'fwd+bwd' if backward else 'fwd'} | "
                     f"{r['ours'] * 1e3:.2f} | {r['per_sample_sdpa'] * 1e3:.2f} (SDPA per sample) | {r['ratio']:.2f}")
    lines.append(f"window {WINDOW} causal, one sample | length | window us/token | full causal us/token")
    for row in window_case(window_lengths, max(3, rounds // 2)):
        lines.append(f"window | {row['length']} | {row['window_us_per_token']:.2f} | {row['causal_us_per_token']:.2f}")
    return lines


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch):
    # the CPU path of the op, never the Triton interpreter (the tests' conftest may have set it)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_varlen_cpu(request, capsys):
    try:
        disabled = bool(request.config.getoption("benchmark_disable"))
    except ValueError:
        disabled = True
    lines = report(tiny=disabled, rounds=1 if disabled else 7)
    with capsys.disabled():
        print("\n" + "\n".join(lines))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("\n".join(report(rounds=args.rounds)))
