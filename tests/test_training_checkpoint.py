"""Atomic checkpoints (a crash mid-write keeps the previous complete file), RNG capture/restore,
the warm-up + cosine schedule, the evaluation scores and the resumable metrics log."""
from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest
import torch

from elasticast_kernels.training import (
    CheckpointError,
    MetricsLog,
    WarmupCosine,
    accuracy,
    average_precision,
    capture_rng_state,
    load_checkpoint,
    mean_average_precision,
    restore_rng_state,
    save_checkpoint,
    warmup_cosine,
)


def state(step: int) -> dict:
    return {"model": {"w": torch.full((64, 64), float(step))}, "step": step}


def _crash_while_saving(path: str, where: str) -> None:
    """In a forked child: die (os._exit, no cleanup) at ``where`` inside save_checkpoint."""
    if where == "before_fsync":  # every byte written, not yet renamed
        os.fsync = lambda fd: os._exit(3)
    else:  # half the bytes written
        real_save = torch.save

        def partial_save(obj, stream):
            real_save(obj, stream)
            stream.flush()
            stream.truncate(stream.tell() // 2)
            os._exit(3)

        torch.save = partial_save
    save_checkpoint(path, state(2))


@pytest.mark.parametrize("where", ["mid_write", "before_fsync"])
def test_crash_during_a_write_keeps_the_previous_checkpoint(tmp_path, where):
    path = tmp_path / "last.pt"
    save_checkpoint(path, state(1))
    process = torch.multiprocessing.get_context("fork").Process(target=_crash_while_saving, args=(str(path), where))
    process.start()
    process.join(60)
    assert process.exitcode == 3
    leftovers = [name for name in os.listdir(tmp_path) if name != "last.pt"]
    assert leftovers and all(name.startswith(".last.pt.") for name in leftovers)  # the temporary file it died on
    loaded = load_checkpoint(path, required=("model", "step"))
    assert loaded["step"] == 1 and torch.equal(loaded["model"]["w"], state(1)["model"]["w"])
    save_checkpoint(path, state(3))  # the next save still works
    assert load_checkpoint(path)["step"] == 3


def test_load_rejects_truncated_foreign_and_incomplete_files(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, state(5))
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private one
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt is unreadable, truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}, "step": 1}, foreign)  # complete, but not written by save_checkpoint
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match=r"lacks \['optimizer'\]"):
        load_checkpoint(path, required=("model", "optimizer"))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(TypeError, match="dict"):
        save_checkpoint(path, [1, 2])


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(11)
    np.random.seed(11)
    random.seed(11)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    expected = (torch.rand(5), np.random.standard_normal(3), [random.random() for _ in range(3)])
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])  # weights_only load
    again = (torch.rand(5), np.random.standard_normal(3), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]
    with pytest.raises(ValueError, match="numpy"):
        restore_rng_state({"torch": torch.get_rng_state(), "python": random.getstate()})


def test_warmup_cosine_shape_and_resume():
    factor = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    values = [factor(step) for step in range(16)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up
    assert values[4] == 1.0 and math.isclose(values[9], 0.55) and math.isclose(values[14], 0.1)
    assert all(a >= b for a, b in zip(values[4:], values[5:])) and values[15] == 0.1
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = warmup_cosine(optimizer, 4, 14, 0.1)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    other = warmup_cosine(torch.optim.SGD(model.parameters(), lr=1.0), 1, 2)
    other.load_state_dict(scheduler.state_dict())  # the fields travel with the state
    assert other.get_last_lr() == scheduler.get_last_lr() == [pytest.approx(values[6])]
    for bad in (dict(warmup_steps=5, total_steps=4), dict(warmup_steps=0, total_steps=0),
                dict(warmup_steps=0, total_steps=3, min_ratio=2.0)):
        with pytest.raises(ValueError):
            WarmupCosine(**bad)


def reference_average_precision(scores: np.ndarray, hits: np.ndarray) -> float:
    """Mean over the positives of the precision at each positive's rank (no tied scores)."""
    order = np.argsort(-scores)
    ranked = hits[order]
    ranks = np.flatnonzero(ranked) + 1
    return float(np.mean(np.cumsum(ranked)[ranks - 1] / ranks))


def test_scores_against_a_brute_force_reference():
    generator = np.random.default_rng(3)
    scores = generator.standard_normal((50, 6))
    targets = (generator.random((50, 6)) < 0.3).astype(np.float32)
    targets[:, 5] = 0  # a class without positives: NaN, left out of the mean
    per_class = average_precision(torch.from_numpy(scores), torch.from_numpy(targets))
    expected = [reference_average_precision(scores[:, c], targets[:, c]) for c in range(5)]
    np.testing.assert_allclose(per_class[:5].numpy(), expected, rtol=1e-12)
    assert math.isnan(float(per_class[5]))
    assert math.isclose(mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets)), np.mean(expected))
    # ties form one threshold: scores [1, 1] with one positive -> precision 1/2
    assert float(average_precision(torch.tensor([[1.0], [1.0]]), torch.tensor([[0.0], [1.0]]))[0]) == 0.5
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(logits, torch.tensor([1, 0, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="labels"):
        accuracy(logits, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="both be"):
        average_precision(torch.zeros(3, 2), torch.zeros(3))


def test_metrics_log_drops_the_steps_a_resume_replays(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(1, 6):
        log.write(step=step, loss=float(step))
    log.write(step=5, eval={"1": {"accuracy": 0.5}}, nan=float("nan"))
    with open(path, "a") as handle:
        handle.write('{"step": 6, "lo')  # a line cut by the crash
    MetricsLog(path, resume_step=3).write(step=4, loss=40.0)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    fresh = MetricsLog(path)  # no resume: a new file
    fresh.write(step=1, value=float("inf"))
    assert json.loads(path.read_text()) == {"step": 1, "value": None}
