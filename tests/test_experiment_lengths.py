"""examples/length_resolution.py (ElasticAST vs a fixed-length AST-style baseline over clip lengths
and frame shifts): its ``--quick`` variant runs end to end and writes its outputs (never an
accuracy: the quick numbers mean nothing); the data it is built on makes clip length a controlled
variable (the keyword survives at every length, only the background around it changes); bad
options are usage errors naming the option. Synthetic tones, so every machine gets the same data."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from example_scripts import EXAMPLES

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def experiment():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import length_resolution
        import words_in_context
    finally:
        sys.path.remove(str(EXAMPLES))
    return length_resolution, words_in_context


def test_quick_run_writes_table_figure_results_and_says_the_data_are_tones(experiment, tmp_path, capsys, torch_cpu_path):
    length_resolution, _ = experiment
    assert length_resolution.main(["--quick", "--no-espeak", "--threads", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC TONE DATASET" in printed
    for name in ("results.json", "table.md", "README.md", "length_resolution.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "length_resolution.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["data"]["source"] == "synthetic tones"
    assert "--quick" in results["command"] and results["duration_s"] > 0
    assert "SYNTHETIC TONE DATASET" in (tmp_path / "README.md").read_text()
    # every model scored in every condition, ElasticAST at every budget, one entry per seed
    settings = results["settings"]
    conditions = len(settings["eval_lengths"]) + len(settings["eval_shifts"])
    per_seed = conditions * (len(settings["budgets"]) + 2)  # + the baseline's crop/pad and windows
    assert len(results["scores"]) == per_seed * len(settings["seeds"])
    table = (tmp_path / "table.md").read_text()
    assert "AST-style, crop/pad" in table and "pack budget" in table


def test_rendering_changes_only_the_context_around_the_keyword(experiment):
    _, words_in_context = experiment
    clips, source, description = words_in_context.make_clips(1, 2, seed=3, background_seconds=4.0, use_espeak=False)
    assert source == "synthetic tones" and "SYNTHETIC TONE DATASET" in description
    assert sorted(clip.label for clip in clips) == list(range(len(words_in_context.KEYWORDS)))
    clip = clips[0]
    core = clip.keyword.size + sum(clip.gaps)
    assert words_in_context.render(clip, 0.0).size == core  # 0 s: the keyword and its pauses only
    for seconds in (1.5, 3.0, 7.25):  # longer than the background stream: it wraps around
        wave = words_in_context.render(clip, seconds)
        assert wave.dtype == np.float32 and wave.size == round(seconds * words_in_context.SAMPLE_RATE)
        assert np.isfinite(wave).all()
    # the keyword keeps its loudness: the loudest stretch of a long rendering is the keyword's
    short, long = words_in_context.render(clip, 0.0), words_in_context.render(clip, 6.0)
    assert np.abs(long).max() == pytest.approx(np.abs(short).max(), rel=0.5)
    # same clip, same length: the same samples (the noise is seeded per clip)
    np.testing.assert_array_equal(words_in_context.render(clip, 2.0), words_in_context.render(clip, 2.0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, "2"])
def test_render_refuses_a_bad_length(experiment, bad):
    _, words_in_context = experiment
    clip = words_in_context.make_clips(1, 1, seed=0, background_seconds=1.0, use_espeak=False)[0][0]
    with pytest.raises(ValueError, match="seconds"):
        words_in_context.render(clip, bad)


@pytest.mark.parametrize("name, value", [("clips_per_word", 0), ("speakers", True), ("speakers", 2.0),
                                         ("background_seconds", float("nan")), ("background_db", (20.0, 10.0)),
                                         ("background_db", (float("inf"), 1.0))])
def test_make_clips_refuses_bad_sizes(experiment, name, value):
    _, words_in_context = experiment
    kwargs = dict(clips_per_word=1, speakers=1, seed=0, background_seconds=1.0, use_espeak=False)
    kwargs[name] = value
    with pytest.raises(ValueError, match=name):
        words_in_context.make_clips(**kwargs)


@pytest.mark.parametrize("argv, option", [
    (["--epochs", "0"], "--epochs"),
    (["--baseline-frames", "100"], "--baseline-frames"),
    (["--train-seconds", "3", "1"], "--train-seconds"),
    (["--eval-shifts", "nan"], "--eval-shifts"),
    (["--eval-lengths", "-1"], "--eval-lengths"),
    (["--budgets", "0"], "--budgets"),
    (["--shift-eval-seconds", "inf"], "--shift-eval-seconds"),
    (["--seeds", "x"], "--seeds"),
    (["--seeds", "-1"], "--seeds"),
    (["--seeds", "1", "1"], "--seeds"),
    (["--seeds"], "--seeds"),
    (["--log-every", "-5"], "--log-every"),
    (["--background-db", "20", "10"], "--background-db"),
    (["--background-db", "nan", "10"], "--background-db"),
    (["--train-seconds", "0", "0"], "--train-seconds"),
])
def test_bad_options_are_usage_errors_naming_the_option(experiment, argv, option, capsys):
    length_resolution, _ = experiment
    with pytest.raises(SystemExit) as stop:
        length_resolution.parse_args(argv)
    assert stop.value.code == 2
    assert option in capsys.readouterr().err


def test_an_output_path_that_is_a_file_is_a_usage_error(experiment, tmp_path, capsys):
    length_resolution, _ = experiment
    a_file = tmp_path / "results"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "below"):
        with pytest.raises(SystemExit) as stop:
            length_resolution.parse_args(["--quick", "--out", str(out)])
        assert stop.value.code == 2
        assert "--out" in capsys.readouterr().err
