"""examples/train.py end to end on the failure modes a user meets: a checkpoint that rebuilds the
model by itself, data whose features or loss are not finite (the run stops naming the step and
the files, or skips the step; no NaN ever reaches a checkpoint), unusable files listed all at once
or skipped by path, and clips longer than the pack budget (own pack, crop, drop), each listed.
Runs in this process on tiny settings (dim 32, one block, no loader workers)."""
from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile")

from elasticast_kernels.data import DistributedPackedBatchSampler, ManifestDataset  # noqa: E402
from elasticast_kernels.inference.cli import main as predict_main  # noqa: E402
from elasticast_kernels.saved_model import load_model  # noqa: E402
from elasticast_kernels.training import load_checkpoint  # noqa: E402
from example_scripts import import_train_example, write_tone_manifests  # noqa: E402

TINY = ["--quick", "--dim", "32", "--workers", "0", "--threads", "1", "--train-qualities", "1", "--eval-qualities", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tone clips and manifests, plus the odd files: huge samples, NaN samples, long clips."""
    out = tmp_path_factory.mktemp("tones")
    train_csv, test_csv = write_tone_manifests(out, 3)
    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    soundfile.write(out / "audio" / "huge.wav", tone * np.float32(1e30), 16000, subtype="FLOAT")  # power overflows
    nan = tone.copy()
    nan[100] = np.nan
    soundfile.write(out / "audio" / "nan.wav", nan, 16000, subtype="FLOAT")
    soundfile.write(out / "audio" / "long.wav", np.tile(tone, 6), 16000)  # 6 s: 296 tokens at quality 1
    base = pathlib.Path(train_csv).read_text()
    label = base.splitlines()[1].split(",")[1]

    def manifest(name: str, *extra: str) -> str:
        path = out / name
        path.write_text(base + "".join(f"{line},{label}\n" for line in extra))
        return str(path)

    return {"train": train_csv, "test": test_csv, "manifest": manifest, "dir": out}


@pytest.fixture(scope="module")
def train_module():
    return import_train_example()


def run(train_module, *argv) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train_module.main([*TINY, *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def test_checkpoint_and_export_rebuild_the_trained_model(tmp_path, data, train_module, torch_cpu_path):
    ckpt = tmp_path / "ckpt"
    code, out, _ = run(train_module, "--train-manifest", data["train"], "--eval-manifest", data["test"],
                       "--max-steps", 4, "--checkpoint-dir", ckpt, "--no-eval")
    assert code == 0, out
    state = load_checkpoint(ckpt / "last.pt")
    model, card = load_model(ckpt / "last.pt")
    exported, export_card = load_model(ckpt / "model.pt")
    train_set = ManifestDataset(data["train"])
    assert card == export_card and card.classes == train_set.classes and not card.multi_label
    assert card.features.normalize == tuple(state["norm"]) and card.features.sample_rate == 16000
    assert card.config["softmax_scale"] == 0.25 and card.config["dim"] == 32  # 1/sqrt(32 // 2)

    # the model as the script builds it, with the trained weights: the card rebuilds exactly that
    args = train_module.parse_args([*TINY])
    by_hand = train_module.build_model(args, len(train_set.classes), state["model"]["pos_embed_time"].shape[0])
    by_hand.load_state_dict(state["model"])
    by_hand.eval()
    specs = [ManifestDataset(data["train"], normalize=card.features.normalize)[i][0] for i in range(5)]
    with torch.inference_mode():
        expected = by_hand(specs)
        torch.testing.assert_close(model(specs), expected, rtol=0, atol=0)
        torch.testing.assert_close(exported(specs), expected, rtol=0, atol=0)
        default_scale, _ = load_model(ckpt / "last.pt", softmax_scale=1.0)  # the published default
        assert not torch.allclose(default_scale(specs), expected)  # the wrong scale would predict differently

    # train -> predict: the command line, given only the checkpoint and the files, scores them as
    # the trained model does (scale, features, normalisation and class names from the checkpoint)
    paths = [ManifestDataset(data["train"]).locate(i)[0].path for i in range(5)]
    predictions = tmp_path / "predictions.jsonl"
    assert predict_main([str(ckpt / "last.pt"), *paths, "--output", str(predictions), "--top-k", "3"]) == 0
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [line["path"] for line in lines] == paths
    probabilities = expected.softmax(-1)
    for line, row in zip(lines, probabilities):
        best = row.topk(3)
        assert [entry["label"] for entry in line["top"]] == [card.classes[i] for i in best.indices.tolist()]
        np.testing.assert_allclose([entry["score"] for entry in line["top"]], best.values.tolist(), atol=1e-5)


def first_step_with(paths: set[str], manifest: str, seed: int) -> int:
    """1-based step of epoch 0 whose batch holds one of ``paths`` (the script's sampler, one rank)."""
    dataset = ManifestDataset(manifest, qualities=(1.0,))
    sampler = DistributedPackedBatchSampler(dataset.token_lengths(), 512, seed=seed, num_replicas=1, rank=0)
    for step, indices in enumerate(sampler.packs(0), start=1):
        if any(dataset.locate(i)[0].path in paths for pack in indices for i in pack):
            return step
    raise AssertionError("not scheduled")


def test_nonfinite_loss_stops_naming_step_and_files_and_keeps_the_good_checkpoint(tmp_path, data, train_module,
                                                                                   torch_cpu_path):
    manifest = data["manifest"]("huge.csv", "audio/huge.wav")
    huge = str(data["dir"] / "audio" / "huge.wav")
    seed = next(s for s in range(50) if first_step_with({huge}, manifest, s) >= 3)
    bad_step = first_step_with({huge}, manifest, seed)
    common = ["--train-manifest", manifest, "--eval-manifest", data["test"], "--seed", seed, "--max-steps", 12,
              "--checkpoint-every", 1, "--no-eval"]

    code, _, err = run(train_module, *common)  # the estimate of the normalisation refuses it first
    assert code == 1 and f"huge.csv, line 26, file {huge}: its features at quality 1 are not finite" in err

    code, _, err = run(train_module, *common, "--norm", "-4", "4", "--checkpoint-dir", tmp_path / "stop")
    assert code == 1 and f"error: step {bad_step} (epoch 0): non-finite loss" in err
    assert f"rank 0: {huge} (huge.csv line" in err and "--skip-nonfinite" not in err.split("samples:")[1]
    state = load_checkpoint(tmp_path / "stop" / "last.pt")
    assert state["step"] == bad_step - 1  # the last good one, not replaced
    assert all(torch.isfinite(t).all() for t in state["model"].values())

    code, out, _ = run(train_module, *common, "--norm", "-4", "4", "--checkpoint-dir", tmp_path / "skip",
                       "--skip-nonfinite", "--json", tmp_path / "r.json")
    assert code == 0 and f"WARNING step {bad_step} (epoch 0): non-finite loss" in out and huge in out
    lines = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    skipped = [line for line in lines if "nonfinite" in line]
    assert skipped[0]["step"] == bad_step and huge in skipped[0]["files"][0]
    assert lines[-1]["nonfinite_skipped"] == len(skipped) >= 1
    result = json.loads((tmp_path / "r.json").read_text())["train"]
    assert result["nonfinite_skipped"] == len(skipped) and math.isfinite(result["final_loss"])
    state = load_checkpoint(tmp_path / "skip" / "last.pt")
    assert state["step"] == 12 and all(torch.isfinite(t).all() for t in state["model"].values())


def test_unusable_files_are_listed_at_once_or_skipped_by_path(tmp_path, data, train_module, torch_cpu_path):
    manifest = data["manifest"]("bad.csv", "audio/nan.wav", "audio/missing.wav")
    nan, missing = (str(data["dir"] / "audio" / name) for name in ("nan.wav", "missing.wav"))
    common = ["--train-manifest", manifest, "--eval-manifest", data["test"], "--max-steps", 2, "--no-eval"]
    code, _, err = run(train_module, *common, "--verify-audio")
    assert code == 1 and "2 unusable lines" in err
    assert f"file {nan}: holds NaN or infinite samples" in err and f"file {missing}: file not found" in err
    code, out, _ = run(train_module, *common, "--skip-bad")
    assert code == 0 and f"skipped lines of {manifest} (2):" in out and nan in out and missing in out


@pytest.mark.filterwarnings("ignore:dropping 1 of")  # the sampler warns; the script lists the file
@pytest.mark.parametrize("mode, listing", [("own-pack", "clips longer than 256 tokens (own-pack) (1):"),
                                           ("crop", "clips cropped to 512 frames (1):"),
                                           ("drop", "clips longer than 256 tokens (drop) (1):")])
def test_clips_longer_than_the_budget(tmp_path, data, train_module, torch_cpu_path, mode, listing):
    manifest = data["manifest"]("long.csv", "audio/long.wav")
    code, out, _ = run(train_module, "--train-manifest", manifest, "--eval-manifest", data["test"], "--max-tokens", 256,
                       "--max-steps", 2, "--no-eval", "--oversize", mode, "--json", tmp_path / "r.json")
    assert code == 0, out
    assert f"{listing}\n  {data['dir'] / 'audio' / 'long.wav'} (long.csv line" in out
    assert json.loads((tmp_path / "r.json").read_text())["train"]["steps"] == 2
