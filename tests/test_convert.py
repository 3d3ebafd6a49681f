"""Weight transfer from small fake timm ViT, SSAST and ElasticAST checkpoints."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from elasticast_kernels import convert
from elasticast_kernels.models import ElasticAST
from reference_elasticast import make_specs

DIM, DEPTH, HEADS, PATCH = 32, 2, 2, 16


def make_model(time_frames: int = 512, channels: int = 1) -> ElasticAST:
    return ElasticAST(sample_size=(128, time_frames), patch_size=PATCH, num_classes=5, dim=DIM, depth=DEPTH,
                      heads=HEADS, channels=channels)


def fake_vit(grid=(14, 14), in_channels=3, prefix=("cls_token",), root="") -> dict[str, torch.Tensor]:
    """A timm-layout ViT state dict with small random tensors (DeiT/SSAST: add 'dist_token')."""
    state = {
        "patch_embed.proj.weight": torch.randn(DIM, in_channels, PATCH, PATCH),
        "patch_embed.proj.bias": torch.randn(DIM),
        "pos_embed": torch.randn(1, len(prefix) + grid[0] * grid[1], DIM),
        "norm.weight": torch.randn(DIM),
        "norm.bias": torch.randn(DIM),
        "head.weight": torch.randn(1000, DIM),
        "head.bias": torch.randn(1000),
    }
    for token in prefix:
        state[token] = torch.randn(1, 1, DIM)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": torch.randn(DIM), b + "norm1.bias": torch.randn(DIM),
            b + "norm2.weight": torch.randn(DIM), b + "norm2.bias": torch.randn(DIM),
            b + "attn.qkv.weight": torch.randn(3 * DIM, DIM), b + "attn.qkv.bias": torch.randn(3 * DIM),
            b + "attn.proj.weight": torch.randn(DIM, DIM), b + "attn.proj.bias": torch.randn(DIM),
            b + "mlp.fc1.weight": torch.randn(4 * DIM, DIM), b + "mlp.fc1.bias": torch.randn(4 * DIM),
            b + "mlp.fc2.weight": torch.randn(DIM, 4 * DIM), b + "mlp.fc2.bias": torch.randn(DIM),
        })
    return {root + k: v for k, v in state.items()}


def expected_positions(pos_embed, prefix_tokens, grid, freq, time):
    """AST's recipe written out: cut the middle (or resize), time first, then frequency."""
    g = pos_embed[0, prefix_tokens:].t().reshape(1, DIM, *grid)
    if time <= grid[1]:
        g = g[:, :, :, grid[1] // 2 - time // 2 : grid[1] // 2 - time // 2 + time]
    else:
        g = F.interpolate(g, size=(grid[0], time), mode="bilinear")
    if freq <= grid[0]:
        g = g[:, :, grid[0] // 2 - freq // 2 : grid[0] // 2 - freq // 2 + freq, :]
    else:
        g = F.interpolate(g, size=(freq, time), mode="bilinear")
    return g[0].mean(2).t(), g[0].mean(1).t()


@pytest.mark.parametrize("time_frames", [160, 512])  # time grid 10 (cut from 14) and 32 (resized)
@pytest.mark.parametrize("attn_pool_init", ["published", "mean"])
def test_timm_vit_mapping(time_frames, attn_pool_init, torch_cpu_path):
    source = fake_vit()
    model = make_model(time_frames)
    head_before = model.head.weight.detach().clone()
    untouched = convert.from_timm_vit(model, source, attn_pool_init=attn_pool_init)
    assert untouched == ["attn_pool_queries", "head.bias", "head.weight", "mlp_norm.bias", "mlp_norm.weight"]
    state = model.state_dict()

    torch.testing.assert_close(state["patch_embed.0.weight"], source["patch_embed.proj.weight"].sum(1).reshape(DIM, -1))
    freq, time = expected_positions(source["pos_embed"], 1, (14, 14), 8, time_frames // PATCH)
    torch.testing.assert_close(state["pos_embed_freq"], freq)
    torch.testing.assert_close(state["pos_embed_time"], time)
    for i in range(DEPTH):
        qkv = source[f"blocks.{i}.attn.qkv.weight"]
        torch.testing.assert_close(state[f"blocks.modules_list.{i}.attn.to_q.weight"], qkv[:DIM])
        torch.testing.assert_close(state[f"blocks.modules_list.{i}.attn.to_kv.weight"], qkv[DIM:])
        torch.testing.assert_close(state[f"blocks.modules_list.{i}.attn.to_kv.bias"], source[f"blocks.{i}.attn.qkv.bias"][DIM:])
        torch.testing.assert_close(state[f"blocks.modules_list.{i}.mlp.fc2.weight"], source[f"blocks.{i}.mlp.fc2.weight"])
    divisor = 6 * DEPTH if attn_pool_init == "published" else DEPTH
    pool_q = sum(source[f"blocks.{i}.attn.qkv.weight"][:DIM] for i in range(DEPTH)) / divisor
    pool_proj_bias = sum(source[f"blocks.{i}.attn.proj.bias"] for i in range(DEPTH)) / divisor
    torch.testing.assert_close(state["attn_pool.to_q.weight"], pool_q)
    torch.testing.assert_close(state["attn_pool.proj.bias"], pool_proj_bias)
    torch.testing.assert_close(model.head.weight, head_before)  # the classifier is not transferred
    with torch.no_grad():
        assert torch.isfinite(model.eval()(make_specs([160], freq_bins=128, dtype=torch.float32))).all()


def test_ssast_mapping_from_file(tmp_path, torch_cpu_path):
    source = fake_vit(grid=(8, 64), in_channels=1, prefix=("cls_token", "dist_token"), root="module.v.")
    source["module.mpc.weight"] = torch.randn(3)  # SSAST's pretext heads are ignored
    path = tmp_path / "ssast.pth"
    torch.save({"model": source}, path)
    model = make_model(1024)  # time grid 64: nothing to cut or resize
    untouched = convert.from_ssast(model, path)
    assert untouched == ["attn_pool_queries", "head.bias", "head.weight"]
    state = model.state_dict()
    grid = source["module.v.pos_embed"][0, 2:].t().reshape(DIM, 8, 64)
    torch.testing.assert_close(state["pos_embed_freq"], grid.mean(2).t())
    torch.testing.assert_close(state["pos_embed_time"], grid.mean(1).t())
    torch.testing.assert_close(state["patch_embed.0.weight"], source["module.v.patch_embed.proj.weight"].reshape(DIM, -1))
    torch.testing.assert_close(state["mlp_norm.weight"], source["module.v.norm.weight"])
    torch.testing.assert_close(state["attn_pool.to_kv.bias"],
                               sum(source[f"module.v.blocks.{i}.attn.qkv.bias"][DIM:] for i in range(DEPTH)) / (6 * DEPTH))


def test_ssast_grid_must_match():
    source = fake_vit(grid=(8, 64), in_channels=1, prefix=("cls_token", "dist_token"), root="v.")
    with pytest.raises(ValueError, match=r"512 grid tokens but grid=\(12, 101\)"):
        convert.from_ssast(make_model(), source, grid=(12, 101))


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda s: s.pop("blocks.1.attn.qkv.bias"), r"missing 'blocks.1.attn.qkv.bias'"),
        (lambda s: s.__setitem__("blocks.0.mlp.fc1.weight", torch.randn(64, DIM)),
         r"'blocks.0.mlp.fc1.weight' has shape \(64, 32\), expected \(128, 32\)"),
        (lambda s: s.__setitem__("patch_embed.proj.weight", torch.randn(DIM, 3, 8, 8)), r"patch_embed.proj.weight.*patch_size=16"),
        (lambda s: s.__setitem__("pos_embed", torch.randn(1, 1 + 15, DIM)), r"15 grid tokens, not a square"),
        (lambda s: [s.pop(k) for k in list(s) if k.startswith("blocks.1.")], r"2 blocks|1 blocks but the model has depth=2"),
        (lambda s: s.pop("patch_embed.proj.weight"), r"no 'patch_embed.proj.weight'"),
    ],
)
def test_timm_mismatch_names_the_key(damage, match):
    source = fake_vit()
    damage(source)
    with pytest.raises(ValueError, match=match):
        convert.from_timm_vit(make_model(), source)


def test_unknown_attn_pool_init():
    with pytest.raises(ValueError, match="attn_pool_init"):
        convert.from_timm_vit(make_model(), fake_vit(), attn_pool_init="median")


def test_elasticast_checkpoint_round_trip(tmp_path, torch_cpu_path):
    trained, fresh = make_model().eval(), make_model().eval()
    path = tmp_path / "elasticast.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in trained.state_dict().items()}}, path)
    convert.from_elasticast(fresh, path)
    specs = make_specs([64, 160], freq_bins=128, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(specs), trained(specs), rtol=0, atol=0)


def test_elasticast_checkpoint_mismatches(tmp_path):
    model = make_model()
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "head.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['head.bias'\]"):
        convert.from_elasticast(model, missing)
    extra = {**state, "cls_token": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unexpected keys \['cls_token'\]"):
        convert.from_elasticast(model, extra)
    wrong = {**state, "head.weight": torch.zeros(7, DIM)}
    with pytest.raises(ValueError, match=r"'head.weight': checkpoint has shape \(7, 32\), the model has \(5, 32\)"):
        convert.from_elasticast(model, wrong)


def test_malformed_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable torch checkpoint"):
        convert.load_checkpoint(garbage)
    with pytest.raises(FileNotFoundError):
        convert.load_checkpoint(tmp_path / "absent.pt")
    not_tensors = tmp_path / "meta.pt"
    torch.save({"weights": torch.zeros(2), "epoch": 3}, not_tensors)
    with pytest.raises(ValueError, match=r"entry 'epoch' is a int, not a tensor"):
        convert.load_checkpoint(not_tensors)
    with pytest.raises(TypeError, match="path or a mapping"):
        convert.load_checkpoint(42)


def test_safetensors(tmp_path):
    model = make_model()
    path = tmp_path / "model.safetensors"
    try:
        from safetensors.torch import save_file
    except ImportError:
        path.write_bytes(b"")
        with pytest.raises(ImportError, match="pip install safetensors"):
            convert.load_checkpoint(path)
        return
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    convert.from_elasticast(make_model(), path)


@pytest.mark.parametrize("content", [
    b"", b"\x00junk" * 10, (2**40).to_bytes(8, "little") + b"{}", (5).to_bytes(8, "little") + b"{abc}",
    (4).to_bytes(8, "little") + b"\xff\xfe{}", "truncated",
])
def test_junk_safetensors_is_a_value_error_naming_the_file(tmp_path, content):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    path = tmp_path / "junk.safetensors"
    if content == "truncated":
        save_file({"a": torch.randn(8, 8)}, str(path))
        content = path.read_bytes()[:-16]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"junk\.safetensors' is not a readable safetensors file"):
        convert.load_checkpoint(path)
    with pytest.raises(ValueError, match=r"junk\.safetensors"):
        convert.from_elasticast(make_model(), path)


@pytest.mark.parametrize("pos_embed", [torch.tensor(1.0), torch.zeros(DIM), torch.zeros(1, 1, DIM), torch.zeros(2, 5, DIM)])
def test_a_malformed_pos_embed_is_named(pos_embed):
    source = fake_vit()
    source["pos_embed"] = pos_embed
    with pytest.raises(ValueError, match=r"checkpoint 'pos_embed' has shape .*expected \(1, 1 \+ H\*W, 32\)"):
        convert.timm_vit_to_elasticast(source, make_model())


@pytest.mark.parametrize("grid, error, match", [
    ((-8, -64), ValueError, r"grid\[0\] must be >= 1, got -8"),
    ((0, 512), ValueError, r"grid\[0\] must be >= 1, got 0"),
    ((8, 0), ValueError, r"grid\[1\] must be >= 1, got 0"),
    ((8, 64.0), TypeError, r"grid\[1\] must be an int, got float"),
    (8, TypeError, r"grid must be a pair of ints"),
    ((8, 64, 1), TypeError, r"grid must be a pair of ints"),
    ((True, 64), TypeError, r"grid\[0\] must be an int, got bool"),
])
def test_a_bad_grid_is_named(grid, error, match, tmp_path):
    source = fake_vit(grid=(8, 64), prefix=("cls_token", "dist_token"), root="v.")
    with pytest.raises(error, match=match):
        convert.ssast_to_elasticast(source, make_model(), grid=grid)
    with pytest.raises(error, match=match):  # checked before the file is read
        convert.from_ssast(make_model(), tmp_path / "never-read.pt", grid=grid)


def test_a_directory_is_named_as_one(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint '.*' is a directory, not a checkpoint file"):
        convert.load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="is a directory"):
        convert.from_elasticast(make_model(), tmp_path)


@pytest.mark.parametrize(
    "call",
    [
        lambda model: convert.from_timm_vit(model, fake_vit()),
        lambda model: convert.from_ssast(model, fake_vit(grid=(8, 64), prefix=("cls_token", "dist_token"), root="v.")),
        lambda model: convert.from_elasticast(model, make_model().state_dict()),
        lambda model: convert.timm_vit_to_elasticast(fake_vit(), model),
        lambda model: convert.ssast_to_elasticast(fake_vit(grid=(8, 64), prefix=("cls_token", "dist_token")), model),
    ],
)
@pytest.mark.parametrize("model", [torch.nn.Linear(2, 2), "model.pt", None])
def test_a_model_that_is_not_an_elasticast_is_a_type_error(call, model):
    with pytest.raises(TypeError, match=rf"model must be an elasticast_kernels.models.ElasticAST, got {type(model).__name__}"):
        call(model)


def test_every_document_the_module_cites_is_in_the_repository():
    """It cited ``reference-model.md``, which is not part of the repository."""
    import os
    import re
    from pathlib import Path

    root = Path(convert.__file__).resolve().parents[1]
    documents = set()
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d != "build"]  # no venv, no builds
        documents |= {(Path(folder) / f).relative_to(root).as_posix() for f in files if f.endswith(".md")}
    names = documents | {Path(d).name for d in documents}
    cited = re.findall(r"[\w./-]+\.md\b", Path(convert.__file__).read_text())
    missing = [name for name in cited if name not in names]
    assert not missing, f"convert.py cites documents that are not in the repository: {missing}"
