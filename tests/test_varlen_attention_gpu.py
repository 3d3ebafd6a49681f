"""varlen_attention on a CUDA GPU at realistic sizes (skipped without one).

Accuracy criterion in bf16/fp16: against a float64 reference, our error is at most twice the
error of torch's own SDPA run in the same dtype on the same inputs, plus a small slack.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from elasticast_kernels.ops import varlen_attention
from helpers import cu_from

pytestmark = pytest.mark.gpu

HEADS, HEAD_DIM = 12, 64


def realistic_lengths(count=12, low=200, high=2048, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (count,), generator=generator).tolist()


def per_sample(fn, q, k, v, cu_seqlens):
    """Run ``fn(q, k, v)`` on each sample ([1, heads, len, dim] layout) and re-pack the outputs."""
    bounds = cu_seqlens.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        sample = [x[start:end].transpose(0, 1)[None] for x in (q, k, v)]
        outs.append(fn(*sample)[0].transpose(0, 1))
    return torch.cat(outs)


def forward_backward(fn, q, k, v, dout):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    return [out, *torch.autograd.grad(out, (q, k, v), dout)]


def reference_attention(q, k, v, scale, causal):
    """float64 softmax attention on one sample, [1, heads, len, dim], on q's device (helpers'
    packed reference builds its causal mask on the CPU, so it cannot serve CUDA tensors)."""
    scores = (q @ k.transpose(-1, -2)) * scale
    if causal:
        n = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("softmax_scale", [None, 1.0], ids=["default_scale", "scale1"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_error_within_twice_sdpa(dtype, causal, softmax_scale):
    lengths = realistic_lengths()
    cu_seqlens = cu_from(lengths, "cuda")
    total = sum(lengths)
    q, k, v, dout = (torch.randn(total, HEADS, HEAD_DIM, device="cuda") for _ in range(4))
    scale = HEAD_DIM ** -0.5 if softmax_scale is None else softmax_scale

    expected = forward_backward(
        lambda q, k, v: per_sample(lambda *s: reference_attention(*s, scale, causal), q, k, v, cu_seqlens),
        *(x.double() for x in (q, k, v)), dout.double(),
    )
    low = [x.to(dtype) for x in (q, k, v, dout)]
    ours = forward_backward(
        lambda q, k, v: varlen_attention(q, k, v, cu_seqlens, max(lengths), softmax_scale, causal), *low
    )
    sdpa = forward_backward(
        lambda q, k, v: per_sample(
            lambda *s: F.scaled_dot_product_attention(*s, is_causal=causal, scale=scale), q, k, v, cu_seqlens
        ),
        *low,
    )
    for name, ref, mine, theirs in zip(("out", "dq", "dk", "dv"), expected, ours, sdpa):
        assert mine.dtype == dtype and torch.isfinite(mine).all(), name
        our_error = (mine.double() - ref).abs().max().item()
        sdpa_error = (theirs.double() - ref).abs().max().item()
        slack = 1e-3 * ref.abs().max().item()
        assert our_error <= 2 * sdpa_error + slack, (
            f"{name}: our max error {our_error:.3g} vs SDPA {sdpa_error:.3g} (slack {slack:.2g})"
        )


def test_no_host_sync():
    """Forward and backward on CUDA never synchronise with the host (max_seqlen omitted too)."""
    lengths = realistic_lengths(count=5)
    cu_seqlens = cu_from(lengths, "cuda")
    q, k, v = (torch.randn(sum(lengths), HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    varlen_attention(q, k, v, cu_seqlens).sum().backward()  # autotuning benchmarks (syncs) happen once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = varlen_attention(q, k, v, cu_seqlens)
        out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_beyond_int32_offsets():
    """More than 2^31 elements per tensor: token offsets must be computed in int64."""
    if torch.cuda.get_device_properties(0).total_memory < 60 * 2 ** 30:
        pytest.skip("needs about 25 GB of free GPU memory")
    heads, head_dim, length = 16, 128, 2048
    samples = (2 ** 31) // (heads * head_dim * length) + 2  # just past 2^31 elements
    cu_seqlens = cu_from([length] * samples, "cuda")
    total = samples * length
    q, k, v = (torch.empty(total, heads, head_dim, device="cuda", dtype=torch.float16).normal_() for _ in range(3))
    out = varlen_attention(q, k, v, cu_seqlens, length)
    for start in (0, total - length):  # the first sample and the one past the int32 range
        sample = [x[start:start + length].transpose(0, 1)[None] for x in (q, k, v)]
        expected = F.scaled_dot_product_attention(*sample)[0].transpose(0, 1)
        torch.testing.assert_close(out[start:start + length], expected, atol=2e-3, rtol=2e-3)
