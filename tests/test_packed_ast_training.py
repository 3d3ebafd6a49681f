"""A Hugging Face AST checkpoint fine-tuned with ``examples/train.py --model packed-ast`` and scored
with ``elasticast-predict``: the saved file rebuilds the model by itself (PackedAST, the checkpoint's
features and normalisation, a new head for the manifest's classes), and the command line scores a
file as the in-memory model does on ``ASTFeatures`` of it. Tiny random AST (no download), a few
steps on the demo's synthetic tones, no loader workers."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
soundfile = pytest.importorskip("soundfile")

from elasticast_kernels.data import ManifestDataset  # noqa: E402
from elasticast_kernels.inference import Predictor  # noqa: E402
from elasticast_kernels.inference.cli import main as predict_main  # noqa: E402
from elasticast_kernels.inference.spectrograms import window_bounds  # noqa: E402
from elasticast_kernels.models import PackedAST  # noqa: E402
from elasticast_kernels.models.ast_features import ASTFeatures  # noqa: E402
from elasticast_kernels.saved_model import load_model  # noqa: E402
from example_scripts import import_train_example, write_tone_manifests  # noqa: E402

MEL = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A save_pretrained AST directory (3 labels, 32 mel bins, its own normalisation) and tone data."""
    out = tmp_path_factory.mktemp("ast")
    config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    max_length=100, num_mel_bins=MEL, num_labels=3)
    torch.manual_seed(0)
    transformers.ASTForAudioClassification(config).save_pretrained(out / "hf")
    transformers.ASTFeatureExtractor(num_mel_bins=MEL, max_length=100, mean=-3.0, std=2.5).save_pretrained(out / "hf")
    train_csv, test_csv = write_tone_manifests(out / "tones", 2)
    return {"hf": out / "hf", "train": train_csv, "test": test_csv, "train_module": import_train_example()}


def run(train_module, *argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train_module.main(["--quick", "--workers", "0", "--threads", "1", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def test_fine_tune_an_hf_checkpoint_then_predict(tmp_path, setup, torch_cpu_path):
    ckpt = tmp_path / "ckpt"
    code, out, err = run(setup["train_module"], "--model", "packed-ast", "--hf-checkpoint", setup["hf"],
                         "--train-manifest", setup["train"], "--eval-manifest", setup["test"], "--max-steps", 3,
                         "--max-tokens", 256, "--checkpoint-dir", ckpt)
    assert code == 0, out + err
    assert "model: PackedAST from" in out and "new" in out and "eval quality 1: accuracy" in out

    model, card = load_model(ckpt / "model.pt")
    last, last_card = load_model(ckpt / "last.pt")
    features = ASTFeatures.from_pretrained(setup["hf"])
    classes = ManifestDataset(setup["train"]).classes
    assert isinstance(model, PackedAST) and card == last_card and card.architecture == "PackedAST"
    assert card.classes == classes and model.num_classes == len(classes) != 3
    assert card.features == features.settings()  # the checkpoint's extractor settings, not re-estimated
    assert model.config["num_mel_bins"] == MEL and model.pad_value == pytest.approx(features.pad_value)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(last.state_dict()[name], tensor, rtol=0, atol=0)
    pretrained = PackedAST.from_hf(setup["hf"])  # the body is the checkpoint's, trained a few steps
    position = "audio_spectrogram_transformer.embeddings.position_embeddings"
    assert model.state_dict()[position].shape == pretrained.state_dict()[position].shape
    assert not torch.equal(model.state_dict()[position], pretrained.state_dict()[position])

    # elasticast-predict on the files, whole, against the in-memory model on ASTFeatures of them
    dataset = ManifestDataset(setup["test"], classes=classes)
    paths = [dataset.locate(i)[0].path for i in range(4)]
    waves = [soundfile.read(path, dtype="float32")[0] for path in paths]
    with torch.inference_mode():
        expected = model(features(waves)).softmax(-1)
    predictions = tmp_path / "predictions.jsonl"
    assert predict_main([str(ckpt / "model.pt"), *paths, "--long", "whole", "--output", str(predictions),
                         "--top-k", str(len(classes))]) == 0
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [line["path"] for line in lines] == paths
    for line, row in zip(lines, expected):
        scores = {entry["label"]: entry["score"] for entry in line["top"]}
        np.testing.assert_allclose([scores[name] for name in classes], row.tolist(), rtol=0, atol=1e-5)

    # window mode (the default: windows of the position table's 100 frames = 1 s, half a window
    # apart) and embeddings, through the Python API: each window scored as a clip of its own
    long = np.concatenate(waves * 3)
    (result,) = Predictor.from_file(ckpt / "model.pt", device="cpu").predict_all([(long, 16000)], embeddings=True)
    bounds = window_bounds(len(long), 16000, 8000)
    with torch.inference_mode():
        pieces = features([long[start:end] for start, end in bounds])
        windows = model(pieces).softmax(-1)
        embedding = model.embed(pieces).mean(0)
    assert len(result.windows) == len(bounds) > 2
    np.testing.assert_allclose(np.stack([w.scores for w in result.windows]), windows.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.scores, windows.mean(0).numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.embedding, embedding.numpy(), rtol=0, atol=1e-5)


def test_keeps_the_checkpoint_head_for_its_own_labels(tmp_path, setup):
    """Manifest classes equal to the checkpoint's labels, in order: its head is fine-tuned, not replaced."""
    args = setup["train_module"].parse_args(["--model", "packed-ast", "--hf-checkpoint", str(setup["hf"])])
    recipe = setup["train_module"].train_models.recipe(args)
    hf = PackedAST.from_hf(setup["hf"])
    kept = recipe.build(hf.class_names, [])
    torch.testing.assert_close(kept.classifier.dense.weight, hf.classifier.dense.weight, rtol=0, atol=0)
    assert kept.training and recipe.describe(kept).endswith("its head")
    other = setup["train_module"].train_models.recipe(args).build(("x", "y", "z"), [])
    assert not torch.equal(other.classifier.dense.weight, hf.classifier.dense.weight)
    body = "audio_spectrogram_transformer.layers.0.attention.q_proj.weight"
    torch.testing.assert_close(other.state_dict()[body], hf.state_dict()[body], rtol=0, atol=0)


@pytest.mark.parametrize("argv, message", [
    (["--model", "packed-ast"], "needs --hf-checkpoint"),
    (["--hf-checkpoint", "x"], "goes with --model packed-ast"),
    (["--model", "packed-ast", "--hf-checkpoint", "x", "--train-qualities", "1", "2"], "quality 1"),
    (["--model", "packed-ast", "--hf-checkpoint", "x", "--norm", "0", "1"], "--norm"),
    (["--model", "packed-ast", "--hf-checkpoint", "x", "--dim", "64"], "--dim"),
])
def test_options_that_do_not_apply_are_refused(setup, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        setup["train_module"].parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_an_unusable_checkpoint_directory_is_one_error_line(tmp_path, setup):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    for folder, reason in ((tmp_path / "missing", "not a save_pretrained directory"), (tmp_path / "broken", "line 1")):
        code, out, err = run(setup["train_module"], "--model", "packed-ast", "--hf-checkpoint", folder,
                             "--train-manifest", setup["train"], "--eval-manifest", setup["test"])
        assert code == 1 and f"--hf-checkpoint {folder}" in err and reason in err, err
