"""Every attention backend of the registry against a float64 reference on the packed layout."""
from __future__ import annotations

import os

import pytest
import torch

from elasticast_kernels.backends import (
    BACKEND_NAMES,
    BACKENDS,
    SeqLayout,
    attention,
    available_backends,
    resolve_backend,
)
from helpers import reference_attention

CPU_BACKENDS = [name for name in BACKEND_NAMES if name != "auto"]


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
    ((6, 6, 6, 6), (0, 2, 4)),  # equal lengths: one batched call
    ((4, 9, 4, 0, 9, 9, 4), (0, 7)),  # equal lengths apart and adjacent, an empty sample: runs
]


@pytest.mark.parametrize("name", CPU_BACKENDS)
@pytest.mark.parametrize("seqlens,pack_offsets", LAYOUTS)
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_backend_matches_reference(name, seqlens, pack_offsets, scale, torch_cpu_path):
    skip_unless_available(name)
    heads, head_dim = 2, 8
    total = sum(seqlens)
    q, k, v = (torch.randn(total, heads, head_dim) for _ in range(3))
    layout = SeqLayout(seqlens, pack_offsets)
    out = attention(q, k, v, layout, scale, backend=name)
    assert out.shape == q.shape and out.dtype == q.dtype
    expected = reference_attention(q, k, v, layout.cu_seqlens, scale)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("seqlens", [(), (0, 0)], ids=["no_samples", "all_empty"])
def test_torch_backend_without_tokens(seqlens, torch_cpu_path):
    q = torch.randn(0, 2, 8, requires_grad=True)
    out = attention(q, q, q, SeqLayout(seqlens), 1.0, backend="torch")
    assert out.shape == (0, 2, 8)
    out.sum().backward()


@pytest.mark.parametrize("name", ["torch", "flex"])
def test_backend_float64_and_strided_kv(name, torch_cpu_path):
    """float64 works, and k/v may be strided views of one ``to_kv`` output (as in the model)."""
    skip_unless_available(name)
    seqlens, heads, head_dim = (4, 11, 6), 3, 4
    total = sum(seqlens)
    q = torch.randn(total, heads, head_dim, dtype=torch.float64)
    k, v = torch.randn(total, 2, heads, head_dim, dtype=torch.float64).unbind(1)
    layout = SeqLayout(seqlens, (0, 2, 3))
    out = attention(q, k, v, layout, 1.0, backend=name)
    torch.testing.assert_close(out, reference_attention(q, k, v, layout.cu_seqlens, 1.0), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("seqlens", [(3, 8, 5), (6, 6, 6), (4, 7, 4, 7)])
def test_torch_backend_gradients(seqlens, torch_cpu_path):
    total = sum(seqlens)
    inputs = [torch.randn(total, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    layout = SeqLayout(seqlens)
    grads = torch.autograd.grad(attention(*inputs, layout, 0.5, backend="torch").square().sum(), inputs)
    expected = torch.autograd.grad(reference_attention(*inputs, layout.cu_seqlens, 0.5).square().sum(), inputs)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_flex_has_no_cpu_backward(torch_cpu_path):
    skip_unless_available("flex")
    inputs = [torch.randn(9, 2, 4, requires_grad=True) for _ in range(3)]
    with pytest.raises(NotImplementedError, match="no backward on CPU"):
        attention(*inputs, SeqLayout((4, 5)), 0.5, backend="flex")


def test_triton_backend_under_interpreter(monkeypatch):
    """Our kernel through the registry (interpreted on CPU; tiny shapes)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    skip_unless_available("triton")
    layout = SeqLayout((5, 12, 3))
    q, k, v = (torch.randn(layout.total_tokens, 2, 16) for _ in range(3))
    out = attention(q, k, v, layout, 1.0, backend="triton")
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, layout.cu_seqlens, 1.0), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", CPU_BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_non_finite_value_stays_in_its_sample(name, bad, where, monkeypatch):
    """A NaN/inf in one sample makes that sample's output non-finite and no other's; backends
    that cannot promise it say so (``isolates_samples=False``)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    skip_unless_available(name)
    layout = SeqLayout((5, 7, 4, 7), (0, 4))
    q, k, v = (torch.randn(layout.total_tokens, 2, 16) for _ in range(3))
    {"q": q, "k": k, "v": v}[where][7, 1, 3] = bad  # token 2 of sample 1
    with torch.no_grad():
        out = attention(q, k, v, layout, 1.0, backend=name)
    per_sample = [out[a:b] for a, b in zip(layout.cu_seqlens[:-1].tolist(), layout.cu_seqlens[1:].tolist())]
    assert not torch.isfinite(per_sample[1]).all(), f"{name}: the poisoned sample came back finite"
    others_finite = all(torch.isfinite(per_sample[i]).all() for i in (0, 2, 3))
    if BACKENDS[name].isolates_samples:
        assert others_finite, f"{name}: a non-finite value reached another sample"
    elif where == "v":  # the documented leak: probability 0 times a non-finite value
        assert not others_finite, f"{name} isolates samples after all: update its isolates_samples"


def test_auto_picks_torch_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter is for tests, never "fastest"
    assert resolve_backend("auto", "cpu", torch.float32) == "torch"


def test_availability_reports_reasons():
    table = available_backends("cpu")
    assert set(table) == set(CPU_BACKENDS)
    assert table["torch"] is None
    if not torch.cuda.is_available():
        for name in ("varlen_attn", "flash_attn", "xformers"):
            assert "CUDA" in table[name]


def test_unavailable_and_unknown_backends_raise():
    q = torch.randn(4, 1, 8)
    layout = SeqLayout((4,))
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        resolve_backend("nope", "cpu")
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        attention(q, q, q, layout, 1.0, backend="nope")
    with pytest.raises(TypeError, match="attention backend must be a name"):
        attention(q, q, q, layout, 1.0, backend=None)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="varlen_attn.*not available on cpu.*CUDA"):
            attention(q, q, q, layout, 1.0, backend="varlen_attn")


@pytest.mark.parametrize("old", ["sdpa_masked", "padded"])
def test_moved_padded_backends_are_deprecated_aliases(old, torch_cpu_path):
    layout = SeqLayout((3, 5), (0, 1, 2))
    q, k, v = (torch.randn(8, 2, 4) for _ in range(3))
    with pytest.warns(DeprecationWarning, match="elasticast_kernels.bench.padded"):
        out = attention(q, k, v, layout, 1.0, backend=old)
    torch.testing.assert_close(out, attention(q, k, v, layout, 1.0, backend="torch"))


def test_bad_inputs_raise():
    layout = SeqLayout((3, 2))
    q = torch.randn(5, 2, 4)
    with pytest.raises(ValueError, match="k must match q"):
        attention(q, torch.randn(5, 2, 3), q, layout, 1.0)
    with pytest.raises(ValueError, match="covers 5 tokens but q has 6"):
        attention(torch.randn(6, 2, 4), torch.randn(6, 2, 4), torch.randn(6, 2, 4), layout, 1.0)
    with pytest.raises(ValueError, match=r"\[total_tokens, heads, head_dim\]"):
        attention(q[0], q[0], q[0], layout, 1.0)
    with pytest.raises(TypeError, match="SeqLayout"):
        attention(q, q, q, (3, 2), 1.0)
    for scale in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="softmax_scale must be finite"):
            attention(q, q, q, layout, scale)
    for scale in ("1.0", torch.tensor(1.0), 1j, True):
        with pytest.raises(TypeError, match="softmax_scale must be a real number"):
            attention(q, q, q, layout, scale)


def test_layout_caches_once_per_layout(torch_cpu_path):
    layout = SeqLayout((3, 2, 3, 4))
    q = torch.randn(12, 1, 4)
    attention(q, q, q, layout, 1.0, backend="torch")
    cached = dict(layout._cache)
    assert cached, "the torch backend caches its length groups"
    attention(q, q, q, layout, 1.0, backend="torch")
    assert all(layout._cache[key] is value for key, value in cached.items())


def test_triton_backend_builds_the_launch_schedule_once_per_layout(monkeypatch):
    """The kernels' launch order is computed once per layout and shared by every layer and by the
    backward (six small device ops per batch instead of per kernel launch)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    skip_unless_available("triton")
    import importlib

    from elasticast_kernels.ops import _common

    op_module = importlib.import_module("elasticast_kernels.ops.varlen_attention")  # the module, not the function

    calls = []
    real = _common.longest_first
    monkeypatch.setattr(op_module, "longest_first", lambda cu: calls.append(1) or real(cu))
    # the interpreter-only check of a given schedule's values rebuilds it; CUDA never does
    real_check = op_module._check_schedule
    monkeypatch.setattr(op_module, "_check_schedule", lambda s, q, k, used: real_check(s, q, k, False))
    layout = SeqLayout((5, 12, 3))
    outs = []
    for _ in range(3):  # three layers
        q, k, v = (torch.randn(layout.total_tokens, 2, 16, requires_grad=True) for _ in range(3))
        outs.append(attention(q, k, v, layout, 1.0, backend="triton"))
    sum(o.sum() for o in outs).backward()
    assert len(calls) == 1
    assert layout.cached("launch_schedule", lambda: None) is not None


def test_launch_count_script_counts_one_schedule_per_step():
    """benchmarks/launches_per_step.py (the README's launch count) runs and finds one schedule per step."""
    import subprocess
    import sys
    from pathlib import Path

    skip_unless_available("triton")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "launches_per_step.py"
    done = subprocess.run([sys.executable, str(script), "--depth", "2"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr
    assert "depth 2: 1 schedule(s) built" in done.stdout and "one per launcher: 4 schedules" in done.stdout
