"""PackedAST against Hugging Face's ASTForAudioClassification (random weights, small ASTConfigs).

The reference for a clip of ``L`` frames is an HF AST built with ``max_length = L`` whose position
table is the big one's grid cut to its first ``t`` columns (or, past the table, interpolated along
time with ``F.interpolate(..., mode="bilinear")`` on the ``[f, t]`` grid, an independent
construction of the documented rule). Everything runs in float32 on the CPU with the torch backend.
"""
from __future__ import annotations

import copy
import json
import re

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification  # noqa: E402

from elasticast_kernels.backends import available_backends  # noqa: E402
from elasticast_kernels.models import PackedAST  # noqa: E402
from elasticast_kernels.models.ast_checkpoint import AST_CONFIG_DEFAULTS, PREFIX  # noqa: E402
from elasticast_kernels.models.ast_features import ASTFeatures  # noqa: E402
from elasticast_kernels.packing import pack_spectrograms  # noqa: E402
from elasticast_kernels.saved_model import load_model, save_model  # noqa: E402

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_length=64,
             num_mel_bins=32, num_labels=5)
# grid (2, 5): (32 - 16) // 10 + 1 = 2 frequency patches, (64 - 16) // 10 + 1 = 5 time patches
VARIANT = dict(SMALL, frequency_stride=8, time_stride=12, qkv_bias=False, hidden_act="gelu_new", layer_norm_eps=1e-6,
               num_mel_bins=40, max_length=70)
POSITIONS = PREFIX + "embeddings.position_embeddings"


def random_hf(**overrides) -> ASTForAudioClassification:
    """An HF AST with every parameter random (AST zero-initialises its tokens and positions)."""
    model = ASTForAudioClassification(ASTConfig(**{**SMALL, **overrides})).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.normal_(1.0 if "layernorm" in name and name.endswith("weight") else 0.0, 0.3)
    return model


def hf_for_length(hf: ASTForAudioClassification, frames: int) -> ASTForAudioClassification:
    """An HF AST for inputs of ``frames`` frames with ``hf``'s weights and its grid cut to (or
    interpolated along time to) the new time extent."""
    config = copy.deepcopy(hf.config)
    config.max_length = frames
    small = ASTForAudioClassification(config).eval()
    state = dict(hf.state_dict())
    table = state[POSITIONS]
    cfg = hf.config
    f = (cfg.num_mel_bins - cfg.patch_size) // cfg.frequency_stride + 1
    t = (cfg.max_length - cfg.patch_size) // cfg.time_stride + 1
    t_new = (frames - cfg.patch_size) // cfg.time_stride + 1
    grid = table[0, 2:].view(f, t, -1)
    if t_new <= t:
        grid = grid[:, :t_new]
    else:
        grid = F.interpolate(grid.permute(2, 0, 1)[None], size=(f, t_new), mode="bilinear",
                             align_corners=False)[0].permute(1, 2, 0)
    state[POSITIONS] = torch.cat([table[:, :2], grid.reshape(1, f * t_new, -1)], dim=1)
    small.load_state_dict(state)
    return small


def features(frames: int, mel: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, mel, generator=torch.Generator().manual_seed(seed))


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-4) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


@pytest.fixture
def hf():
    return random_hf()


@pytest.fixture
def packed(hf):
    return PackedAST.from_hf(hf, attention_backend="torch")


# --------------------------------------------------------------------------------------------------
# logits
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [{}, VARIANT], ids=["small", "strides-nobias-gelu_new-eps"])
def test_logits_at_max_length_equal_hf(overrides):
    hf = random_hf(**overrides)
    packed = PackedAST.from_hf(hf, attention_backend="torch")
    clips = torch.randn(3, hf.config.max_length, hf.config.num_mel_bins)
    with torch.no_grad():
        close(packed(list(clips)), hf(clips).logits)
        close(packed.embed(list(clips)), hf.audio_spectrogram_transformer(clips).pooler_output)


@pytest.mark.parametrize("frames", [16, 17, 25, 26, 40, 63])
def test_shorter_clip_equals_ast_with_the_sliced_table(hf, packed, frames):
    clip = features(frames)
    with torch.no_grad():
        close(packed([clip]), hf_for_length(hf, frames)(clip[None]).logits)


@pytest.mark.parametrize("frames", [0, 1, 15])
def test_clip_shorter_than_a_patch_is_padded_like_the_extractor(hf, packed, frames):
    """Padded to 16 frames with the extractor's normalised padding: an AST of max_length 16 on the
    extractor's output."""
    clip = features(frames)
    padded = torch.cat([clip, torch.full((16 - frames, 32), ASTFeatures().pad_value)])
    with torch.no_grad():
        close(packed([clip]), hf_for_length(hf, 16)(padded[None]).logits)


@pytest.mark.parametrize("frames", [74, 100, 333])
def test_past_the_table_interpolates_along_time(hf, packed, frames):
    clip = features(frames)
    with torch.no_grad():
        close(packed([clip]), hf_for_length(hf, frames)(clip[None]).logits)
    strict = PackedAST.from_hf(hf, attention_backend="torch", past_time_table="error")
    with pytest.raises(ValueError, match="clip|sample 0 spans"):
        strict([clip])


def test_mixed_batch_gives_each_clip_its_single_clip_logits(hf, packed):
    lengths = [64, 5, 40, 100, 17, 64, 33, 0, 26]
    clips = [features(n, seed=i) for i, n in enumerate(lengths)]
    with torch.no_grad():
        single = torch.cat([packed([clip]) for clip in clips])
        for i, n in enumerate(lengths):
            close(single[i:i + 1], hf_for_length(hf, max(n, 16))(packed.to_spectrogram(clips[i])[0].t()[None]).logits)
        for strategy in ("next_fit", "best_fit_decreasing", "histogram"):
            packed.packing = strategy
            for budget in (1, 30, 10_000):
                close(packed(clips, group_max_seq_len=budget), single, atol=1e-5)
        rows = [clips[:3], clips[3:4], clips[4:]]
        close(packed(rows, group_samples=False), single, atol=1e-5)


def test_packed_batch_input_equals_list_input(packed):
    clips = [features(n, seed=n) for n in (64, 20, 47, 90)]
    batch = pack_spectrograms([packed.to_spectrogram(c) for c in clips], packed.patch_size, stride=packed.stride)
    with torch.no_grad():
        close(packed(batch), packed(clips), atol=1e-6)


def test_forward_is_classifier_of_embed(packed):
    clips = [features(n, seed=n) for n in (64, 20, 47)]
    with torch.no_grad():
        close(packed(clips), packed.classifier(packed.embed(clips)), atol=0)


def test_state_dict_loads_back_into_hf(hf, packed):
    """Same names and shapes as transformers 5: fine-tuned weights go back to the HF class."""
    back = ASTForAudioClassification(hf.config).eval()
    back.load_state_dict(packed.state_dict())
    clips = torch.randn(2, 64, 32)
    with torch.no_grad():
        close(back(clips).logits, hf(clips).logits, atol=0)


def test_triton_backend_under_the_interpreter(monkeypatch, hf):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reason = available_backends("cpu")["triton"]
    if reason is not None:
        pytest.skip(f"triton unavailable: {reason}")
    hf = random_hf(num_hidden_layers=1, num_attention_heads=2)  # head_dim 16
    packed = PackedAST.from_hf(hf, attention_backend="triton")
    clips = [features(n, seed=n) for n in (64, 26, 16)]
    with torch.no_grad():
        got = packed(clips)
        packed.attention_backend = "torch"
        close(got, packed(clips), atol=1e-4)


def test_autocast_bfloat16_on_cpu(packed):
    clips = [features(n, seed=n) for n in (64, 30)]
    with torch.no_grad():
        want = packed(clips)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = packed(clips)
    assert got.dtype == torch.bfloat16
    close(got.float(), want, atol=0.25 * float(want.abs().max()))


# --------------------------------------------------------------------------------------------------
# gradients (fine-tuning)
# --------------------------------------------------------------------------------------------------
def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gradients_match_hf_at_max_length(hf, packed):
    clip, label = features(64), torch.tensor([3])
    F.cross_entropy(hf(clip[None]).logits, label).backward()
    F.cross_entropy(packed([clip]), label).backward()
    want, got = grads(hf), grads(packed)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


def test_gradients_of_a_mixed_batch_are_the_sum_of_single_clip_hf_runs(hf, packed):
    lengths, labels = [64, 30, 45, 16], torch.tensor([0, 4, 2, 1])
    clips = [features(n, seed=n) for n in lengths]
    F.cross_entropy(packed(clips), labels, reduction="sum").backward()
    got = grads(packed)
    want = {name: torch.zeros_like(p) for name, p in hf.named_parameters()}
    f = 2
    for clip, label in zip(clips, labels):
        small = hf_for_length(hf, clip.shape[0])
        F.cross_entropy(small(clip[None]).logits, label[None]).backward()
        for name, p in small.named_parameters():
            if name != POSITIONS:
                want[name] += p.grad
                continue
            t_small = (clip.shape[0] - 16) // 10 + 1
            want[name][:, :2] += p.grad[:, :2]
            want[name][0, 2:].view(f, 5, -1)[:, :t_small] += p.grad[0, 2:].view(f, t_small, -1)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


# --------------------------------------------------------------------------------------------------
# weights and checkpoints
# --------------------------------------------------------------------------------------------------
# transformers 4's names, written out independently of the module's table (ASTLayer of 4.x:
# attention.attention.{query,key,value}, attention.output.dense, intermediate.dense, output.dense)
T4_NAMES = {  # transformers 5 name inside a layer -> transformers 4 name
    "attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
}


def t4_state_dict(state: dict) -> dict:
    """A transformers 5 AST state dict under transformers 4's names (``layers.N.`` ->
    ``encoder.layer.N.``, the names inside a layer through ``T4_NAMES``; layer norms keep theirs)."""
    out = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"(.*)\.layers\.(\d+)\.(.*)", key)
        if match:
            prefix, layer, rest = match.groups()
            for new, old in T4_NAMES.items():
                if rest.startswith(new + "."):
                    rest = old + rest[len(new):]
            key = f"{prefix}.encoder.layer.{layer}.{rest}"
        out[key] = tensor
    return out


def test_both_state_dict_layouts_load(hf, packed):
    t4 = t4_state_dict(hf.state_dict())
    assert PREFIX + "encoder.layer.1.attention.attention.query.weight" in t4
    assert PREFIX + "encoder.layer.0.output.dense.bias" in t4
    assert PREFIX + "encoder.layer.0.layernorm_after.weight" in t4
    assert not any(".layers." in key for key in t4)
    other = PackedAST(**packed.config)
    other.load_hf_state_dict(t4)
    clips = [features(n, seed=n) for n in (64, 20)]
    with torch.no_grad():
        close(other.eval()(clips), packed(clips), atol=0)


def test_bad_state_dicts_are_clear_errors(hf, packed):
    state = dict(hf.state_dict())
    missing = {k: v for k, v in state.items() if "layers.1.mlp.fc2.bias" not in k}
    with pytest.raises(ValueError, match=r"1 missing: audio_spectrogram_transformer\.layers\.1\.mlp\.fc2\.bias"):
        packed.load_hf_state_dict(missing)
    with pytest.raises(ValueError, match=r"1 unknown: extra\.weight"):
        packed.load_hf_state_dict({**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape mismatch: classifier.dense.weight"):
        packed.load_hf_state_dict({**state, "classifier.dense.weight": torch.zeros(7, 32)})
    mixed = {**state, PREFIX + "encoder.layer.0.intermediate.dense.weight": torch.zeros(64, 32)}
    with pytest.raises(ValueError, match="mixes transformers 4"):
        packed.load_hf_state_dict(mixed)
    backbone_only = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    with pytest.raises(ValueError, match="no classifier"):
        packed.load_hf_state_dict(backbone_only)
    with pytest.raises(TypeError, match="mapping"):
        packed.load_hf_state_dict([1, 2])
    with pytest.raises(TypeError, match="maps to a str"):
        packed.load_hf_state_dict({**state, "x": "not a tensor"})


def test_save_pretrained_directory_loads_offline(tmp_path, monkeypatch, hf):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf.config.id2label = {i: f"sound {i}" for i in range(5)}
    hf.config.label2id = {v: k for k, v in hf.config.id2label.items()}
    hf.save_pretrained(tmp_path)
    extractor = ASTFeatureExtractor(num_mel_bins=32, max_length=64, mean=-3.0, std=2.0)
    extractor.save_pretrained(tmp_path)
    packed = PackedAST.from_hf(tmp_path, attention_backend="torch")
    assert packed.class_names == tuple(f"sound {i}" for i in range(5))
    assert packed.pad_value == pytest.approx(3.0 / 4.0)
    assert not packed.training
    clips = torch.randn(2, 64, 32)
    with torch.no_grad():
        close(packed(list(clips)), hf(clips).logits)


def test_sharded_and_transformers4_bin_directories_load(tmp_path, hf, packed):
    clips = [features(64), features(33, seed=1)]
    with torch.no_grad():
        want = packed(clips)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    old = tmp_path / "t4"
    old.mkdir()
    (old / "config.json").write_text((sharded / "config.json").read_text())
    torch.save(t4_state_dict(hf.state_dict()), old / "pytorch_model.bin")
    for folder in (sharded, old):
        with torch.no_grad():
            close(PackedAST.from_hf(str(folder), attention_backend="torch")(clips), want, atol=0)


def test_hostile_checkpoints(tmp_path, hf):
    with pytest.raises(FileNotFoundError, match="not a save_pretrained directory"):
        PackedAST.from_hf(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        PackedAST.from_hf(tmp_path)
    hf.save_pretrained(tmp_path / "ok")
    config = json.loads((tmp_path / "ok" / "config.json").read_text())

    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    with pytest.raises(ValueError, match="'vit' model, not an Audio Spectrogram Transformer"):
        PackedAST.from_hf(vit)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{\n  "model_type": "audio-spectrogram-transformer",\n  oops\n}')
    with pytest.raises(ValueError, match=r"config.json, line 3: not valid JSON"):
        PackedAST.from_hf(broken)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="has no weights"):
        PackedAST.from_hf(no_weights)
    (no_weights / "model.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        PackedAST.from_hf(no_weights)
    (no_weights / "model.safetensors").unlink()
    (no_weights / "pytorch_model.bin").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="pytorch_model.bin: not a readable PyTorch weights file"):
        PackedAST.from_hf(no_weights)
    wrong_size = tmp_path / "wrong_size"
    wrong_size.mkdir()
    (wrong_size / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    (wrong_size / "model.safetensors").write_bytes((tmp_path / "ok" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="shape mismatch"):
        PackedAST.from_hf(wrong_size)
    with pytest.raises(FileNotFoundError, match="is a file"):
        PackedAST.from_hf(tmp_path / "ok" / "config.json")


def test_hostile_models_and_options(hf):
    with pytest.raises(TypeError, match="has no classifier"):
        PackedAST.from_hf(hf.audio_spectrogram_transformer)
    with pytest.raises(TypeError, match="ASTForAudioClassification or a save_pretrained directory"):
        PackedAST.from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="unknown options"):
        PackedAST.from_hf(hf, dim=3)
    with pytest.raises(ValueError, match="hidden_act='mish' is not supported"):
        PackedAST(num_classes=2, hidden_act="mish")
    with pytest.raises(ValueError, match="max_length=8 must be >= patch_size"):
        PackedAST(num_classes=2, max_length=8)
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        PackedAST(num_classes=0)
    with pytest.raises(ValueError, match="pad_value must be finite"):
        PackedAST(num_classes=2, pad_value=float("nan"))
    with pytest.warns(UserWarning, match="attention_probs_dropout_prob"):
        PackedAST.from_hf(random_hf(attention_probs_dropout_prob=0.1))


def test_hostile_features(packed):
    with pytest.raises(ValueError, match=r"clip 1 must be \[frames, num_mel_bins=32\].*got shape \(1, 64, 32\)"
                                         r".*without a batch axis"):
        packed([features(64), features(64)[None]])
    with pytest.raises(ValueError, match=r"clip 0 must be .*got shape \(64, 40\)"):
        packed([features(64, mel=40)])
    with pytest.raises(ValueError, match="transposed"):
        packed([features(64).t()])
    with pytest.raises(ValueError, match=r"got shape \(64,\)"):
        packed([torch.randn(64)])
    with pytest.raises(TypeError, match="floating-point"):
        packed([torch.zeros(64, 32, dtype=torch.int64)])
    with pytest.raises(TypeError, match="clip 0 must be a torch.Tensor"):
        packed([[0.0] * 32])
    with pytest.raises(TypeError, match="list of \\[frames, num_mel_bins\\] tensors"):
        packed(torch.randn(2, 64, 32))
    with pytest.raises(ValueError, match="empty"):
        packed([])
    with pytest.raises(ValueError, match="float64 but the model's weights are torch.float32"):
        packed([features(64).double()])
    other = PackedAST(num_classes=5, num_mel_bins=48, max_length=64)
    batch = pack_spectrograms([other.to_spectrogram(torch.randn(64, 48))], 16, stride=(10, 10))
    with pytest.raises(ValueError, match="grid_shapes\\[0\\] has 4 frequency patches; this model reads 2"):
        packed(batch)


# --------------------------------------------------------------------------------------------------
# config and saved models
# --------------------------------------------------------------------------------------------------
def test_defaults_are_astconfigs():
    reference = ASTConfig()
    assert {key: getattr(reference, key) for key in AST_CONFIG_DEFAULTS} == AST_CONFIG_DEFAULTS
    model_config = PackedAST(num_classes=2, num_hidden_layers=1).config
    for key, value in AST_CONFIG_DEFAULTS.items():
        if key not in ("num_hidden_layers", "attention_probs_dropout_prob"):
            assert model_config[key] == value, key
    assert model_config["pad_value"] == pytest.approx(4.2677393 / (2 * 4.5689974))


def test_saved_model_round_trip(tmp_path, packed):
    settings = ASTFeatures(num_mel_bins=32, max_length=64).settings()
    names = [f"c{i}" for i in range(5)]
    save_model(tmp_path / "ast.pt", packed, classes=names, features=settings)
    loaded, card = load_model(tmp_path / "ast.pt")
    assert isinstance(loaded, PackedAST) and card.architecture == "PackedAST"
    assert card.classes == tuple(names) and loaded.config == packed.config
    assert ASTFeatures.from_settings(card.features, max_length=64) == ASTFeatures(num_mel_bins=32, max_length=64)
    clips = [features(n, seed=n) for n in (64, 7, 90)]
    with torch.no_grad():
        close(loaded(clips), packed(clips), atol=0)


def test_num_tokens_counts_as_the_packer(packed):
    for frames in (0, 15, 16, 25, 26, 64, 333):
        spec = packed.to_spectrogram(features(frames))
        batch = pack_spectrograms([spec], packed.patch_size, stride=packed.stride)
        assert packed.num_tokens(frames) == batch.total_tokens, frames


@pytest.mark.gpu
def test_cuda_matches_hf_without_host_syncs(hf):
    hf = hf.cuda()
    packed = PackedAST.from_hf(hf)
    clips = [features(n, seed=n).cuda() for n in (64, 20, 47, 100)]
    with torch.no_grad():
        want = torch.cat([hf_for_length(hf.cpu(), c.shape[0]).cuda()(c[None]).logits for c in clips[:3]])
        close(packed(clips)[:3], want, atol=1e-3)
        packed(clips)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            packed(clips)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_new_head_for_fine_tuning_on_other_labels(hf, tmp_path):
    """num_classes other than the checkpoint's: a new classifier.dense, everything else loaded."""
    packed = PackedAST.from_hf(hf, attention_backend="torch", num_classes=3)
    assert packed.num_classes == 3 and packed.config["num_classes"] == 3 and packed.class_names == ()
    assert packed.classifier.dense.weight.shape == (3, 32)
    same = {k: v for k, v in packed.state_dict().items() if not k.startswith("classifier.dense.")}
    for key, value in same.items():
        assert torch.equal(value, hf.state_dict()[key]), key
    clips = [features(64), features(20, seed=1)]
    with torch.no_grad():
        close(packed.embed(clips), PackedAST.from_hf(hf, attention_backend="torch").embed(clips), atol=0)
    save_model(tmp_path / "tuned.pt", packed, classes=["a", "b", "c"])
    loaded, card = load_model(tmp_path / "tuned.pt")
    assert card.classes == ("a", "b", "c") and loaded.num_classes == 3
    same_labels = PackedAST.from_hf(hf, num_classes=5, hidden_dropout_prob=0.1)
    assert same_labels.class_names == PackedAST.from_hf(hf).class_names
    assert same_labels.config["hidden_dropout_prob"] == 0.1
    assert torch.equal(same_labels.classifier.dense.weight, hf.classifier.dense.weight)
