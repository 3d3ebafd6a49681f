"""ElasticAST drop-in: same state dict and the same logits as the reference behaviour.

The reference (tests/reference_elasticast.py) pads rows and masks, in float64; the drop-in runs in
float32 on the packed layout. The spec's bar: max |logit difference| <= 1e-5 of the logit scale.
"""
from __future__ import annotations

import io

import pytest
import torch

from elasticast_kernels.backends import BACKEND_NAMES, available_backends
from elasticast_kernels.models import ElasticAST
from elasticast_kernels.packing import STRATEGIES, PackedBatch, pack_lengths, pack_spectrograms
from reference_elasticast import ReferenceElasticAST, make_specs, quality_frames

CONFIG = dict(sample_size=(32, 256), patch_size=16, num_classes=7, dim=64, depth=2, heads=4, channels=1)


def build(**overrides) -> tuple[ElasticAST, ReferenceElasticAST]:
    """A random drop-in in eval mode and the float64 reference holding the same weights."""
    config = {**CONFIG, **overrides}
    ref_keys = ("avg_pool_tk", "eval_token_dropout")
    model = ElasticAST(**config).eval()
    reference = ReferenceElasticAST(
        **{k: v for k, v in config.items() if k in CONFIG or k in ref_keys}
    ).double().eval()
    reference.load_state_dict({k: v.double() for k, v in model.state_dict().items()}, strict=True)
    return model, reference


def assert_logits_close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    scale = want.abs().max().item()
    err = (got.double() - want.double()).abs().max().item()
    assert err <= rel * scale, f"max |diff| {err:.3g} > {rel:g} x logit scale {scale:.3g}"


def mixed_lengths() -> list[int]:
    """Frames of several quality multipliers (T / 0.8 ... T / 5) plus odd lengths."""
    return quality_frames(200) + [16, 48, 256, 112]


def test_state_dict_matches_published_layout():
    model = ElasticAST(**CONFIG)
    keys = list(model.state_dict())
    depth = CONFIG["depth"]
    assert len(keys) == 14 * depth + 17
    expected = {"pos_embed_freq", "pos_embed_time", "attn_pool_queries", "patch_embed.0.weight", "patch_embed.0.bias",
                "norm.weight", "norm.bias", "mlp_norm.weight", "mlp_norm.bias", "head.weight", "head.bias"}
    for layer in ("to_q", "to_kv", "proj"):
        expected |= {f"attn_pool.{layer}.weight", f"attn_pool.{layer}.bias"}
    for i in range(depth):
        prefix = f"blocks.modules_list.{i}"
        for name in ("norm1", "norm2", "attn.to_q", "attn.to_kv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            expected |= {f"{prefix}.{name}.weight", f"{prefix}.{name}.bias"}
    assert set(keys) == expected
    shapes = model.state_dict()
    assert shapes["pos_embed_freq"].shape == (2, 64) and shapes["pos_embed_time"].shape == (16, 64)
    assert shapes["blocks.modules_list.0.attn.to_kv.weight"].shape == (128, 64)
    assert shapes["patch_embed.0.weight"].shape == (64, 256)


@pytest.mark.parametrize("group_max_seq_len", [40, 96, 2048])
@pytest.mark.parametrize("avg_pool_tk", [False, True])
def test_matches_reference(group_max_seq_len, avg_pool_tk, torch_cpu_path):
    model, reference = build(avg_pool_tk=avg_pool_tk)
    specs = make_specs(mixed_lengths(), freq_bins=32)
    with torch.no_grad():
        got = model([s.float() for s in specs], group_max_seq_len=group_max_seq_len)
        want = reference(specs, group_max_seq_len=group_max_seq_len)
    assert got.shape == (len(specs), CONFIG["num_classes"]) and got.dtype == torch.float32
    assert_logits_close(got, want)


def test_matches_reference_with_given_rows(torch_cpu_path):
    model, reference = build()
    specs = make_specs([32, 96, 256, 48, 160], freq_bins=32)
    rows = [[0, 1], [2], [3, 4]]
    with torch.no_grad():
        got = model([[specs[i].float() for i in row] for row in rows], group_samples=False)
        want = reference(specs, rows=rows)
    assert_logits_close(got, want)


@pytest.mark.parametrize("keep", [0.3, 0.75])
def test_eval_token_dropout_matches_reference(keep, torch_cpu_path):
    """Seeded: both sides draw torch.randperm(n)[:max(1, int(n * keep))] per sample in input order."""
    model, reference = build(eval_token_dropout=keep)
    specs = make_specs(mixed_lengths(), freq_bins=32)
    with torch.no_grad():
        torch.manual_seed(123)
        got = model([s.float() for s in specs], group_max_seq_len=64)
        torch.manual_seed(123)
        want = reference(specs, group_max_seq_len=64)
    assert_logits_close(got, want)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_packing_strategy_does_not_change_logits(strategy, torch_cpu_path):
    model, _ = build()
    specs = [s.float() for s in make_specs(mixed_lengths() * 2, freq_bins=32)]
    with torch.no_grad():
        baseline = model(specs, group_max_seq_len=64)
        model.packing = strategy
        got = model(specs, group_max_seq_len=64)
    assert_logits_close(got, baseline, rel=1e-6)


def test_changing_one_sample_leaves_the_others(torch_cpu_path):
    """The paper's contamination check, in float32: only the changed sample's logits move."""
    model, _ = build()
    specs = [s.float() for s in make_specs(mixed_lengths(), freq_bins=32)]
    changed = list(specs)
    changed[3] = torch.randn_like(specs[3])
    with torch.no_grad():
        before, after = model(specs, group_max_seq_len=96), model(changed, group_max_seq_len=96)
    others = [i for i in range(len(specs)) if i != 3]
    assert not torch.allclose(before[3], after[3])
    assert_logits_close(after[others], before[others], rel=1e-6)


@pytest.mark.parametrize("backend", [b for b in BACKEND_NAMES if b not in ("auto", "triton")])
def test_backends_give_the_same_logits(backend, torch_cpu_path):
    reason = available_backends("cpu")[backend]
    if reason is not None:
        pytest.skip(f"{backend} unavailable: {reason}")
    model, _ = build()
    specs = [s.float() for s in make_specs(mixed_lengths(), freq_bins=32)]
    with torch.no_grad():
        want = model(specs, group_max_seq_len=96)
        model.attention_backend = backend
        got = model(specs, group_max_seq_len=96)
    assert_logits_close(got, want)


def test_moved_padded_backend_names_are_deprecated_aliases(torch_cpu_path):
    with pytest.warns(DeprecationWarning, match="bench.padded"):
        model, _ = build(attention_backend="sdpa_masked")
    assert model.attention_backend == "torch"


def test_triton_backend_tiny_model_under_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reason = available_backends("cpu")["triton"]
    if reason is not None:
        pytest.skip(f"triton unavailable: {reason}")
    model = ElasticAST(sample_size=(32, 64), patch_size=16, num_classes=3, dim=32, depth=1, heads=2,
                       channels=1, attention_backend="triton").eval()
    specs = [s.float() for s in make_specs([32, 64, 16], freq_bins=32)]
    with torch.no_grad():
        got = model(specs)
        model.attention_backend = "torch"
        want = model(specs)
    assert_logits_close(got, want, rel=1e-4)


def test_packed_batch_input_equals_list_input(torch_cpu_path):
    model, _ = build()
    specs = [s.float() for s in make_specs(mixed_lengths(), freq_bins=32)]
    plan = pack_lengths([s.shape[1] // 16 * s.shape[2] // 16 for s in specs], 96, strategy="best_fit_decreasing")
    batch = pack_spectrograms(specs, 16, plan=plan)
    assert isinstance(batch, PackedBatch)
    with torch.no_grad():
        assert_logits_close(model(batch), model(specs), rel=1e-6)


def test_embed_is_what_the_head_sees(torch_cpu_path):
    """``forward == head(embed)`` in input order, for lists and PackedBatches alike; the config
    rebuilds the same architecture."""
    model, _ = build()
    specs = [s.float() for s in make_specs(mixed_lengths(), freq_bins=32)]
    with torch.no_grad():
        embeddings = model.embed(specs, group_max_seq_len=96)
        assert embeddings.shape == (len(specs), CONFIG["dim"])
        torch.testing.assert_close(model.head(embeddings), model(specs, group_max_seq_len=96), rtol=0, atol=0)
        plan = pack_lengths([s.shape[1] // 16 * s.shape[2] // 16 for s in specs], 96, strategy="best_fit_decreasing")
        assert_logits_close(model.embed(pack_spectrograms(specs, 16, plan=plan)), embeddings, rel=1e-6)
    rebuilt = ElasticAST(**model.config)
    assert rebuilt.config == model.config and rebuilt.softmax_scale == model.softmax_scale


def test_strict_save_load_round_trip(torch_cpu_path):
    model, _ = build()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    clone = ElasticAST(**CONFIG).eval()
    result = clone.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    specs = [s.float() for s in make_specs([48, 128], freq_bins=32)]
    with torch.no_grad():
        torch.testing.assert_close(clone(specs), model(specs), rtol=0, atol=0)


@pytest.mark.parametrize("options", [dict(token_dropout_prob=0.3), dict(random_token_dropout=0.5), dict()])
def test_gradients_reach_every_parameter(options, torch_cpu_path):
    model = ElasticAST(**CONFIG, dropout=0.1, emb_dropout=0.1, **options).train()
    specs = [s.float() for s in make_specs([48, 256, 96, 32], freq_bins=32)]
    logits = model(specs, group_max_seq_len=64)
    logits.square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.gpu
@pytest.mark.parametrize("options", [dict(), dict(packing="best_fit_decreasing"), dict(eval_token_dropout=0.5)])
def test_cuda_forward_never_syncs(options):
    """Host facts come from the inputs' shapes: no device-to-host sync on the forward."""
    model = ElasticAST(**CONFIG, attention_backend="auto", **options).cuda().eval()
    specs = [s.float().cuda() for s in make_specs(mixed_lengths(), freq_bins=32)]
    with torch.no_grad():
        model(specs, group_max_seq_len=96)  # warm-up: kernel compilation may sync
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(specs, group_max_seq_len=96)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [b for b in BACKEND_NAMES if b != "auto"])
def test_cuda_backends_agree_under_autocast(backend):
    reason = available_backends("cuda")[backend]
    if reason is not None:
        pytest.skip(f"{backend} unavailable: {reason}")
    model = ElasticAST(**CONFIG, attention_backend="torch").cuda().eval()
    specs = [s.float().cuda() for s in make_specs(mixed_lengths(), freq_bins=32)]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        want = model(specs, group_max_seq_len=96).float()
        model.attention_backend = backend
        got = model(specs, group_max_seq_len=96).float()
    assert_logits_close(got, want, rel=2e-2)
