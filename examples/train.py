"""Train ElasticAST on packed batches: one process or ``torchrun``, DDP or FSDP2, exact resume after a crash.

    python examples/train.py --quick                                  # the demo, one process, CPU or GPU
    torchrun --nproc_per_node=2 examples/train.py --train-manifest train.csv --eval-manifest eval.csv \\
        --checkpoint-dir ckpt [--resume] [--fsdp]
    python examples/train.py --model packed-ast --hf-checkpoint AST_DIR ...   # fine-tune a Hugging Face AST

``--model`` (``train_models.py``): ElasticAST from scratch, or a local Hugging Face AST checkpoint
fine-tuned padding-free (PackedAST, its own features and normalisation, a new head for the classes).

Manifests are CSV or JSONL (``path`` and ``label``: cross-entropy, accuracy; or ``labels``: BCE, mAP);
without them ``spoken_words.py`` writes a demo (espeak-ng words, or labelled SYNTHETIC TONES). A clip
over ``--max-tokens`` gets a pack of its own (``--oversize crop|drop``). A NaN/inf loss or gradient
norm stops the run naming the step and its files (``--skip-nonfinite`` skips the update instead).
``DIR/last.pt`` (every ``--checkpoint-every`` steps, at the end, on SIGTERM) resumes bit for bit on
CPU; it and the final ``DIR/model.pt`` load with ``elasticast_kernels.saved_model.load_model``.
Full default run with --no-espeak, shared 2-core CPU VM: 1074 steps in 62 s (127 s at load average 9),
test accuracy 1.00 / 0.996 / 1.00 at quality 1 / 2 / 3 and 0.996 at the unseen quality 4 (chance 0.10).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spoken_words  # noqa: E402
import train_models  # noqa: E402
from train_models import build_model  # noqa: E402,F401  (the ElasticAST train.py builds)

from elasticast_kernels.data import (DistributedPackedBatchSampler, ManifestDataset, ManifestError,  # noqa: E402
                                     PackedBatchSampler, estimate_normalization)
from elasticast_kernels.saved_model import FeatureSettings, model_card, save_model  # noqa: E402
from elasticast_kernels.saved_model import build_model as model_from_card  # noqa: E402
from elasticast_kernels.training import (CheckpointError, CheckpointManager, MetricsLog, NonFiniteError,  # noqa: E402
                                         NonFiniteSteps, RunningTotals, StopRequest, evaluate, gather_objects,
                                         global_mean_update, ignore_sigterm, init_distributed, resumable_batches,
                                         seed_rng, unsharded_model, unwrap_model, warmup_cosine, wrap_model)

try:
    from tqdm.auto import tqdm
except ImportError:  # a progress bar is a nicety, never a requirement
    tqdm = None


# ---------------------------------------------------------------------------------------- data
def list_files(say, title: str, lines: list[str]) -> None:
    """One listing of files (or manifest lines), every one of them."""
    if lines:
        say(f"{title} ({len(lines)}):" + "".join(f"\n  {line}" for line in lines))


def load_data(args, ctx, resume, say, recipe) -> tuple[ManifestDataset, dict, str]:
    """-> (train set, {quality: eval set}, description), unusable lines and cropped clips listed."""
    if args.train_manifest:
        train_manifest, eval_manifest, description = args.train_manifest, args.eval_manifest, args.train_manifest
    else:
        train_manifest, eval_manifest, description = spoken_words.manifests(args, ctx.is_main, ctx.barrier, say)
    crop = args.max_frames
    if args.oversize == "crop":  # at most max_tokens tokens
        crop = min(crop or 2**62, recipe.max_frames(args.max_tokens))
    options = dict(max_frames=crop, skip_bad=args.skip_bad, verify_audio=args.verify_audio or args.skip_bad,
                   **recipe.dataset_options())
    train_set = ManifestDataset(train_manifest, qualities=args.train_qualities, **options)
    if resume is not None:
        norm = tuple(resume.extra["norm"])  # exactly the numbers the crashed run used
    else:  # rank 0's estimate (finite, or an error naming the file) on every rank
        norm = (args.norm or recipe.normalize or estimate_normalization(train_set, 200, args.seed)) if ctx.is_main else None
        norm = tuple(gather_objects(norm, ctx)[0])
    train_set.normalize = norm  # before any loader copies the dataset into its workers
    eval_sets = {q: ManifestDataset(eval_manifest, classes=train_set.classes, qualities=[q], normalize=norm, **options)
                 for q in args.eval_qualities}
    for manifest, dataset in ((train_manifest, train_set), (eval_manifest, eval_sets[args.eval_qualities[0]])):
        list_files(say, f"skipped lines of {manifest}", [str(problem) for problem in dataset.skipped])
    list_files(say, f"clips cropped to {crop} frames", [train_set.describe(i) for i in train_set.cropped()])
    return train_set, eval_sets, description


def make_loader(dataset, sampler, args, recipe, generator=None) -> DataLoader:
    collate = recipe.collator(args.max_tokens if args.packs_per_step > 1 else None)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=args.workers,
                      persistent_workers=args.workers > 0, worker_init_fn=ignore_sigterm,
                      pin_memory=torch.cuda.is_available(), generator=generator)  # own generator: global RNG untouched


# ---------------------------------------------------------------------------------------- step
def train_step(run: dict, batch, ctx, args, flags: dict):
    """Forward and loss sum here; the global-mean backward, clip and update (skipped when the loss or
    the gradient norm is NaN/inf) in ``global_mean_update``. -> (totals of all ranks, grad norm, problem)."""
    batch = batch.to(ctx.device, non_blocking=True)
    with torch.autocast(ctx.device.type, torch.bfloat16, enabled=ctx.device.type == "cuda" and args.bf16):
        logits = run["model"](batch).float()
    if run["train_set"].multi_label:
        loss_sum, correct = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none").mean(1).sum(), 0
    else:
        loss_sum = F.cross_entropy(logits, batch.labels, label_smoothing=args.label_smoothing, reduction="sum")
        correct = (logits.argmax(1) == batch.labels).sum()
    return global_mean_update(run["model"], run["optimizer"], loss_sum, batch.num_samples, ctx, clip_grad=args.clip_grad,
                              scheduler=run["scheduler"], totals=dict(tokens=batch.total_tokens, packs=batch.num_packs,
                                                                      correct=correct, **flags))


# ---------------------------------------------------------------------------------------- training
def log_line(run: dict, step: int, epoch: int, grad_norm: float, args) -> dict:
    """One metrics line over the steps since the last one (all ranks' totals)."""
    window = run["totals"].take()
    samples, seconds = max(window["samples"], 1.0), max(window["seconds"], 1e-9)
    record = {"step": step, "epoch": epoch, "lr": run["scheduler"].get_last_lr()[0], "grad_norm": grad_norm,
              "loss": window["loss_sum"] / window["samples"] if window["samples"] else math.nan,
              "samples_per_s": window["samples"] / seconds,
              "tokens_per_s": window["tokens"] / seconds, "nonfinite_skipped": run["nonfinite"].skipped,
              # what a fixed-size row layout of the same packs would pad: the unused budget of the packs
              "padding_pct": 100.0 * (1.0 - window["tokens"] / max(window["packs"] * args.max_tokens, 1.0))}
    if not run["train_set"].multi_label:
        record["train_accuracy"] = window["correct"] / samples
    return record


def train_loop(run: dict, args, ctx, stop, say) -> str | None:
    """Steps to the end, SIGTERM or --minutes, checkpointing on the way. -> what stopped it early."""
    sampler, manager, total, generator = run["sampler"], run["manager"], run["total_steps"], torch.Generator()
    loader, started, stopped_by = make_loader(run["train_set"], sampler, args, run["recipe"], generator), time.perf_counter(), None
    bar = tqdm(total=total, initial=run["step"], desc="train", unit="step", disable=not ctx.is_main) if tqdm else None
    run["model"].train()
    tick = time.perf_counter()
    for step, epoch, batch in resumable_batches(loader, sampler, total, run["step"], generator, args.seed, ctx.rank):
        out_of_time = args.minutes is not None and time.perf_counter() - started > 60 * args.minutes
        totals, grad_norm, problem = train_step(run, batch, ctx, args, dict(stop=stop.requested, late=out_of_time))
        if problem:  # stop naming the files of the step on every rank, or count it (--skip-nonfinite)
            this_step = sampler.step_indices(sampler.consumed_steps - 1)
            run["nonfinite"].handle(problem, step, map(run["train_set"].describe, this_step), f"epoch {epoch}")
        else:  # the logged loss and throughput are those of the steps trained on
            run["totals"].add(totals, seconds=time.perf_counter() - tick)
            run["final_loss"] = totals["loss_sum"] / totals["samples"]
        tick, run["steps_done"] = time.perf_counter(), step
        if bar is not None:
            bar.set_postfix(epoch=epoch, loss=f"{run['final_loss']:.3f}")
            bar.update(1)
        if step % args.log_every == 0 or step == total:
            record = log_line(run, step, epoch, grad_norm, args)  # on every rank: the window restarts
            if run["log"] is not None:
                run["log"].write(**record)
        if totals["stop"] > 0 or totals["late"] > 0:
            stopped_by = "SIGTERM" if totals["stop"] > 0 else "--minutes"
        if manager and (stopped_by or step == total or step % args.checkpoint_every == 0):
            manager.save(step, extra={"norm": list(run["train_set"].normalize), "fsdp": bool(args.fsdp)})
        if args.crash_after_step is not None and step == args.crash_after_step:
            os.kill(os.getpid(), 9)  # tests: a SIGKILL, which nothing can intercept
        if stopped_by:
            break
    if bar is not None:
        bar.close()
    run["totals"].take()
    return stopped_by


def finish(run: dict, args, ctx, say) -> dict:
    """Rank 0 exports DIR/model.pt (when training ran to the end) and evaluates. -> {quality: scores}."""
    done, classes, results = run["steps_done"] >= run["total_steps"], run["train_set"].classes, {}
    if (done and args.checkpoint_dir) or not args.no_eval:
        plain = unsharded_model(run["model"], lambda: model_from_card(run["card"]))
        if ctx.is_main and done and args.checkpoint_dir:
            save_model(os.path.join(args.checkpoint_dir, "model.pt"), plain, classes=classes,
                       features=run["features"], multi_label=run["train_set"].multi_label)
        evaluated = run["eval_sets"] if ctx.is_main and not args.no_eval else {}
        for quality, eval_set in evaluated.items():
            lengths = run["recipe"].token_lengths(eval_set)
            loader = make_loader(eval_set, PackedBatchSampler(lengths, args.max_tokens, shuffle=False), args, run["recipe"])
            scores = results[f"{quality:g}"] = evaluate(
                plain, loader, multi_label=eval_set.multi_label, device=ctx.device,
                autocast_dtype=torch.bfloat16 if ctx.device.type == "cuda" and args.bf16 else None)
            score = "mAP" if eval_set.multi_label else "accuracy"
            say(f"eval quality {quality:g}: {score} {scores[score]:.3f} on {scores['samples']} clips (chance "
                f"{1 / len(classes):.3f})" + ("" if quality in args.train_qualities else "  (quality not trained on)"))
        if evaluated:
            run["log"].write(step=run["steps_done"], eval=results)
    ctx.barrier()
    return results


def train(args, ctx, stop) -> dict:
    """Data, model, checkpoint manager, (resume), the loop, export and evaluation. -> results."""
    say = print if ctx.is_main else (lambda *a, **k: None)
    path = os.path.join(args.checkpoint_dir, "last.pt") if args.checkpoint_dir else None
    resume = CheckpointManager.read(path, ctx) if args.resume else None
    if args.resume and resume is None:
        say(f"--resume: no checkpoint at {path} yet, starting from scratch")
    recipe = train_models.recipe(args)
    train_set, eval_sets, description = load_data(args, ctx, resume, say, recipe)
    lengths, classes = recipe.token_lengths(train_set), train_set.classes
    torch.manual_seed(args.seed)  # the same initial weights on every rank (FSDP does not broadcast them)
    model = recipe.build(classes, [train_set, *eval_sets.values()])
    features = FeatureSettings(sample_rate=train_set.sample_rate, num_mel_bins=recipe.num_mel_bins,
                               normalize=train_set.normalize)
    model_name = recipe.describe(model)
    card = model_card(model, classes=classes, features=features, multi_label=train_set.multi_label)
    model = wrap_model(model, ctx, fsdp=args.fsdp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sampler = DistributedPackedBatchSampler(
        lengths, args.max_tokens, seed=args.seed, packs_per_step=args.packs_per_step, num_replicas=ctx.world_size,
        rank=ctx.rank, oversize={"own-pack": "own_pack", "drop": "drop", "crop": "error"}[args.oversize])
    list_files(say, f"clips longer than {args.max_tokens} tokens ({args.oversize})",
               [train_set.describe(i) for i in sampler.oversize_indices])
    total_steps = args.max_steps if args.max_steps is not None else args.epochs * len(sampler)
    scheduler = warmup_cosine(optimizer, max(1, round(args.warmup * total_steps)), total_steps)
    manager = CheckpointManager(path, ctx, model, optimizer, scheduler=scheduler, sampler=sampler, card=card) if path else None
    parallel = ("FSDP2" if args.fsdp else "DDP") if ctx.distributed else "single process"
    say(f"dataset: {description}\ntrain items: {len(train_set)} ({train_set.num_clips} clips x qualities "
        f"{args.train_qualities}), {lengths.min()}-{lengths.max()} tokens, {len(classes)} classes "
        f"({'multi-label, BCE, mAP' if train_set.multi_label else 'single-label, cross-entropy, accuracy'})\n"
        f"model: {model_name}, {ctx.world_size} rank(s) on "
        f"{ctx.device.type} ({parallel}), backend {unwrap_model(model).resolved_backend(ctx.device)}")
    step = manager.restore(resume) if resume else 0  # the RNG states last
    if resume:
        say(f"resumed from {path} at step {step} (epoch {sampler.epoch}, step {sampler.start_step} of it)")
    else:
        seed_rng(args.seed + 1 + ctx.rank)  # per-rank streams: dropout, token dropout
    del resume
    log = MetricsLog(os.path.join(args.checkpoint_dir or args.data_dir, "metrics.jsonl"),
                     resume_step=step if step else None) if ctx.is_main else None
    run = dict(model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler, manager=manager, log=log,
               train_set=train_set, eval_sets=eval_sets, features=features, recipe=recipe, card=card,
               total_steps=total_steps, step=step, steps_done=step, final_loss=math.nan,
               nonfinite=NonFiniteSteps(ctx, args.skip_nonfinite, log, say),
               totals=RunningTotals(("samples", "tokens", "packs", "loss_sum", "correct", "seconds")))
    stopped_by = train_loop(run, args, ctx, stop, say)
    done, seconds = run["steps_done"], max(run["totals"].run["seconds"], 1e-9)
    summary = {"steps": done, "steps_this_run": done - step, "seconds": round(seconds, 2), "stopped_by": stopped_by,
               "samples_per_s": run["totals"].run["samples"] / seconds, "tokens_per_s": run["totals"].run["tokens"] / seconds,
               "final_loss": run["final_loss"], "nonfinite_skipped": run["nonfinite"].skipped}
    say((f"stopped by {stopped_by} after step {done}\n" if stopped_by else "") + f"train: {done - step} steps (to "
        f"step {done}) in {seconds:.1f} s: {summary['samples_per_s']:.1f} samples/s, {summary['tokens_per_s']:.0f} "
        f"tokens/s, final loss {run['final_loss']:.3f}")
    return {"dataset": description, "classes": len(classes), "multi_label": train_set.multi_label,
            "world_size": ctx.world_size, "fsdp": bool(args.fsdp), "train": summary, "eval": finish(run, args, ctx, say)}


# ---------------------------------------------------------------------------------------- command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--train-manifest", help="CSV/JSONL of path + label(s) (default: the spoken-word demo)")
    add("--eval-manifest", help="the evaluation manifest (same label names)")
    add("--data-dir", help="demo data and file reports (default: CHECKPOINT_DIR/data, else a temporary folder)")
    spoken_words.add_arguments(parser)
    train_models.add_arguments(parser)
    add("--skip-bad", action="store_true", help="leave out (and list) unusable manifest lines and files")
    add("--verify-audio", action="store_true", help="decode every file at the start (implied by --skip-bad)")
    add("--train-qualities", type=float, nargs="+", help="time resolutions trained on (default 1 2 3; quick: 1 2)")
    add("--eval-qualities", type=float, nargs="+", help="time resolutions evaluated (default 1 2 3 4; quick: 1 2)")
    add("--norm", type=float, nargs=2, metavar=("MEAN", "STD"), help="feature normalisation (default: estimated)")
    add("--max-frames", type=int, help="crop clips to this many frames (only those frames are read)")
    add("--oversize", choices=("own-pack", "crop", "drop"), default="own-pack",
        help="a clip over --max-tokens: a pack of its own (default), cropped to the budget, or left out")
    add("--workers", type=int, help="data-loader processes per rank (decode + fbank)")
    for name in ("--dim", "--depth", "--heads", "--epochs"):
        add(name, type=int)
    add("--dropout", type=float, default=0.0, help="dropout in the MLPs")
    add("--token-dropout", type=float, default=0.0, help="fraction of tokens dropped in training")
    add("--backend", default="auto", help="attention backend (see elasticast_kernels.backends)")
    add("--quick", action="store_true", help="tiny model and data, few steps (seconds)")
    add("--max-steps", "--steps", dest="max_steps", type=int, help="train this many steps (overrides --epochs)")
    add("--minutes", type=float, help="stop (with a checkpoint) after this much training time")
    add("--max-tokens", type=int, default=512, help="token budget of one pack")
    add("--packs-per-step", type=int, default=1, help="packs per rank and step")
    for name, default in (("--lr", 3e-3), ("--weight-decay", 0.05), ("--clip-grad", 1.0), ("--label-smoothing", 0.1)):
        add(name, type=float, default=default)
    add("--warmup", type=float, default=0.05, help="warm-up, as a fraction of the steps")
    add("--skip-nonfinite", action="store_true", help="skip (and count) steps with a NaN/inf loss or gradient norm")
    add("--fsdp", action="store_true", help="shard with FSDP2 fully_shard instead of DDP (under torchrun)")
    add("--no-bf16", dest="bf16", action="store_false", help="fp32 on GPU (default: bf16 autocast)")
    add("--device", default="auto", choices=("auto", "cuda", "cpu"))
    add("--threads", type=int, default=1, help="torch CPU threads per rank (fixed: bitwise resume)")
    add("--seed", type=int, default=0)
    add("--log-every", type=int, help="steps per metrics.jsonl line")
    add("--no-eval", action="store_true", help="skip the final evaluation")
    add("--json", help="also write the results to this JSON file (rank 0)")
    add("--checkpoint-dir", help="DIR/last.pt (atomic), DIR/model.pt at the end, DIR/metrics.jsonl")
    add("--checkpoint-every", type=int, help="steps between checkpoints (default 200; quick 2)")
    add("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt when it exists")
    add("--crash-after-step", type=int, help=argparse.SUPPRESS)  # tests: SIGKILL itself
    args = parser.parse_args(argv)
    train_models.check_arguments(parser, args)
    defaults = dict(clips_per_word=(16, 120), epochs=(6, 6), dim=(64, 96), depth=(1, 3), heads=(2, 4),
                    train_qualities=([1.0, 2.0], [1.0, 2.0, 3.0]), eval_qualities=([1.0, 2.0], [1.0, 2.0, 3.0, 4.0]),
                    workers=(1, 2), log_every=(1, 20), checkpoint_every=(2, 200))
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if bool(args.train_manifest) != bool(args.eval_manifest):
        parser.error("--train-manifest and --eval-manifest go together")
    if args.resume and not args.checkpoint_dir:
        parser.error("--resume needs --checkpoint-dir")
    if args.data_dir is None and args.checkpoint_dir:
        args.data_dir = os.path.join(args.checkpoint_dir, "data")
    return args


def main(argv=None) -> int:
    args, threads = parse_args(argv), torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="elasticast-data-") as scratch:
        if args.data_dir is None:  # without a checkpoint dir the demo data is thrown away afterwards
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise SystemExit("under torchrun pass --data-dir or --checkpoint-dir (a folder every rank shares)")
            args.data_dir = scratch
        os.makedirs(args.data_dir, exist_ok=True)
        torch.set_num_threads(max(1, args.threads))
        try:
            with init_distributed(args.device) as ctx, StopRequest() as stop:
                results = train(args, ctx, stop)
        except (ManifestError, CheckpointError, NonFiniteError) as error:
            if int(os.environ.get("RANK", "0")) == 0:  # the same error on every rank: say it once
                print(f"error: {error}", file=sys.stderr)
            return 1
        finally:
            torch.set_num_threads(threads)
    if args.json and ctx.is_main:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
