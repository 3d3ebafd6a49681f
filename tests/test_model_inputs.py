"""ElasticAST drop-in: constructor options, input checks, token dropout, long samples, torch.compile."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from elasticast_kernels.models import ElasticAST
from elasticast_kernels.models.inputs import PatchGrid, prepare_packed, prepare_spectrograms, token_keep_counts
from elasticast_kernels.packing import STRATEGIES, pack_lengths, pack_spectrograms, unpack
from reference_elasticast import make_specs

CONFIG = dict(sample_size=(32, 128), patch_size=16, num_classes=3, dim=32, depth=1, heads=2, channels=1)


def specs_of(*frames: int, freq_bins: int = 32) -> list[torch.Tensor]:
    return make_specs(frames, freq_bins=freq_bins, dtype=torch.float32)


# --- constructor ------------------------------------------------------------------------------
@pytest.mark.parametrize("keyword", ["imagenet_pretrain", "SSAST_pretrain", "AST_pretrain"])
def test_pretrain_keywords_point_at_convert(keyword):
    with pytest.raises(ValueError, match=rf"{keyword}.*elasticast_kernels\.convert\.from_"):
        ElasticAST(**CONFIG, **{keyword: True})
    ElasticAST(**CONFIG, **{keyword: False})  # falsy: accepted, nothing to do


def test_constructor_is_keyword_only_and_checks_options():
    with pytest.raises(TypeError):
        ElasticAST((32, 128), 16, 3, 32, 1, 2)
    with pytest.raises(ValueError, match="attention_backend"):
        ElasticAST(**CONFIG, attention_backend="cuDNN")
    with pytest.raises(ValueError, match="packing"):
        ElasticAST(**CONFIG, packing="worst_fit")
    with pytest.raises(ValueError, match="divisible by heads"):
        ElasticAST(**{**CONFIG, "heads": 5})
    with pytest.raises(ValueError, match="sample_size"):
        ElasticAST(**{**CONFIG, "sample_size": (32, 120)})
    with pytest.warns(UserWarning, match="unknown keyword"):
        ElasticAST(**CONFIG, some_recipe_flag=1)


def test_dim_head_is_ignored_like_the_reference():
    model = ElasticAST(**CONFIG, dim_head=999)
    assert model.blocks.modules_list[0].attn.head_dim == CONFIG["dim"] // CONFIG["heads"]


# --- input checks ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "samples,error,match",
    [
        ([torch.randn(1, 32, 40)], ValueError, r"sample 0: T=40 is not a positive multiple of patch_size=16 \(crop T"),
        ([torch.randn(1, 32, 32), torch.randn(1, 24, 32)], ValueError, r"sample 1: F=24 is not a positive multiple"),
        ([torch.randn(2, 32, 32)], ValueError, r"sample 0 must be \[C=1, F, T\]"),
        ([torch.randn(32, 32)], ValueError, r"sample 0 must be \[C=1, F, T\]"),
        ([torch.randn(1, 48, 32)], ValueError, r"sample 0 has F=48 mel bins: 3 frequency patches, more than the 2 rows"),
        ([torch.randn(1, 32, 32), torch.randn(1, 32, 32, dtype=torch.float64)], ValueError, r"sample 1 is torch.float64"),
        ([], ValueError, "empty"),
        (torch.randn(2, 1, 32, 32), TypeError, "list of"),
        (["spec"], TypeError, "sample 0 must be a torch.Tensor"),
    ],
)
def test_bad_samples_raise(samples, error, match, torch_cpu_path):
    model = ElasticAST(**CONFIG).eval()
    with pytest.raises(error, match=match):
        model(samples)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sample_over_group_limit_gets_a_pack_of_its_own(strategy, torch_cpu_path, monkeypatch):
    model = ElasticAST(**CONFIG, packing=strategy).eval()
    specs = specs_of(32, 128, 48, 112, 16)  # 4, 16, 6, 14, 2 tokens: two longer than the budget of 10
    seen = spy_on_packed_batches(model, monkeypatch)
    with torch.no_grad():
        got = model(specs, group_max_seq_len=10)
        want = model(specs, group_max_seq_len=2048)  # one pack: packing never changes logits
        alone = torch.cat([model([spec]) for spec in specs])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)
    batch = seen[0]
    packs = [batch.sample_index[a:b].tolist() for a, b in zip(batch.pack_offsets, batch.pack_offsets[1:])]
    assert [1] in packs and [3] in packs
    assert all(tokens <= 10 for pack, tokens in zip(packs, batch.pack_tokens()) if len(pack) > 1)
    with torch.no_grad():  # caller-grouped rows carry no limit, as in the reference
        assert model([specs], group_samples=False, group_max_seq_len=10).shape == (5, 3)


def test_a_bad_group_limit_is_named(torch_cpu_path):
    model = ElasticAST(**CONFIG).eval()
    for bad in (0, 2**31):
        with pytest.raises(ValueError, match=r"group_max_seq_len must be in \[1, 2147483647\]"):
            model(specs_of(32), group_max_seq_len=bad)
    for bad in (2.0, True, None):
        with pytest.raises(TypeError, match="group_max_seq_len must be an int"):
            model(specs_of(32), group_max_seq_len=bad)


def test_bad_rows_raise(torch_cpu_path):
    model = ElasticAST(**CONFIG).eval()
    with pytest.raises(ValueError, match=r"batched_samples\[1\] must be a non-empty list"):
        model([specs_of(32), []], group_samples=False)


# --- preparation without a model -------------------------------------------------------------
def test_preparation_needs_only_a_patch_grid():
    """What another patch model reuses: a PatchGrid in, the packed batch and the input order out."""
    grid = PatchGrid(channels=1, patch_size=16, freq_rows=2, time_rows=8)
    specs = specs_of(32, 64, 128, 16)  # 4, 8, 16, 2 tokens
    prepared = prepare_spectrograms(specs, grid, max_tokens=20, strategy="best_fit_decreasing")
    expected = pack_spectrograms(specs, 16, pack_lengths([4, 8, 16, 2], 20, "best_fit_decreasing"))
    batch = prepared.batch
    assert torch.equal(batch.patches, expected.patches) and torch.equal(batch.time_idx, expected.time_idx)
    assert batch.layout.seqlens == expected.layout.seqlens and batch.pack_offsets == expected.pack_offsets
    assert batch.sample_index.tolist() != [0, 1, 2, 3]  # the plan reorders ...
    per_segment = batch.sample_index.double()[:, None]
    assert prepared.in_input_order(per_segment)[:, 0].tolist() == [0, 1, 2, 3]  # ... and this undoes it
    table = torch.randn(8, 5)
    assert prepared.stretched == () and prepared.time_table(table) is table
    again = prepare_packed(expected, grid)
    assert again.batch is expected and again.stretched == ()


def test_patch_grid_checks_its_rule():
    with pytest.raises(ValueError, match="past_time_table must be one of"):
        PatchGrid(channels=1, patch_size=16, freq_rows=2, time_rows=8, past_time_table="wrap")
    with pytest.raises(ValueError, match=r"stride\[1\] must be"):
        PatchGrid(channels=1, patch_size=16, freq_rows=2, time_rows=8, stride=(10, 0))


def test_overlapping_patches_for_another_model():
    """An AST-like grid (16x16 patches every 10 frames): counts and positions of the strided grid,
    a sample past its time table stretched onto its own copy."""
    grid = PatchGrid(channels=1, patch_size=16, freq_rows=12, time_rows=101, stride=(10, 10))
    specs = [torch.randn(1, 128, t) for t in (1024, 26, 1500)]  # 101, 2 and 149 time patches
    prepared = prepare_spectrograms(specs, grid, max_tokens=12 * 101)
    batch = prepared.batch
    assert batch.grid_shapes == ((12, 101), (12, 2), (12, 149))
    assert batch.seqlens == (12 * 101, 12 * 2, 12 * 149) and batch.num_packs == 3
    assert prepared.stretched == (149,)
    long_segment = unpack(batch.time_idx, batch.cu_seqlens)[2]
    assert long_segment.min() == 101 and long_segment.max() == 101 + 148  # its copy follows the table
    assert prepared.time_table(torch.randn(101, 4)).shape == (101 + 149, 4)
    with pytest.raises(ValueError, match=r"sample 0: T=10 is shorter than patch_size=16"):
        prepare_spectrograms([torch.randn(1, 128, 10)], grid)


# --- token dropout ----------------------------------------------------------------------------
def test_keep_counts_follow_the_spec():
    lengths = [10, 1, 7, 64]
    common = dict(token_dropout_prob=None, random_token_dropout=0.0, eval_token_dropout=0.0)
    assert token_keep_counts(lengths, training=True, **common) is None
    assert token_keep_counts(lengths, training=False, **common) is None
    assert token_keep_counts(lengths, training=True, **{**common, "token_dropout_prob": 0.25}) == [7, 1, 5, 48]
    # eval_token_dropout is the fraction KEPT, and only applies in eval
    assert token_keep_counts(lengths, training=False, **{**common, "eval_token_dropout": 0.25}) == [2, 1, 1, 16]
    assert token_keep_counts(lengths, training=True, **{**common, "eval_token_dropout": 0.25}) is None
    torch.manual_seed(3)
    randomised = token_keep_counts(lengths, training=True, **{**common, "random_token_dropout": 0.5, "token_dropout_prob": 0.9})
    torch.manual_seed(3)
    probs = [float(torch.rand(())) * 0.5 for _ in lengths]
    assert randomised == [max(1, int(n * (1 - p))) for n, p in zip(lengths, probs)]


def spy_on_packed_batches(model: ElasticAST, monkeypatch) -> list:
    """The prepared batches the model's network sees, in call order."""
    seen = []
    original = model.embed_packed

    def spy(batch, time_table=None):
        seen.append(batch)
        return original(batch, time_table)

    monkeypatch.setattr(model, "embed_packed", spy)
    return seen


def test_training_token_dropout_packs_the_kept_tokens(torch_cpu_path, monkeypatch):
    model = ElasticAST(**CONFIG, token_dropout_prob=0.5).train()
    seen = spy_on_packed_batches(model, monkeypatch)
    specs = specs_of(128, 32, 64)  # 16, 4, 8 tokens -> keep 8, 2, 4
    logits = model(specs, group_max_seq_len=10)
    batch = seen[0]
    assert logits.shape == (3, 3)
    kept = dict(zip(batch.sample_index.tolist(), batch.seqlens))
    assert kept == {0: 8, 1: 2, 2: 4}
    assert batch.cu_seqlens.tolist()[-1] == batch.patches.shape[0] == 14
    assert max(sum(batch.seqlens[a:b]) for a, b in zip(batch.pack_offsets, batch.pack_offsets[1:])) <= 10
    # every kept token is a real token of its sample, with its own position
    start = 0
    for sample, n in zip(batch.sample_index.tolist(), batch.seqlens):
        spec = specs[sample]
        time_patches = spec.shape[2] // 16
        for t in range(start, start + n):
            f, tt = int(batch.freq_idx[t]), int(batch.time_idx[t])
            patch = spec[0, f * 16 : (f + 1) * 16, tt * 16 : (tt + 1) * 16].reshape(-1)
            torch.testing.assert_close(batch.patches[t], patch)
            assert tt < time_patches
        start += n


def test_eval_mode_is_deterministic_without_eval_dropout(torch_cpu_path):
    model = ElasticAST(**CONFIG, token_dropout_prob=0.5, random_token_dropout=0.3).eval()
    specs = specs_of(128, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(specs), model(specs), rtol=0, atol=0)


# --- samples longer than the time positional table --------------------------------------------
def stretched_twin(model: ElasticAST, frames: int) -> ElasticAST:
    """The model with its time table linearly interpolated to ``frames`` frames: what a sample of
    that length must see under past_time_table="interpolate"."""
    twin = ElasticAST(**{**model.config, "sample_size": (32, frames)}).eval()
    state = dict(model.state_dict())
    table = state["pos_embed_time"]
    state["pos_embed_time"] = F.interpolate(table.t()[None], size=frames // 16, mode="linear", align_corners=False)[0].t()
    twin.load_state_dict(state, strict=True)
    return twin


def test_by_default_a_long_sample_sees_the_time_table_interpolated_to_its_length(torch_cpu_path):
    model = ElasticAST(**CONFIG).eval()  # time table: 8 rows (128 frames)
    assert model.config["past_time_table"] == "interpolate"
    long, longer, short = specs_of(192, 400, 64)
    with torch.no_grad():
        got = model([short, long, longer, short, long], group_max_seq_len=16)
        torch.testing.assert_close(got[1], stretched_twin(model, 192)([long])[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[4], got[1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[2], stretched_twin(model, 400)([longer])[0], rtol=1e-5, atol=1e-5)
        # samples within the table keep exactly their published positions
        torch.testing.assert_close(got[[0, 3]], model([short, short]), rtol=1e-6, atol=1e-6)
        # the same batch as a PackedBatch: its grid_shapes give the time extents
        torch.testing.assert_close(model(pack_spectrograms([short, long, longer, short, long], 16)), got,
                                   rtol=1e-5, atol=1e-5)


def test_the_published_error_is_an_option(torch_cpu_path):
    model = ElasticAST(**CONFIG, past_time_table="error").eval()
    with pytest.raises(ValueError, match=r"sample 1 spans 10 time patches, more than the 8 rows of the time positional "
                                         r"table; crop it, or build the model with past_time_table='interpolate'"):
        model(specs_of(32, 160))
    with pytest.raises(ValueError, match=r"segment 1 spans 10 time patches"):
        model(pack_spectrograms(specs_of(32, 160), 16))
    with torch.no_grad():
        assert model(specs_of(32, 128)).shape == (2, 3)  # within the table: as ever
    with pytest.raises(ValueError, match="past_time_table must be one of"):
        ElasticAST(**CONFIG, past_time_table="clamp")


def test_pos_embed_interpolation_is_a_deprecated_alias(torch_cpu_path):
    for old, new in ((True, "interpolate"), (False, "error")):
        with pytest.warns(DeprecationWarning, match="pos_embed_interpolation is deprecated"):
            model = ElasticAST(**CONFIG, pos_embed_interpolation=old)
        assert model.config["past_time_table"] == new and "pos_embed_interpolation" not in model.config


def test_a_packed_batch_without_grid_shapes_stays_within_the_table(torch_cpu_path):
    from dataclasses import replace

    model = ElasticAST(**CONFIG).eval()
    batch = replace(pack_spectrograms(specs_of(32, 160), 16), grid_shapes=None)
    with pytest.raises(ValueError, match=r"PackedBatch.time_idx holds values outside the rows of its positional "
                                         r"table; pass the list of spectrograms \(or set grid_shapes\)"):
        model(batch)


def test_long_samples_train_with_token_dropout(torch_cpu_path):
    """Dropout keeps tokens of the long sample with their (shifted) time positions; the time table
    gets gradients through the interpolated copy."""
    model = ElasticAST(**CONFIG, token_dropout_prob=0.3).train()
    logits = model(specs_of(400, 64, 256), group_max_seq_len=20)
    logits.square().sum().backward()
    grad = model.pos_embed_time.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad.abs().sum(1) > 0).all()


# --- torch.compile --------------------------------------------------------------------------
def test_torch_compile_forward_on_cpu(torch_cpu_path):
    model = ElasticAST(**CONFIG).eval()
    specs = specs_of(32, 128, 64)
    with torch.no_grad():
        eager = model(specs)
        compiled = torch.compile(model)(specs)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
