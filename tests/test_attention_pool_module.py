"""AttentionPool: the reference's parameter names, and its pooling re-implemented in plain torch."""
import pytest
import torch

from elasticast_kernels.modules import AttentionPool
from helpers import cu_from

DIM, HEADS = 32, 2


def reference_attention_pool(weights, x, cu_seqlens, query, heads, scale=1.0):
    """The reference's pooling, sample by sample in float64: one query attends over the sample's tokens.

    ``weights`` is an AttentionPool state dict; ``query`` ``(dim,)`` or ``(batch, dim)``.
    """
    w = {name: t.double() for name, t in weights.items()}
    dim = w["to_q.weight"].shape[0]
    head_dim = dim // heads
    bounds = cu_seqlens.tolist()
    outputs = []
    for b, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        tokens = x[start:end].double()
        query_b = (query if query.dim() == 1 else query[b]).double()
        q = (query_b @ w["to_q.weight"].T + w["to_q.bias"]).view(heads, 1, head_dim)
        kv = tokens @ w["to_kv.weight"].T + w["to_kv.bias"]
        k = kv[:, :dim].reshape(-1, heads, head_dim).transpose(0, 1)  # (heads, n, head_dim)
        v = kv[:, dim:].reshape(-1, heads, head_dim).transpose(0, 1)
        attn = torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1)  # (heads, 1, n)
        pooled = (attn @ v).reshape(dim)
        outputs.append(pooled @ w["proj.weight"].T + w["proj.bias"])
    return torch.stack(outputs)


def test_parameter_names():
    assert set(AttentionPool(DIM, HEADS).state_dict()) == {
        "query", "to_q.weight", "to_q.bias", "to_kv.weight", "to_kv.bias", "proj.weight", "proj.bias"}
    assert "query" not in AttentionPool(DIM, HEADS, learnable_query=False).state_dict()
    no_bias = AttentionPool(DIM, HEADS, bias=False).state_dict()
    assert "to_q.bias" not in no_bias and "to_kv.bias" not in no_bias and "proj.bias" in no_bias
    pool = AttentionPool(DIM, HEADS)
    assert pool.to_kv.weight.shape == (2 * DIM, DIM) and pool.query.shape == (DIM,)


@pytest.mark.parametrize("path", ["triton_interpreter", "torch"])
def test_matches_reference_pooling(path, request):
    if path == "torch":
        request.getfixturevalue("torch_cpu_path")
    pool = AttentionPool(DIM, HEADS)
    lengths = [1, 40, 7]
    x = torch.randn(sum(lengths), DIM, requires_grad=True)
    cu = cu_from(lengths)
    out = pool(x, cu, max_seqlen=max(lengths))
    assert out.shape == (len(lengths), DIM)

    weights = {name: p.detach().clone().requires_grad_() for name, p in pool.state_dict().items()}
    xd = x.detach().double().requires_grad_()
    ref = reference_attention_pool(weights, xd, cu, weights["query"], HEADS)
    assert torch.allclose(out.double(), ref, atol=1e-4, rtol=1e-4)

    dout = torch.randn_like(out)
    out.backward(dout)
    ref.backward(dout.double())
    assert torch.allclose(x.grad.double(), xd.grad, atol=1e-4, rtol=1e-4)
    for name, param in pool.named_parameters():
        assert torch.allclose(param.grad.double(), weights[name].grad.double(), atol=1e-4, rtol=1e-4), name


@pytest.mark.parametrize("per_sample", [False, True], ids=["shared_query", "per_sample_query"])
def test_external_query(per_sample):
    """The model's use: learnable_query=False and its own attn_pool_queries passed in."""
    pool = AttentionPool(DIM, HEADS, learnable_query=False)
    lengths = [5, 9]
    x, cu = torch.randn(sum(lengths), DIM), cu_from(lengths)
    query = torch.randn(len(lengths), DIM) if per_sample else torch.randn(DIM)
    out = pool(x, cu, query=query)
    ref = reference_attention_pool(pool.state_dict(), x, cu, query, HEADS)
    assert torch.allclose(out.double(), ref, atol=1e-4, rtol=1e-4)


def test_softmax_scale_option():
    pool = AttentionPool(DIM, HEADS, softmax_scale=None)
    x, cu = torch.randn(6, DIM), cu_from([6])
    ref = reference_attention_pool(pool.state_dict(), x, cu, pool.query.detach(), HEADS, scale=(DIM // HEADS) ** -0.5)
    assert torch.allclose(pool(x, cu).double(), ref, atol=1e-4, rtol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="heads"):
        AttentionPool(30, 4)
    with pytest.raises(ValueError, match="query"):
        AttentionPool(DIM, HEADS, learnable_query=False)(torch.randn(3, DIM), cu_from([3]))
    with pytest.raises(ValueError, match="x"):
        AttentionPool(DIM, HEADS)(torch.randn(3, DIM + 1), cu_from([3]))
    with pytest.raises(ValueError, match="query"):
        AttentionPool(DIM, HEADS)(torch.randn(3, DIM), cu_from([3]), query=torch.randn(DIM + 1))


def test_torch_compile_fullgraph():
    pool = AttentionPool(DIM, HEADS, learnable_query=False)
    query = torch.randn(DIM, requires_grad=True)
    x, cu = torch.randn(12, DIM, requires_grad=True), cu_from([4, 8])
    compiled = torch.compile(pool, fullgraph=True, backend="aot_eager")
    out = compiled(x, cu, max_seqlen=8, query=query)
    out.sum().backward()
    grads = [t.grad.clone() for t in (x, query)]
    x.grad = query.grad = None
    expected = pool(x, cu, max_seqlen=8, query=query)
    expected.sum().backward()
    assert torch.allclose(out, expected, atol=1e-6)
    assert all(torch.allclose(g, t.grad, atol=1e-6) for g, t in zip(grads, (x, query)))
