"""CheckpointManager and the pieces a training loop of one's own uses with it: a round trip of every
part of the state, refusal of non-finite state (the previous checkpoint stays), hostile files and
states naming the file and the part, the world-size check, the rank-0 write under gloo with a
non-finite rank, resumable_batches, global_mean_update, NonFiniteSteps, StopRequest."""
from __future__ import annotations

import datetime
import json
import math
import os
import pickle
import random
import signal

import numpy as np
import pytest
import torch

from elasticast_kernels.data import PackedBatchSampler
from elasticast_kernels.models import ElasticAST
from elasticast_kernels.saved_model import FeatureSettings, load_model, model_card
from elasticast_kernels.training import (CheckpointError, CheckpointManager, DistributedContext, MetricsLog,
                                         NonFiniteError, NonFiniteSteps, RunningTotals, StopRequest, global_mean_update,
                                         load_checkpoint, resumable_batches, unsharded_model, warmup_cosine)

PLAIN = DistributedContext()
LENGTHS = np.random.default_rng(0).integers(8, 64, 60)


def parts(seed: int = 0):
    torch.manual_seed(seed)
    model = ElasticAST(sample_size=(32, 64), patch_size=16, num_classes=3, dim=32, depth=1, heads=2, channels=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = warmup_cosine(optimizer, 2, 20)
    sampler = PackedBatchSampler(LENGTHS, 128, seed=5)
    return model, optimizer, scheduler, sampler


def a_step(model, optimizer, scheduler, sampler) -> None:
    specs = [torch.randn(1, 32, 16 * (1 + i % 3)) for i in range(4)]
    model.train()
    loss = model(specs).square().mean() + torch.rand(()) * 0  # the RNG advances too
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    sampler.advance()


def manager_for(path, model, optimizer, scheduler, sampler, **kwargs) -> CheckpointManager:
    card = model_card(model, classes=["a", "b", "c"], features=FeatureSettings(normalize=(-4.0, 4.0)))
    return CheckpointManager(path, PLAIN, model, optimizer, scheduler=scheduler, sampler=sampler, card=card, **kwargs)


def test_round_trip_restores_every_part_and_the_card_rebuilds_the_model(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    model, optimizer, scheduler, sampler = parts()
    for _ in range(3):
        a_step(model, optimizer, scheduler, sampler)
    manager_for(path, model, optimizer, scheduler, sampler).save(3, extra={"norm": [-4.0, 4.0], "note": "x"})
    a_step(model, optimizer, scheduler, sampler)
    after_one_more = {k: v.clone() for k, v in model.state_dict().items()}
    draws = (torch.rand(4), np.random.rand(2), random.random())

    fresh = parts(seed=9)
    checkpoint = CheckpointManager.read(path, PLAIN)
    assert checkpoint.step == 3 and checkpoint.extra == {"norm": [-4.0, 4.0], "note": "x"}
    assert checkpoint.card.classes == ("a", "b", "c") and checkpoint.world_size == 1
    assert manager_for(path, *fresh).restore(checkpoint) == 3
    assert fresh[3].consumed_steps == 3 and fresh[2].last_epoch == 3
    a_step(*fresh)  # the same next step as the run that never stopped: weights, moments, LR, RNG
    for name, tensor in fresh[0].state_dict().items():
        assert torch.equal(tensor, after_one_more[name]), name
    again = (torch.rand(4), np.random.rand(2), random.random())
    assert torch.equal(again[0], draws[0]) and np.array_equal(again[1], draws[1]) and again[2] == draws[2]
    assert manager_for(path, *parts()).restore() == 3  # reads the file itself

    loaded, card = load_model(path)  # the card: no constructor argument to remember
    assert card.features.normalize == (-4.0, 4.0) and card.config == model.config
    assert CheckpointManager.read(tmp_path / "absent.pt", PLAIN) is None


def test_nonfinite_state_is_never_written_and_the_good_checkpoint_stays(tmp_path):
    path = tmp_path / "last.pt"
    model, optimizer, scheduler, sampler = parts()
    a_step(model, optimizer, scheduler, sampler)
    manager = manager_for(path, model, optimizer, scheduler, sampler)
    manager.save(1)
    good = path.read_bytes()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"step 2's training state holds NaN or inf values \(first: head\.weight"):
        manager.save(2)
    assert path.read_bytes() == good
    with torch.no_grad():
        model.head.weight[0, 0] = 0.0
        next(iter(optimizer.state.values()))["exp_avg_sq"].fill_(float("inf"))
    with pytest.raises(NonFiniteError, match="optimizer state 'exp_avg_sq'"):
        manager.save(2)
    assert path.read_bytes() == good and load_checkpoint(path)["step"] == 1


def test_hostile_files_and_states_name_the_file_and_the_part(tmp_path):
    path = tmp_path / "last.pt"
    model, optimizer, scheduler, sampler = parts()
    manager = manager_for(path, model, optimizer, scheduler, sampler)
    manager.save(0)
    with pytest.raises(CheckpointError, match="written by 1 ranks; resume it on the same number"):
        CheckpointManager.read(path, DistributedContext(rank=0, world_size=2))
    other_sampler = PackedBatchSampler(LENGTHS, 128, seed=6)
    with pytest.raises(CheckpointError, match=r"last\.pt: the sampler state does not fit: .*seed"):
        manager_for(path, model, optimizer, scheduler, other_sampler).restore()
    other_model = ElasticAST(sample_size=(32, 64), patch_size=16, num_classes=4, dim=32, depth=1, heads=2, channels=1)
    with pytest.raises(CheckpointError, match="the model or optimiser state does not fit"):
        CheckpointManager(path, PLAIN, other_model, torch.optim.AdamW(other_model.parameters())).restore()
    with pytest.raises(CheckpointError, match=r"lacks \['ema'\]"):
        manager_for(path, model, optimizer, scheduler, sampler, stateful={"ema": sampler}).restore()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="flipped.pt"):
        CheckpointManager.read(tmp_path / "flipped.pt", PLAIN)
    with pytest.raises(ValueError, match=r"extra must not use the keys \['rng', 'step'\]"):
        manager.save(1, extra={"step": 3, "rng": 0})
    with pytest.raises(TypeError, match="step must be an int, got bool"):
        manager.save(True)
    for name in ("model", "sampler"):
        with pytest.raises(ValueError, match=f"stateful names \\['{name}'\\]"):
            manager_for(path, model, optimizer, scheduler, sampler, stateful={name: sampler})
    from elasticast_kernels.training import save_checkpoint

    for field, value in (("step", 2.5), ("world_size", True), ("step", -1)):
        bad = {**load_checkpoint(path), field: value}
        save_checkpoint(tmp_path / "bad.pt", {k: v for k, v in bad.items() if k != "format"})
        with pytest.raises(CheckpointError, match=f"bad.pt: {field} must be an int"):
            CheckpointManager.read(tmp_path / "bad.pt", PLAIN)
    with pytest.raises(TypeError, match="ema must have state_dict"):
        manager_for(path, model, optimizer, scheduler, sampler, stateful={"ema": object()})
    with pytest.raises(FileNotFoundError):
        manager_for(tmp_path / "none.pt", model, optimizer, scheduler, sampler).restore()


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    model, optimizer, scheduler, sampler = parts()
    manager = manager_for(path, model, optimizer, scheduler, sampler)
    manager.save(0)
    good = path.read_bytes()
    with pytest.raises(TypeError, match="cannot digest"):
        manager.save(1, extra={"thing": object()})  # not a plain value: refused before the file is touched
    assert path.read_bytes() == good


# ---------------------------------------------------------------- two gloo ranks, one of them non-finite
def _two_rank_save(rank: int, init_file: str, path: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork(): stay out of it
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    ctx = DistributedContext(rank=rank, world_size=2, backend="gloo")
    try:
        model, optimizer, scheduler, sampler = parts()
        manager = CheckpointManager(path, ctx, model, optimizer, scheduler=scheduler, sampler=sampler)
        manager.save(1)
        if rank == 1:
            with torch.no_grad():
                model.head.bias[0] = float("inf")  # an FSDP shard can be bad on one rank only
        try:
            manager.save(2)
            outcome = "saved"
        except NonFiniteError as error:
            outcome = str(error)
        with open(f"{out}.{rank}", "w") as handle:
            handle.write(outcome)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_every_rank_refuses_when_one_rank_is_not_finite(tmp_path):
    path, out = str(tmp_path / "last.pt"), str(tmp_path / "outcome")
    torch.multiprocessing.start_processes(_two_rank_save, args=(str(tmp_path / "init"), path, out), nprocs=2,
                                          join=True, start_method="fork")
    outcomes = [open(f"{out}.{rank}").read() for rank in range(2)]
    assert "first: on another rank" in outcomes[0] and "first: head.bias on rank 1" in outcomes[1]
    state = load_checkpoint(path)
    assert state["step"] == 1 and len(state["rng"]) == 2 and state["world_size"] == 2


# ---------------------------------------------------------------- the loop's pieces
def test_resumable_batches_resume_at_any_step_equals_the_uninterrupted_run():
    from torch.utils.data import DataLoader

    def run(start_state=None, stop_after=None, start_step=0):
        sampler = PackedBatchSampler(LENGTHS, 128, seed=2)
        if start_state is not None:
            sampler.load_state_dict(start_state)
        loader = DataLoader(list(range(len(LENGTHS))), batch_sampler=sampler, num_workers=1, prefetch_factor=3,
                            collate_fn=lambda batch: batch, multiprocessing_context="fork")
        seen, state = [], None
        for step, epoch, batch in resumable_batches(loader, sampler, 3 * sampler.stats.num_steps, start_step):
            seen.append((step, epoch, batch))
            state = sampler.state_dict()  # what a checkpoint after this step holds
            if step == stop_after:
                break
        return seen, state

    whole, _ = run()
    epoch_steps = PackedBatchSampler(LENGTHS, 128, seed=2).stats.num_steps
    assert [s for s, _, _ in whole] == list(range(1, 3 * epoch_steps + 1))
    for stop in (1, epoch_steps - 1, epoch_steps, 2 * epoch_steps + 1):  # incl. a stop at an epoch's end
        first, state = run(stop_after=stop)
        rest, _ = run(start_state=pickle.loads(pickle.dumps(state)), start_step=stop)
        assert first + rest == whole, stop


def test_global_mean_update_skips_nonfinite_steps():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = warmup_cosine(optimizer, 0, 10)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 3)
    outcome = global_mean_update(model, optimizer, model(x).sum() * float("nan"), 4, PLAIN, scheduler=scheduler,
                                 totals={"tokens": 40})
    assert outcome.problem == "loss (nan)" and math.isnan(outcome.totals["loss_sum"]) and outcome.grad_norm != 0
    assert outcome.totals["samples"] == 4.0 and outcome.totals["tokens"] == 40.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and scheduler.last_epoch == 1
    out = model(x).sum()
    finite_loss_infinite_gradient = (out - out.detach()).sqrt()  # sqrt(0) = 0, d/du sqrt(u) at 0 = inf
    outcome = global_mean_update(model, optimizer, finite_loss_infinite_gradient, 4, PLAIN, clip_grad=1.0)
    assert outcome.totals["loss_sum"] == 0.0 and outcome.problem.startswith("gradient norm (")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    outcome = global_mean_update(model, optimizer, model(x).square().sum(), 4, PLAIN, clip_grad=1e9)
    reference = torch.nn.Linear(3, 2)
    reference.load_state_dict(dict(zip(("weight", "bias"), before)))
    (reference(x).square().sum() / 4).backward()
    expected = torch.cat([p.grad.flatten() for p in reference.parameters()]).norm()
    assert outcome.problem is None and outcome.grad_norm == pytest.approx(float(expected))
    assert not torch.equal(before[0], model.weight)


def test_nonfinite_steps_stop_naming_files_or_count_them(tmp_path, capsys):
    with pytest.raises(NonFiniteError, match=r"step 7 \(epoch 1\): non-finite loss \(nan\); stopped before the update; "
                                             r"the step's samples:\n  rank 0: a\.wav\n  rank 0: b\.wav") as caught:
        NonFiniteSteps(PLAIN).handle("loss (nan)", 7, ["a.wav", "b.wav"], "epoch 1")
    assert caught.value.step == 7 and caught.value.quantity == "loss" and caught.value.files == [["a.wav", "b.wav"]]
    log = MetricsLog(tmp_path / "m.jsonl")
    steps = NonFiniteSteps(PLAIN, skip=True, log=log)
    steps.handle("gradient norm (inf)", 3, iter(["c.wav"]))
    assert steps.skipped == 1 and "WARNING step 3: non-finite gradient norm (inf); step skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"step": 3, "nonfinite": "gradient norm (inf)",
                                                             "files": ["c.wav"]}


def test_small_pieces():
    totals = RunningTotals(("samples", "seconds"))
    totals.add({"samples": 3, "other": 1}, seconds=0.5)
    totals.add(samples=2, seconds=0.25)
    assert totals.take() == {"samples": 5.0, "seconds": 0.75} and totals.take() == {"samples": 0.0, "seconds": 0.0}
    assert totals.run == {"samples": 5.0, "seconds": 0.75}
    model = torch.nn.Linear(2, 2)
    assert unsharded_model(model, lambda: None) is model
    previous = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is previous
