"""Pooling kernels on a CUDA GPU at ElasticAST sizes (skipped without one).

Accuracy bar: in bf16/fp16, the error against a float64 reference may be at most twice that of
torch's own SDPA-based pooling in the same dtype, plus a small slack.
"""

import pytest
import torch
import torch.nn.functional as F

from elasticast_kernels.modules import AttentionPool
from elasticast_kernels.ops.segment_pool import segment_attention_pool, segment_mean
from helpers import cu_from, half_dtypes, reference_pool

pytestmark = pytest.mark.gpu

HEADS, HEAD_DIM = 12, 64


def elasticast_lengths(seed=0, batch=12):
    """12 samples of 200-2048 tokens, as in an ElasticAST training step."""
    return torch.randint(200, 2049, (batch,), generator=torch.Generator().manual_seed(seed)).tolist()


def pad(x, cu_seqlens):
    """Packed (total, ...) -> padded (batch, n, ...) by gathering (differentiable), plus the mask."""
    starts, lengths = cu_seqlens[:-1].long(), (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    positions = torch.arange(int(lengths.max()), device=x.device)
    mask = positions[None, :] < lengths[:, None]
    index = torch.where(mask, starts[:, None] + positions[None, :], 0)
    return x[index], mask


def sdpa_pool(q, k, v, cu_seqlens, scale):
    """torch's SDPA on the padded batch, in the inputs' dtype: the baseline for accuracy."""
    kp, mask = pad(k, cu_seqlens)
    vp, _ = pad(v, cu_seqlens)
    qb = q.expand(kp.shape[0], *k.shape[1:])[:, :, None, :]  # (batch, heads, 1, head_dim)
    out = F.scaled_dot_product_attention(qb, kp.transpose(1, 2), vp.transpose(1, 2),
                                         attn_mask=mask[:, None, None, :], scale=scale)
    return out[:, :, 0]


def outputs_and_grads(fn, q, k, v, cu_seqlens, scale, dout):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, cu_seqlens, scale)
    out.backward(dout.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


def max_err(got, ref):
    return (got.double() - ref).abs().max().item()


@pytest.mark.parametrize("softmax_scale", [1.0, HEAD_DIM ** -0.5], ids=["scale1", "scale_rsqrt_d"])
@pytest.mark.parametrize("shared_query", [True, False], ids=["shared_q", "per_sample_q"])
@half_dtypes
def test_accuracy_vs_sdpa(dtype, shared_query, softmax_scale):
    lengths = elasticast_lengths()
    cu = cu_from(lengths, "cuda")
    total = sum(lengths)
    # LayerNorm-like inputs (ElasticAST pools normed tokens); the query is a raw parameter.
    k = torch.randn(total, HEADS, HEAD_DIM, device="cuda").to(dtype)
    v = torch.randn(total, HEADS, HEAD_DIM, device="cuda").to(dtype)
    q_shape = (HEADS, HEAD_DIM) if shared_query else (len(lengths), HEADS, HEAD_DIM)
    q = (0.3 * torch.randn(q_shape, device="cuda")).to(dtype)
    dout = torch.randn(len(lengths), HEADS, HEAD_DIM, device="cuda", dtype=torch.float64)

    ref = outputs_and_grads(reference_pool, q, k, v, cu, softmax_scale, dout)

    def ours(q, k, v, cu, scale):
        return segment_attention_pool(q, k, v, cu, max_seqlen=max(lengths), softmax_scale=scale)

    got = outputs_and_grads(ours, q, k, v, cu, softmax_scale, dout)
    base = outputs_and_grads(sdpa_pool, q, k, v, cu, softmax_scale, dout)
    for name, g, b, r in zip(["out", "dq", "dk", "dv"], got, base, ref):
        assert g.dtype == dtype and g.shape == r.shape
        slack = 1e-3 * r.abs().max().item()
        assert max_err(g, r) <= 2 * max_err(b, r) + slack, (
            f"{name}: error {max_err(g, r):.3g} vs SDPA's {max_err(b, r):.3g}")


def test_fp32_matches_reference():
    lengths = [1, 7, 2048, 300, 0, 33]
    cu = cu_from(lengths, "cuda")
    total = sum(lengths)
    q, k, v = (torch.randn(*s, device="cuda") for s in [(HEADS, HEAD_DIM), (total, HEADS, HEAD_DIM),
                                                       (total, HEADS, HEAD_DIM)])
    dout = torch.randn(len(lengths), HEADS, HEAD_DIM, device="cuda", dtype=torch.float64)

    def ours(q, k, v, cu, scale):
        return segment_attention_pool(q, k, v, cu, softmax_scale=scale)

    got = outputs_and_grads(ours, q, k, v, cu, 1.0, dout)
    ref = outputs_and_grads(reference_pool, q, k, v, cu, 1.0, dout)
    for name, g, r in zip(["out", "dq", "dk", "dv"], got, ref):
        assert max_err(g, r) <= 1e-4 * max(1.0, r.abs().max().item()), name
    assert not got[0][4].abs().sum()


def test_one_long_sample_many_short():
    """Split-K balance case: one sample of 30k tokens next to many of 8."""
    lengths = [8] * 40 + [30000] + [8] * 40
    cu = cu_from(lengths, "cuda")
    total = sum(lengths)
    q = torch.randn(HEADS, HEAD_DIM, device="cuda")
    k, v = (torch.randn(total, HEADS, HEAD_DIM, device="cuda") for _ in range(2))
    out = segment_attention_pool(q, k, v, cu, max_seqlen=30000, softmax_scale=HEAD_DIM ** -0.5)
    ref = reference_pool(q, k, v, cu, HEAD_DIM ** -0.5)
    assert max_err(out, ref) <= 1e-4


def test_sync_free_with_max_seqlen():
    """Forward and backward (module included) launch without a device->host sync."""
    lengths = elasticast_lengths(1)
    cu = cu_from(lengths, "cuda")
    pool = AttentionPool(HEADS * HEAD_DIM, HEADS).cuda()
    x = torch.randn(sum(lengths), HEADS * HEAD_DIM, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = pool(x, cu, max_seqlen=max(lengths))
            pooled = segment_mean(x, cu, max_seqlen=max(lengths))
        (out.float().square().sum() + pooled.float().sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (len(lengths), HEADS * HEAD_DIM) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_segment_mean(dtype):
    lengths = elasticast_lengths(2) + [0]
    cu = cu_from(lengths, "cuda")
    x = torch.randn(sum(lengths), 768, device="cuda", dtype=dtype, requires_grad=True)
    out = segment_mean(x, cu, max_seqlen=max(lengths))
    dout = torch.randn_like(out)
    out.backward(dout)
    xp, mask = pad(x.detach().double(), cu)
    ref = (xp * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert max_err(out, ref) <= tol
    counts = (cu[1:] - cu[:-1]).clamp_min(1).double()
    ref_dx = (dout.double() / counts[:, None]).repeat_interleave((cu[1:] - cu[:-1]).long(), dim=0)
    assert max_err(x.grad, ref_dx) <= tol


def test_torch_compile_inductor():
    lengths = elasticast_lengths(3)
    cu = cu_from(lengths, "cuda")
    pool = AttentionPool(HEADS * HEAD_DIM, HEADS).cuda()
    x = torch.randn(sum(lengths), HEADS * HEAD_DIM, device="cuda")
    compiled = torch.compile(pool, fullgraph=True)
    assert torch.allclose(compiled(x, cu, max_seqlen=max(lengths)), pool(x, cu, max_seqlen=max(lengths)),
                          atol=1e-4, rtol=1e-4)
