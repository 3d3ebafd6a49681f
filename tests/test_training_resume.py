"""examples/train.py end to end: a run killed with SIGKILL after a checkpoint and resumed with --resume
ends with bitwise the same weights as the uninterrupted run, for 1 rank and 2 gloo ranks (DDP, a
prefetching loader worker); FSDP2 on CPU resumes and trains the same model as DDP; SIGTERM
checkpoints and stops; a multi-label manifest trains with BCE and reports mAP. The data is wav
files plus manifests, as for real audio.

The 2-rank reference runs under ``torch.distributed.run`` (torchrun) in a subprocess; the killed and
resumed 2-rank runs are forked ranks given torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
...), and the 1-rank reference and resume run in this process, because a fresh interpreter costs
seconds per process on a 2-core CI machine. The crash itself is always a separate process killed
by SIGKILL, which nothing can intercept.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from elasticast_kernels.training import load_checkpoint
from example_scripts import EXAMPLES, import_train_example, write_tone_manifests

pytest.importorskip("soundfile")

ROOT = pathlib.Path(__file__).resolve().parents[1]
# tiny and fast: 8 clips per class, dim 32; token dropout on so that the RNG states matter
COMMON = ["--quick", "--dim", "32", "--max-steps", "8", "--checkpoint-every", "3", "--token-dropout", "0.2",
          "--threads", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def train_module():
    return import_train_example()


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    train_csv, test_csv = write_tone_manifests(tmp_path_factory.mktemp("tones"), 8)
    return ["--train-manifest", train_csv, "--eval-manifest", test_csv]


def subprocess_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the plain torch CPU path
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return env


def torchrun(argv: list[str], ranks: int) -> subprocess.CompletedProcess:
    launcher = [sys.executable] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    return subprocess.run(launcher + [str(EXAMPLES / "train.py"), *argv], env=subprocess_env(),
                          capture_output=True, text=True, timeout=240)


def _forked_rank(rank: int, world_size: int, port: int, argv: list[str], train_module) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.pop("TRITON_INTERPRET", None)
    train_module.main(argv)


def _forked_plain_process(argv: list[str], train_module) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TRITON_INTERPRET"):
        os.environ.pop(name, None)
    train_module.main(argv)


def forked_ranks(argv: list[str], ranks: int, train_module) -> bool:
    """Run ``ranks`` forked processes with torchrun's environment. -> True if all exited cleanly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        torch.multiprocessing.start_processes(_forked_rank, args=(ranks, port, argv, train_module), nprocs=ranks,
                                              join=True, start_method="fork")
    except torch.multiprocessing.ProcessExitedException:
        return False
    return True


def losses(directory: pathlib.Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def assert_same_final_state(whole: pathlib.Path, resumed: pathlib.Path) -> dict:
    final, again = load_checkpoint(whole / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert final["step"] == again["step"] == 8
    assert final["model"].keys() == again["model"].keys()
    for name, tensor in final["model"].items():
        assert torch.equal(tensor, again["model"][name]), f"{name} differs after resume"
    assert final["sampler"] == again["sampler"] and final["scheduler"] == again["scheduler"]
    # the resumed log continues the crashed one without repeating the replayed steps
    assert losses(whole) == losses(resumed) and sorted(losses(resumed)) == list(range(1, 9))
    return final


def test_one_process_killed_and_resumed_is_bitwise_equal(tmp_path, manifests, train_module, torch_cpu_path, capsys):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    train_module.main([*COMMON, *manifests, "--no-eval", "--checkpoint-dir", str(whole)])

    killed = torchrun([*COMMON, *manifests, "--no-eval", "--checkpoint-dir", str(crashed), "--crash-after-step", "5"], 1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    at_crash = load_checkpoint(crashed / "last.pt")
    assert at_crash["step"] == 3 and len(at_crash["rng"]) == 1

    capsys.readouterr()
    train_module.main([*COMMON, *manifests, "--no-eval", "--checkpoint-dir", str(crashed), "--resume"])
    assert f"resumed from {crashed / 'last.pt'} at step 3" in capsys.readouterr().out
    final = assert_same_final_state(whole, crashed)

    # the published state-dict keys: the checkpoint loads straight into a plain model
    from elasticast_kernels.models import ElasticAST

    model = ElasticAST(sample_size=(128, final["model"]["pos_embed_time"].shape[0] * 16), patch_size=16,
                       num_classes=10, dim=32, depth=1, heads=2, channels=1)
    model.load_state_dict(final["model"], strict=True)


TWO_RANK_EXTRA = ["--workers", "1"]  # a loader worker prefetches steps that the crash loses


@pytest.fixture(scope="module")
def two_rank_reference(tmp_path_factory, manifests) -> pathlib.Path:
    """The uninterrupted 2-rank DDP run, under torchrun (also checks its output and JSON)."""
    whole = tmp_path_factory.mktemp("whole")
    reference = torchrun([*COMMON, *manifests, *TWO_RANK_EXTRA, "--checkpoint-dir", str(whole),
                          "--json", str(whole / "r.json")], 2)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-5000:]
    assert "2 rank(s) on cpu (DDP)" in reference.stdout and "eval quality 1" in reference.stdout
    result = json.loads((whole / "r.json").read_text())
    assert result["world_size"] == 2 and result["train"]["steps"] == 8 and result["eval"]["1"]["samples"] > 0
    return whole


def crash_and_resume(argv: list[str], crash_after: int, train_module) -> dict:
    """Forked 2-rank run that SIGKILLs itself after ``crash_after``, then --resume. -> the crash-time checkpoint."""
    assert not forked_ranks([*argv, "--crash-after-step", str(crash_after)], 2, train_module)
    at_crash = load_checkpoint(pathlib.Path(argv[argv.index("--checkpoint-dir") + 1]) / "last.pt")
    assert forked_ranks([*argv, "--resume"], 2, train_module)
    return at_crash


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_ranks_killed_and_resumed_is_bitwise_equal(tmp_path, manifests, train_module, two_rank_reference):
    crashed = tmp_path / "crashed"
    argv = [*COMMON, *manifests, *TWO_RANK_EXTRA, "--no-eval", "--checkpoint-dir", str(crashed)]
    at_crash = crash_and_resume(argv, 7, train_module)  # both ranks SIGKILL themselves after step 7
    assert at_crash["step"] == 6 and len(at_crash["rng"]) == 2
    assert at_crash["sampler"]["epoch"] == 1  # the crash happened in the second epoch
    assert_same_final_state(two_rank_reference, crashed)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_fsdp2_on_cpu_resumes_and_trains_the_same_model_as_ddp(tmp_path, manifests, train_module, two_rank_reference):
    crashed = tmp_path / "fsdp"
    argv = [*COMMON, *manifests, *TWO_RANK_EXTRA, "--no-eval", "--fsdp", "--checkpoint-dir", str(crashed)]
    at_crash = crash_and_resume(argv, 4, train_module)
    assert at_crash["step"] == 3 and at_crash["fsdp"]
    ddp, fsdp = load_checkpoint(two_rank_reference / "last.pt"), load_checkpoint(crashed / "last.pt")
    assert fsdp["step"] == 8 and fsdp["model"].keys() == ddp["model"].keys()  # published keys, unsharded
    for name, tensor in ddp["model"].items():  # the same maths; only the reduction order differs
        torch.testing.assert_close(fsdp["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert losses(crashed) == pytest.approx(losses(two_rank_reference), rel=1e-4)


def test_sigterm_checkpoints_and_stops_cleanly(tmp_path, manifests, train_module):
    argv = [*COMMON, *manifests, "--max-steps", "100000", "--checkpoint-every", "100000", "--no-eval",
            "--checkpoint-dir", str(tmp_path)]
    context = torch.multiprocessing.get_context("fork")
    process = context.Process(target=_forked_plain_process, args=(argv, train_module))
    process.start()
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.is_alive():  # wait until it trains
        if metrics.exists() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGTERM)
    process.join(120)
    assert process.exitcode == 0
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] >= 2 and state["step"] == max(losses(tmp_path))


def test_multi_label_manifest_trains_with_bce_and_reports_map(tmp_path, manifests, train_module, torch_cpu_path, capsys):
    """AudioSet-style ``labels``: BCE, and mAP per quality instead of accuracy."""
    def relabel(csv_path: str) -> str:
        lines = pathlib.Path(csv_path).read_text().splitlines()[1:]
        out = tmp_path / (pathlib.Path(csv_path).stem + ".jsonl")
        base = pathlib.Path(csv_path).parent
        records = []
        for line in lines:
            path, label = line.split(",")
            parity = "even" if int(label.split("-")[1]) % 2 == 0 else "odd"
            records.append(json.dumps({"path": str(base / path), "labels": [label, parity]}))
        out.write_text("\n".join(records) + "\n")
        return str(out)

    train_jsonl, eval_jsonl = relabel(manifests[1]), relabel(manifests[3])
    train_module.main(["--quick", "--dim", "32", "--max-steps", "4", "--workers", "0", "--train-manifest", train_jsonl,
                       "--eval-manifest", eval_jsonl, "--checkpoint-dir", str(tmp_path / "ckpt"),
                       "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "multi-label, BCE, mAP" in out and "mAP" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["multi_label"] and result["classes"] == 12
    assert 0.0 < result["eval"]["1"]["mAP"] <= 1.0 and "accuracy" not in result["eval"]["1"]
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["model"]["head.weight"].shape[0] == 12
