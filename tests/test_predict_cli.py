"""``elasticast-predict``: output shapes, manifests, bad files named (exit 1, or 0 with --skip-bad),
and hostile checkpoints, options and output paths: one clear message and exit status 2, never a
traceback."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile")
pytestmark = pytest.mark.usefixtures("torch_cpu_path")  # the model's torch CPU path, not the Triton interpreter

from elasticast_kernels.data.audio import read_audio  # noqa: E402
from elasticast_kernels.inference import Predictor  # noqa: E402
from elasticast_kernels.inference.cli import main  # noqa: E402

from inference_support import CLASSES, RATE, reference_outputs, saved_model, tone, write_audio  # noqa: E402


@pytest.fixture
def setup(tmp_path):
    model_path = tmp_path / "model.pt"
    model, card = saved_model(model_path)
    clips = [write_audio(tmp_path / "a.wav", 0.5), write_audio(tmp_path / "b.flac", 2.1, rate=8000, freq=700)]
    return str(model_path), model, card, clips


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_json_lines_whole_and_window(capsys, setup):
    model_path, model, card, clips = setup
    code, out, err = run(capsys, model_path, *clips, "--long", "whole", "--top-k", "2", "--device", "cpu")
    assert code == 0 and err == ""
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["path"] for line in lines] == clips and set(lines[0]) == {"path", "duration_s", "top"}
    assert lines[1]["duration_s"] == pytest.approx(2.1)
    for line, clip in zip(lines, clips):
        scores, _ = reference_outputs(model, card, read_audio(clip, RATE))
        best = np.argsort(-scores)[:2]
        assert [t["label"] for t in line["top"]] == [CLASSES[i] for i in best]
        assert [t["score"] for t in line["top"]] == pytest.approx(scores[best].tolist(), abs=2e-5)

    code, out, _ = run(capsys, model_path, *clips, "--window", "1.0", "--hop", "0.5", "--top-k", "1")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines[0]["windows"]) == 1
    assert [(w["start_s"], w["end_s"]) for w in lines[1]["windows"]] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.1, 2.1)]
    assert all(len(w["top"]) == 1 and set(w["top"][0]) == {"label", "score"} for w in lines[1]["windows"])


def test_csv_rows_output_file_and_embeddings(capsys, tmp_path, setup):
    model_path, model, card, clips = setup
    out_path, emb_path = tmp_path / "scores.csv", tmp_path / "emb.npy"
    code, out, _ = run(capsys, model_path, *clips, "--format", "csv", "--output", out_path, "--embeddings", emb_path,
                       "--top-k", "5", "--long", "whole")
    assert code == 0 and out == ""
    rows = list(csv.reader(io.StringIO(out_path.read_text())))
    assert rows[0] == ["path", "duration_s", "label_1", "score_1", "label_2", "score_2", "label_3", "score_3"]
    assert [row[0] for row in rows[1:]] == clips and all(len(row) == 8 for row in rows)
    embeddings = np.load(emb_path)
    assert embeddings.shape == (2, 16) and embeddings.dtype == np.float32
    for row, clip in zip(embeddings, clips):
        np.testing.assert_allclose(row, reference_outputs(model, card, read_audio(clip, RATE))[1], atol=2e-5)
    assert sorted(os.listdir(tmp_path)) == sorted(["model.pt", "a.wav", "b.flac", "scores.csv", "emb.npy"])


def test_manifests_expand_relative_paths_and_name_bad_lines(capsys, tmp_path, setup):
    model_path, _, _, clips = setup
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "clips.csv").write_text("path,label\n../a.wav,dog\n,cat\n../nope.wav,dog\n../b.flac,cat,extra\n")
    (folder / "clips.jsonl").write_text('{"path": "../b.flac"}\nnot json\n[1, 2]\n{"label": "x"}\n\n')
    (folder / "no_path.csv").write_text("file,label\na.wav,dog\n")
    (folder / "latin1.csv").write_bytes("path\n\xe9t\xe9.wav\n".encode("latin-1"))
    code, out, err = run(capsys, model_path, folder / "clips.csv", folder / "clips.jsonl", folder / "no_path.csv",
                         folder / "latin1.csv", folder / "missing.csv", folder)
    paths = [json.loads(line)["path"] for line in out.splitlines()]
    assert code == 1
    assert paths == [os.path.join(folder, "../a.wav"), os.path.join(folder, "../b.flac")]
    for expected in ("clips.csv line 3: no 'path'", "nope.wav: file not found", "clips.csv line 5: more fields",
                     "clips.jsonl line 2: not valid JSON", "clips.jsonl line 3: expected a JSON object",
                     "clips.jsonl line 4: no 'path'", "no_path.csv line 1: the CSV header needs a 'path' column",
                     "latin1.csv: not UTF-8", "missing.csv: manifest not found", "lists: is a directory"):
        assert expected in err, expected
    assert "10 input(s) could not be used" in err

    code, out, err = run(capsys, model_path, folder / "clips.csv", "--skip-bad")
    assert code == 0 and len(out.splitlines()) == 1
    assert "skipped: " in err and "nope.wav" in err and "3 input(s) skipped; 1 scored" in err.replace(" (listed above)", "")


def test_bad_audio_files_exit_1_naming_each_while_the_others_get_their_line(capsys, tmp_path, setup):
    model_path, _, _, clips = setup
    empty, corrupt, nan = tmp_path / "empty.wav", tmp_path / "corrupt.flac", tmp_path / "nan.wav"
    soundfile.write(empty, np.zeros((0, 1), np.float32), RATE)
    corrupt.write_bytes(b"fLaC" + os.urandom(200))
    audio = tone(0.5)
    audio[100] = np.inf
    soundfile.write(nan, audio, RATE, subtype="FLOAT")
    bad = [tmp_path / "missing.wav", empty, corrupt, nan]
    code, out, err = run(capsys, model_path, clips[0], *bad, clips[1])
    assert code == 1
    assert [json.loads(line)["path"] for line in out.splitlines()] == clips
    for path, reason in zip(bad, ("file not found", "empty", "unreadable", "NaN or infinite")):
        assert f"error: {path}: " in err and reason in err
    code, out, err = run(capsys, model_path, clips[0], *bad, "--skip-bad")
    assert code == 0 and len(out.splitlines()) == 1 and all(f"skipped: {path}" in err for path in bad)
    code, out, err = run(capsys, model_path, *bad, "--skip-bad")  # nothing usable at all
    assert code == 1 and out == ""


def _truncated(path, tmp_path):
    data = open(path, "rb").read()
    target = tmp_path / "truncated.pt"
    target.write_bytes(data[: len(data) // 2])
    return target


@pytest.mark.parametrize("kind, message", [
    ("missing", "checkpoint not found"), ("directory", "model file"), ("random", "model file"),
    ("truncated", "model file"), ("foreign", "carries no model card"), ("bare", "bare state dict"),
    ("empty", "model file"), ("flipped", "digest"),
])
def test_hostile_checkpoints_give_one_message_and_exit_2(capsys, tmp_path, setup, kind, message):
    model_path, model, _, clips = setup
    target = tmp_path / f"{kind}.pt"
    if kind == "directory":
        target.mkdir()
    elif kind == "random":
        target.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        target = _truncated(model_path, tmp_path)
    elif kind == "foreign":
        torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, target)
    elif kind == "bare":
        torch.save(model.state_dict(), target)
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "flipped":  # a valid file with one byte changed inside a tensor
        data = bytearray(open(model_path, "rb").read())
        payload = torch.load(model_path, weights_only=True)
        needle = payload["state_dict"]["head.weight"].numpy().tobytes()[:16]
        data[bytes(data).index(needle) + 3] ^= 0x40
        target.write_bytes(bytes(data))
    code, out, err = run(capsys, target, clips[0])
    assert code == 2 and out == ""
    assert err.startswith("elasticast-predict: error: ") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("options, message", [
    (["--top-k", "0"], "--top-k: expected a positive integer"), (["--top-k", "two"], "--top-k"),
    (["--max-tokens", "-5"], "--max-tokens"), (["--window", "-1"], "--window: expected a positive number"),
    (["--hop", "nan"], "--hop"), (["--window", "inf"], "--window"), (["--long", "chunks"], "--long: invalid choice"),
    (["--format", "xml"], "--format: invalid choice"), (["--plot", "x.png", "--long", "whole"], "--plot draws window scores"),
    (["--window", "2", "--long", "whole"], "--window and --hop apply"),
])
def test_bad_options_are_usage_errors(capsys, setup, options, message):
    model_path, _, _, clips = setup
    with pytest.raises(SystemExit) as exit_info:
        main([model_path, clips[0], *options])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("options, message", [
    (["--hop", "2", "--window", "1"], "must not exceed"), (["--window", "0.001"], "shorter than one"),
    (["--device", "tpu"], "device must be"), (["--device", "cuda:99"], "cuda:99"),
])
def test_bad_option_values_found_on_loading_exit_2(capsys, setup, options, message):
    model_path, _, _, clips = setup
    code, out, err = run(capsys, model_path, clips[0], *options)
    assert code == 2 and out == "" and message in err


@pytest.mark.parametrize("option", ["--output", "--embeddings", "--plot"])
def test_unwritable_output_paths_exit_2_before_any_work(capsys, tmp_path, setup, option):
    model_path, _, _, clips = setup
    for target, message in ((tmp_path / "no" / "such" / "dir" / "out", "does not exist"), (tmp_path, "directory")):
        code, out, err = run(capsys, model_path, clips[0], option, target)
        assert code == 2 and out == "" and option in err and (message in err or "Is a directory" in err), err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run(capsys, model_path, clips[0], option, locked / "out")
        assert code == 2 and "not writable" in err or "Permission denied" in err


def test_plot_draws_window_scores_per_file(capsys, tmp_path, setup):
    pytest.importorskip("matplotlib")
    model_path, _, _, clips = setup
    long_clip = write_audio(tmp_path / "long.wav", 3.0, freq=200)
    for hop, name in (("0.1", "lines.png"), ("0.02", "heat.png")):  # 25 windows: lines; 119: a heat map
        code, _, _ = run(capsys, model_path, long_clip, "--plot", tmp_path / name, "--hop", hop)
        assert code == 0 and (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, _ = run(capsys, model_path, long_clip, clips[0], "--plot", tmp_path / "many.png")
    assert code == 0
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("many")) == ["many-0001-long.png", "many-0002-a.png"]


def test_the_console_script_is_registered_and_runs_as_a_program(tmp_path, setup):
    model_path, _, _, clips = setup
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "elasticast-predict"]
    assert entry.value == "elasticast_kernels.inference.cli:main"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "elasticast_kernels.inference.cli", model_path, clips[0],
                           tmp_path / "missing.wav", "--format", "csv"], capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "missing.wav: file not found" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout.splitlines()[1].startswith(clips[0] + ",0.500000,")


def test_cli_scores_equal_the_api(capsys, setup):
    model_path, _, _, clips = setup
    code, out, _ = run(capsys, model_path, *clips, "--top-k", "3")
    api = Predictor.from_file(model_path, device="cpu").predict_all(clips)
    for line, result in zip(out.splitlines(), api):
        assert [(t["label"], t["score"]) for t in json.loads(line)["top"]] == result.top(3)


@pytest.mark.parametrize("module, options, extra", [("soundfile", [], "audio"), ("soxr", [], "audio"),
                                                    ("matplotlib", ["--plot", "x.png"], "plot")])
def test_a_missing_extra_is_named_before_any_work(capsys, monkeypatch, setup, module, options, extra):
    model_path, _, _, clips = setup
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    if module == "matplotlib":
        monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code, out, err = run(capsys, model_path, clips[0], *options)
    assert code == 2 and out == ""
    assert f'pip install "elasticast-kernels[{extra}]"' in err and len(err.strip().splitlines()) == 1
