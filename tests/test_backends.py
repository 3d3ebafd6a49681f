"""Every attention backend against a dense float64 reference on the packed layout."""
from __future__ import annotations

import pytest
import torch

from elasticast_kernels.backends import (
    BACKEND_NAMES,
    SeqLayout,
    attention,
    available_backends,
    resolve_backend,
    row_padded,
)

CPU_BACKENDS = [name for name in BACKEND_NAMES if name != "auto"]


def reference_attention(q, k, v, seqlens, scale):
    """Dense float64: per sample, softmax(scale * q k^T) v."""
    outs, start = [], 0
    for n in seqlens:
        qs, ks, vs = (t[start : start + n].double().transpose(0, 1) for t in (q, k, v))
        outs.append(((qs @ ks.transpose(-1, -2) * scale).softmax(-1) @ vs).transpose(0, 1))
        start += n
    return torch.cat(outs)


def skip_unless_available(name: str, device: str = "cpu") -> None:
    reason = available_backends(device)[name]
    if reason is not None:
        pytest.skip(f"{name} unavailable: {reason}")


LAYOUTS = [
    # (seqlens, pack_offsets)
    ((7,), (0, 1)),
    ((5, 12, 1, 9), (0, 4)),
    ((5, 12, 1, 9), (0, 2, 3, 4)),
    ((33, 3, 17, 17, 8), (0, 1, 3, 5)),
]


@pytest.mark.parametrize("name", CPU_BACKENDS)
@pytest.mark.parametrize("seqlens,pack_offsets", LAYOUTS)
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_backend_matches_reference(name, seqlens, pack_offsets, scale, torch_cpu_path):
    skip_unless_available(name)
    heads, head_dim = 2, 8
    total = sum(seqlens)
    q, k, v = (torch.randn(total, heads, head_dim) for _ in range(3))
    layout = SeqLayout.from_seqlens(seqlens, "cpu", pack_offsets)
    out = attention(q, k, v, layout, scale, backend=name)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, seqlens, scale), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", ["torch", "sdpa_masked", "padded", "flex"])
def test_backend_float64_and_strided_kv(name, torch_cpu_path):
    """float64 works, and k/v may be strided views of one ``to_kv`` output (as in the model)."""
    skip_unless_available(name)
    seqlens, heads, head_dim = (4, 11, 6), 3, 4
    total = sum(seqlens)
    q = torch.randn(total, heads, head_dim, dtype=torch.float64)
    k, v = torch.randn(total, 2, heads, head_dim, dtype=torch.float64).unbind(1)
    layout = SeqLayout.from_seqlens(seqlens, "cpu", (0, 2, 3))
    out = attention(q, k, v, layout, 1.0, backend=name)
    torch.testing.assert_close(out, reference_attention(q, k, v, seqlens, 1.0), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ["torch", "sdpa_masked", "padded", "flex"])
def test_backend_gradients(name, torch_cpu_path):
    skip_unless_available(name)
    seqlens = (3, 8, 5)
    total = sum(seqlens)
    inputs = [torch.randn(total, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    layout = SeqLayout.from_seqlens(seqlens, "cpu", (0, 1, 3))
    if name == "flex":  # torch has no FlexAttention backward on the CPU: a clear error instead
        with pytest.raises(NotImplementedError, match="no backward on CPU"):
            attention(*inputs, layout, 0.5, backend=name)
        return
    grads = torch.autograd.grad(attention(*inputs, layout, 0.5, backend=name).square().sum(), inputs)
    expected = torch.autograd.grad(reference_attention(*inputs, seqlens, 0.5).square().sum(), inputs)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_triton_backend_under_interpreter(monkeypatch):
    """Our kernel through the registry (interpreted on CPU; tiny shapes)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    skip_unless_available("triton")
    seqlens = (5, 12, 3)
    q, k, v = (torch.randn(sum(seqlens), 2, 16) for _ in range(3))
    layout = SeqLayout.from_seqlens(seqlens)
    out = attention(q, k, v, layout, 1.0, backend="triton")
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, seqlens, 1.0), atol=1e-4, rtol=1e-4)


def test_auto_picks_torch_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter is for tests, never "fastest"
    assert resolve_backend("auto", "cpu", torch.float32) == "torch"


def test_availability_reports_reasons():
    table = available_backends("cpu")
    assert set(table) == set(CPU_BACKENDS)
    for name in ("torch", "sdpa_masked", "padded"):
        assert table[name] is None
    if not torch.cuda.is_available():
        for name in ("varlen_attn", "flash_attn", "xformers"):
            assert "CUDA" in table[name]


def test_unavailable_and_unknown_backends_raise():
    q = torch.randn(4, 1, 8)
    layout = SeqLayout.from_seqlens((4,))
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        resolve_backend("nope", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="varlen_attn.*not available on cpu.*CUDA"):
            attention(q, q, q, layout, 1.0, backend="varlen_attn")
        # the registry checks first; the backend function itself refuses CPU tensors too
        from elasticast_kernels.backends import _varlen_attn_backend

        with pytest.raises(NotImplementedError, match="CUDA only"):
            _varlen_attn_backend(q, q, q, layout, 1.0)


def test_bad_inputs_raise():
    layout = SeqLayout.from_seqlens((3, 2))
    q = torch.randn(5, 2, 4)
    with pytest.raises(ValueError, match="k must match q"):
        attention(q, torch.randn(5, 2, 3), q, layout, 1.0)
    with pytest.raises(ValueError, match="covers 5 tokens but q has 6"):
        attention(torch.randn(6, 2, 4), torch.randn(6, 2, 4), torch.randn(6, 2, 4), layout, 1.0)
    with pytest.raises(ValueError, match=r"\[total_tokens, heads, head_dim\]"):
        attention(q[0], q[0], q[0], layout, 1.0)
    with pytest.raises(TypeError, match="SeqLayout"):
        attention(q, q, q, (3, 2), 1.0)
    with pytest.raises(ValueError, match="pack_offsets"):
        SeqLayout.from_seqlens((3, 2), pack_offsets=(0, 3))
    with pytest.raises(ValueError, match="non-negative"):
        SeqLayout.from_seqlens((3, -2))


def test_layout_caches_masks_once():
    layout = SeqLayout.from_seqlens((3, 2, 4), pack_offsets=(0, 2, 3))
    q = torch.randn(9, 1, 4)
    attention(q, q, q, layout, 1.0, backend="sdpa_masked")
    cached = dict(layout._cache)
    attention(q, q, q, layout, 1.0, backend="sdpa_masked")
    assert all(layout._cache[key] is value for key, value in cached.items())


def test_row_padded_layout_reproduces_packed_attention(torch_cpu_path):
    """The published model's layout (packs padded to the longest pack) gives the same real outputs."""
    seqlens, pack_offsets = (5, 12, 1, 9, 4), (0, 2, 4, 5)  # packs of 17, 10 and 4 tokens
    layout = SeqLayout.from_seqlens(seqlens, "cpu", pack_offsets)
    rows_layout, index = row_padded(layout, "cpu")
    assert rows_layout.seqlens == (5, 12, 1, 9, 7, 4, 13)  # each row's padding is one extra segment
    assert rows_layout.pack_offsets == (0, 2, 5, 7) and rows_layout.total_tokens == 3 * 17
    assert index.tolist() == list(range(17)) + list(range(17, 27)) + list(range(34, 38))
    q, k, v = (torch.randn(sum(seqlens), 2, 8) for _ in range(3))
    padded = [torch.zeros(51, 2, 8).index_copy(0, index, t) for t in (q, k, v)]
    out = attention(*padded, rows_layout, 1.0, backend="sdpa_masked").index_select(0, index)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, seqlens, 1.0), atol=2e-5, rtol=2e-5)
