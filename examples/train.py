"""Train ElasticAST on packed batches: one process or ``torchrun``, DDP or FSDP2, exact resume after a crash.

Data: audio files listed in manifests (``--train-manifest``, ``--eval-manifest``: CSV or JSONL
with ``path`` and ``label`` or ``labels``; see ``elasticast_kernels.data.ManifestDataset``). Without
them, the spoken-word demo (``spoken_words.py``: espeak-ng words, or a clearly labelled SYNTHETIC
TONE dataset when espeak-ng is missing) is written as wav files plus manifests into ``--data-dir``
and read back the same way. ``label`` trains with cross-entropy and reports accuracy; ``labels``
(multi-label) trains with BCE and reports mAP; both per quality (time resolution).

Run::

    python examples/train.py --quick                                     # one process, CPU or GPU
    torchrun --nproc_per_node=2 examples/train.py --quick --checkpoint-dir ckpt
    torchrun --nproc_per_node=2 examples/train.py --quick --checkpoint-dir ckpt --resume   # after a crash
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        examples/train.py --train-manifest train.csv --eval-manifest eval.csv --checkpoint-dir /shared/ckpt --resume

What it does per step: every rank takes its share of a ``DistributedPackedBatchSampler`` step
(packs of at most ``--max-tokens`` tokens, balanced across ranks), the loader workers decode the
audio and compute the features, one all-reduce sums the step's sample count (and the logged
totals and the stop flag), the loss is the sum over the rank's samples times world_size / global
samples, so DDP's (or FSDP's) gradient average is the gradient of the mean over all samples.
DDP by default, ``--fsdp`` shards with FSDP2 ``fully_shard`` (CPU/gloo and CUDA/NCCL); bf16
autocast on GPU; gradient clipping; warm-up + cosine LR; rank 0 shows a progress bar and writes
``metrics.jsonl``.

Checkpoints: every ``--checkpoint-every`` steps, at the end, and on SIGTERM (every rank stops after
the same step), ``DIR/last.pt`` is written atomically with the model (published keys), optimiser,
scheduler, sampler position, every rank's RNG states and the step. ``--resume`` continues from it
and repeats the uninterrupted run bit for bit on CPU with a fixed thread count (``--threads``).

On CPU leave ``TRITON_INTERPRET`` unset so the ops take their plain torch path.

What to expect (full default run, one process, a shared 2-core CPU VM without espeak-ng, so on the
synthetic tones): 1074 steps in 62 s at 278 samples/s (8.8k tokens/s, loading included), test
accuracy 1.00 / 1.00 / 0.996 at quality 1 / 2 / 3 and 1.00 at the unseen quality 4 (chance 0.10);
76 s in all. The espeak-ng words are much harder; no figure was measured here for them.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import signal
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

try:
    from tqdm.auto import tqdm
except ImportError:  # a progress bar is a nicety, never a requirement
    tqdm = None

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spoken_words import synthesise, write_dataset  # noqa: E402

from elasticast_kernels.data import (  # noqa: E402
    DistributedPackedBatchSampler,
    ManifestDataset,
    PackedBatchSampler,
    PackedCollator,
)
from elasticast_kernels.models import ElasticAST  # noqa: E402
from elasticast_kernels.training import (  # noqa: E402
    MetricsLog,
    accuracy,
    capture_rng_state,
    full_model_state,
    full_training_state,
    init_distributed,
    load_checkpoint,
    load_training_state,
    mean_average_precision,
    reduce_sums,
    restore_rng_state,
    save_checkpoint,
    scale_to_global_mean,
    unwrap_model,
    warmup_cosine,
    wrap_model,
)

PATCH = 16
MEL_BINS = 128
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "sampler", "rng", "step", "norm", "world_size")


# ---------------------------------------------------------------------------------------- data
def read_json(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)


def prepare_manifests(args, ctx) -> tuple[str, str, str, str]:
    """-> (train manifest, eval manifest, source, description); writes the demo data on rank 0."""
    if args.train_manifest:
        if not args.eval_manifest:
            raise SystemExit("--train-manifest needs --eval-manifest too")
        return args.train_manifest, args.eval_manifest, "manifest", f"{args.train_manifest} / {args.eval_manifest}"
    data_dir = args.data_dir
    info_path = os.path.join(data_dir, "dataset.json")
    wanted = {"clips_per_word": args.clips_per_word, "seed": args.seed, "espeak": not args.no_espeak,
              "test_fraction": args.test_fraction}
    if ctx.is_main:
        existing = read_json(info_path) if os.path.exists(info_path) else {}
        if existing.get("request") != wanted:  # reuse the files a crashed run wrote: same clips on resume
            data = synthesise(args.clips_per_word, seed=args.seed, use_espeak=not args.no_espeak)
            write_dataset(data, data_dir, args.test_fraction, args.seed)
            info = {**read_json(info_path), "request": wanted}
            with open(info_path, "w") as handle:
                json.dump(info, handle, indent=1)
    ctx.barrier()  # every rank reads what rank 0 wrote (multi-node: --data-dir on shared storage)
    info = read_json(info_path)
    if ctx.is_main and info["source"] != "espeak-ng":
        print("NOTE: espeak-ng was not found (or --no-espeak): this run uses the SYNTHETIC TONE DATASET.")
        print("      Install it for spoken words: apt-get update && apt-get install -y espeak-ng")
    return os.path.join(data_dir, "train.csv"), os.path.join(data_dir, "test.csv"), info["source"], info["description"]


def estimate_norm(manifest: str, clips: int, seed: int) -> tuple[float, float]:
    """Mean and std of the log-mel values of up to ``clips`` training clips (seeded choice)."""
    dataset = ManifestDataset(manifest, skip_bad=True)
    chosen = np.random.default_rng(seed).permutation(len(dataset))[:clips]
    values = torch.cat([dataset[int(i)][0].flatten() for i in chosen])
    return float(values.mean()), float(values.std())


def ignore_sigterm_in_worker(_worker_id: int) -> None:
    """Loader workers leave SIGTERM to the training process, which checkpoints and then ends them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset, sampler, args, generator=None) -> DataLoader:
    collate = PackedCollator(patch_size=PATCH, max_tokens=args.max_tokens if args.packs_per_step > 1 else None)
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=args.workers,
        persistent_workers=args.workers > 0, worker_init_fn=ignore_sigterm_in_worker,
        pin_memory=torch.cuda.is_available(), generator=generator,  # own generator: the global RNG is left alone
    )


# ---------------------------------------------------------------------------------------- model
def build_model(args, num_classes: int, max_time_patches: int) -> ElasticAST:
    """A small ElasticAST for training from scratch: scores scaled by 1/sqrt(head_dim) and
    ViT-style init (std 0.02), since the published unscaled scores and std-1 position tables
    assume fine-tuning from pretrained weights."""
    head_dim = args.dim // args.heads
    model = ElasticAST(
        sample_size=(MEL_BINS, max_time_patches * PATCH), patch_size=PATCH, num_classes=num_classes,
        dim=args.dim, depth=args.depth, heads=args.heads, channels=1, dropout=args.dropout,
        token_dropout_prob=args.token_dropout or None, attention_backend=args.backend, softmax_scale=head_dim**-0.5,
    )
    for name, param in model.named_parameters():
        if name.startswith("pos_embed") or name == "attn_pool_queries" or param.dim() == 2:
            torch.nn.init.trunc_normal_(param, std=0.02)
        elif name.endswith(".bias"):
            torch.nn.init.zeros_(param)
    return model


def train_step(model, batch, optimizer, scheduler, ctx, args, multi_label: bool, flags: dict) -> tuple[dict, torch.Tensor]:
    """Forward, ONE all-reduce (sample count, logged totals, ``flags``), normalised backward, clip, update.

    Returns the step's totals over all ranks (``samples``, ``tokens``, ``packs``, ``loss_sum``,
    ``correct`` and the summed ``flags``) and the gradient norm before clipping.
    """
    batch = batch.to(ctx.device, non_blocking=True)
    with torch.autocast(ctx.device.type, torch.bfloat16, enabled=ctx.device.type == "cuda" and args.bf16):
        logits = model(batch)
    logits = logits.float()
    loss_sum = sum_loss(logits, batch.labels, multi_label, args.label_smoothing)
    correct = 0 if multi_label else (logits.argmax(1) == batch.labels).sum()
    totals = reduce_sums(dict(samples=batch.num_samples, tokens=batch.total_tokens, packs=batch.num_packs,
                              loss_sum=loss_sum, correct=correct, **flags), ctx)
    loss = scale_to_global_mean(loss_sum, totals["samples"], ctx.world_size)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
    optimizer.step()
    scheduler.step()
    return totals, grad_norm


def sum_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool, label_smoothing: float) -> torch.Tensor:
    """SUM over the step's samples of the per-sample loss (BCE averaged over classes for multi-label)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=1).sum()
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum")


# ---------------------------------------------------------------------------------------- checkpoints
class StopRequest:
    """Set by SIGTERM; the training loop turns it into a checkpoint and a clean exit on every rank."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, _signum, _frame) -> None:
        self.requested = True

    def restore(self) -> None:
        """Put back the SIGTERM handler that was there before (the caller may be a longer-lived process)."""
        signal.signal(signal.SIGTERM, self._previous)


def write_checkpoint(path, ctx, model, optimizer, scheduler, sampler, step, consumed, norm, args) -> None:
    """Gather every rank's RNG state and the full model/optimiser state; rank 0 writes atomically."""
    rng_states = [None] * ctx.world_size
    if ctx.distributed:
        dist.all_gather_object(rng_states, capture_rng_state())
    else:
        rng_states[0] = capture_rng_state()
    model_state, optimizer_state = full_training_state(model, optimizer)  # collective under FSDP
    if ctx.is_main:
        save_checkpoint(path, {
            "model": model_state, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(consumed_steps=consumed), "rng": rng_states, "step": step,
            "norm": list(norm), "world_size": ctx.world_size, "fsdp": bool(args.fsdp),
            "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))},
        })
    ctx.barrier()  # nobody runs ahead (or gets killed) while the file is still being written


def read_checkpoint(path: str, ctx) -> dict | None:
    if not os.path.exists(path):
        if ctx.is_main:
            print(f"--resume: no checkpoint at {path} yet, starting from scratch")
        return None
    state = load_checkpoint(path, required=CHECKPOINT_KEYS)
    if state["world_size"] != ctx.world_size:
        raise SystemExit(f"{path} was written by {state['world_size']} ranks; resume it on the same number "
                         f"(this run has {ctx.world_size}) so that every rank gets its RNG state and data share back")
    return state


# ---------------------------------------------------------------------------------------- evaluation
def evaluate(model, dataset: ManifestDataset, args, device) -> dict:
    """Accuracy (single-label) or mAP (multi-label) of one eval set, on this process alone."""
    sampler = PackedBatchSampler(dataset.token_lengths(), args.max_tokens, shuffle=False)
    outputs, targets = [], []
    samples = tokens = 0
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in make_loader(dataset, sampler, args):
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda" and args.bf16):
                outputs.append(model(batch.to(device, non_blocking=True)).float().cpu())
            targets.append(batch.labels)
            samples += batch.num_samples
            tokens += batch.total_tokens
    seconds = time.perf_counter() - start
    logits, labels = torch.cat(outputs), torch.cat(targets)
    score = {"mAP": mean_average_precision(logits, labels)} if dataset.multi_label else {"accuracy": accuracy(logits, labels)}
    return {**score, "samples": samples, "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds}


def evaluate_qualities(model, eval_sets: dict, args, device, chance: float) -> dict:
    """Evaluate every quality's set, print one line each. -> {quality: metrics}."""
    results = {}
    for quality, eval_set in eval_sets.items():
        metrics = evaluate(model, eval_set, args, device)
        results[f"{quality:g}"] = metrics
        score = (f"mAP {metrics['mAP']:.3f}" if eval_set.multi_label
                 else f"accuracy {metrics['accuracy']:.3f} (chance {chance:.3f})")
        seen = "" if quality in args.train_qualities else "  (resolution not seen in training)"
        print(f"eval quality {quality:g} (frame shift {10 * quality:g} ms): {score} on {metrics['samples']} clips, "
              f"{metrics['samples_per_s']:.0f} samples/s{seen}")
    return results


def eval_copy(model, args, num_classes: int, max_time_patches: int, device):
    """A plain (unwrapped, unsharded) model for rank 0's evaluation; None on other ranks under FSDP."""
    if not args.fsdp:
        return unwrap_model(model)
    state = full_model_state(model)  # a collective: every rank calls it
    if not state:
        return None
    plain = build_model(args, num_classes, max_time_patches)
    plain.load_state_dict(state)
    return plain.to(device)


# ---------------------------------------------------------------------------------------- training
def train(args) -> dict:
    ctx = init_distributed(args.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    stop = StopRequest()
    try:
        return _train(args, ctx, stop)
    except BaseException as error:
        traceback.clear_frames(error.__traceback__)  # let the model go before the process group (below)
        raise
    finally:
        stop.restore()
        torch.set_num_threads(threads)
        # Free DDP's reducer while the process group still exists: destroyed afterwards, it can
        # deadlock on gloo's thread, which needs the GIL that the destructor holds.
        gc.collect()
        ctx.shutdown()


def _train(args, ctx, stop: StopRequest) -> dict:
    say = print if ctx.is_main else (lambda *a, **k: None)
    checkpoint_path = os.path.join(args.checkpoint_dir, "last.pt") if args.checkpoint_dir else None
    resumed = read_checkpoint(checkpoint_path, ctx) if args.resume and checkpoint_path else None

    train_manifest, eval_manifest, source, description = prepare_manifests(args, ctx)
    if resumed is not None:
        norm = tuple(resumed["norm"])  # exactly the numbers the crashed run used
    elif args.norm is not None:
        norm = tuple(args.norm)
    else:
        norm = [estimate_norm(train_manifest, 200, args.seed) if ctx.is_main else None]
        if ctx.distributed:
            dist.broadcast_object_list(norm, src=0)  # one estimate for every rank
        norm = norm[0]
    train_set = ManifestDataset(train_manifest, qualities=args.train_qualities, normalize=norm,
                                max_frames=args.max_frames, skip_bad=args.skip_bad)
    eval_sets = {q: ManifestDataset(eval_manifest, classes=train_set.classes, qualities=[q], normalize=norm,
                                    max_frames=args.max_frames, skip_bad=args.skip_bad) for q in args.eval_qualities}
    lengths = train_set.token_lengths()
    max_time_patches = max(int(ds.token_lengths().max()) for ds in [train_set, *eval_sets.values()]) // (MEL_BINS // PATCH)
    banner = "=" * 78
    say(banner)
    say(f"dataset: {description}")
    say(f"train items: {len(train_set)} ({train_set.num_clips} clips x qualities {args.train_qualities}), "
        f"tokens per item {lengths.min()}-{lengths.max()} (mean {lengths.mean():.1f}), {len(train_set.classes)} classes "
        f"({'multi-label, BCE, mAP' if train_set.multi_label else 'single-label, cross-entropy, accuracy'}); "
        f"eval clips: {eval_sets[args.eval_qualities[0]].num_clips}; skipped lines: {train_set.num_skipped} train, "
        f"{max(ds.num_skipped for ds in eval_sets.values())} eval")

    torch.manual_seed(args.seed)  # the same initial weights on every rank (FSDP does not broadcast them)
    model = wrap_model(build_model(args, len(train_set.classes), max_time_patches), ctx, fsdp=args.fsdp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sampler = DistributedPackedBatchSampler(lengths, args.max_tokens, seed=args.seed, packs_per_step=args.packs_per_step,
                                            num_replicas=ctx.world_size, rank=ctx.rank)
    total_steps = args.max_steps if args.max_steps is not None else args.epochs * len(sampler)
    scheduler = warmup_cosine(optimizer, max(1, round(args.warmup * total_steps)), total_steps)
    params = sum(p.numel() for p in unwrap_model(model).parameters())
    parallelism = ("FSDP2" if args.fsdp else "DDP") if ctx.distributed else "single process"
    say(f"model: ElasticAST dim={args.dim} depth={args.depth} heads={args.heads} ({params / 1e6:.2f} M params), "
        f"{ctx.world_size} rank(s) on {ctx.device.type} ({parallelism}), "
        f"backend {unwrap_model(model).resolved_backend(ctx.device)}, {args.max_tokens} tokens per pack, "
        f"{args.packs_per_step} pack(s) per rank and step")
    say(banner)

    step = 0
    if resumed is not None:
        load_training_state(model, optimizer, resumed["model"], resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        sampler.load_state_dict(resumed["sampler"])
        step = int(resumed["step"])
        say(f"resumed from {checkpoint_path} at step {step} (epoch {sampler.epoch}, step {sampler.start_step} of it)")
    first_step = step
    log = MetricsLog(os.path.join(args.checkpoint_dir or args.data_dir, "metrics.jsonl"),
                     resume_step=step if resumed is not None else None) if ctx.is_main else None
    # Per-rank random streams (dropout, token dropout): seeded fresh, or exactly where the crash left them.
    if resumed is not None:
        restore_rng_state(resumed["rng"][ctx.rank])
        del resumed
    else:
        torch.manual_seed(args.seed + 1 + ctx.rank)
        np.random.seed(args.seed + 1 + ctx.rank)
        random.seed(args.seed + 1 + ctx.rank)
    loader_generator = torch.Generator()
    loader = make_loader(train_set, sampler, args, loader_generator)

    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not ctx.is_main) if tqdm else None
    window = dict(samples=0.0, tokens=0.0, packs=0.0, loss_sum=0.0, correct=0.0, seconds=0.0)
    totals_all = dict(samples=0.0, tokens=0.0, seconds=0.0)
    last_loss = float("nan")
    started = time.perf_counter()
    stopped_by = None
    consumed = sampler.start_step
    while step < total_steps and stopped_by is None:
        epoch = sampler.epoch
        sampler.set_epoch(epoch)
        loader_generator.manual_seed(args.seed * 7919 + epoch * 104729 + ctx.rank)  # same worker seeds on resume
        consumed = sampler.start_step
        model.train()
        tick = time.perf_counter()
        for batch in loader:
            out_of_time = args.minutes is not None and time.perf_counter() - started > 60 * args.minutes
            flags = dict(stop=float(stop.requested), out_of_time=float(out_of_time))
            totals, grad_norm = train_step(model, batch, optimizer, scheduler, ctx, args, train_set.multi_label, flags)
            step += 1
            consumed += 1
            now = time.perf_counter()
            for key in ("samples", "tokens", "packs", "loss_sum", "correct"):
                window[key] += totals[key]
            window["seconds"] += now - tick
            tick = now
            last_loss = totals["loss_sum"] / totals["samples"]
            if bar is not None:
                bar.set_postfix(epoch=epoch, loss=f"{last_loss:.3f}")
                bar.update(1)
            if step % args.log_every == 0 or step == total_steps:
                # FSDP: a replicated DTensor; read on every rank, in case it ever needs communication
                grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
                if ctx.is_main:
                    log.write(**log_record(step, epoch, scheduler, grad_norm, window, args.max_tokens,
                                           train_set.multi_label))
                for key in totals_all:
                    totals_all[key] += window[key]
                window = dict.fromkeys(window, 0.0)
            if totals["stop"] > 0 or totals["out_of_time"] > 0:
                stopped_by = "SIGTERM" if totals["stop"] > 0 else "--minutes"
            due = args.checkpoint_every and step % args.checkpoint_every == 0
            if checkpoint_path and (due or stopped_by or step == total_steps):
                write_checkpoint(checkpoint_path, ctx, model, optimizer, scheduler, sampler, step, consumed, norm, args)
            if args.crash_after_step is not None and step == args.crash_after_step:
                os.kill(os.getpid(), signal.SIGKILL)  # tests: a crash nothing can intercept
            if stopped_by or step >= total_steps:
                break
        else:
            sampler.set_epoch(epoch + 1)  # the epoch ran out: the next one starts at its first step
    if bar is not None:
        bar.close()
    for key in totals_all:
        totals_all[key] += window[key]
    if stopped_by:
        say(f"stopped by {stopped_by} after step {step}" + (f"; checkpoint {checkpoint_path}" if checkpoint_path else ""))

    seconds = max(totals_all["seconds"], 1e-9)
    results = {
        "dataset": source, "description": description, "classes": len(train_set.classes),
        "multi_label": train_set.multi_label,
        "chance": 1.0 / len(train_set.classes), "world_size": ctx.world_size, "fsdp": bool(args.fsdp),
        "train": {"steps": step, "steps_this_run": step - first_step,
                  "epochs": round(step / max(1, sampler.stats.num_steps), 2),
                  "seconds": round(seconds, 2), "samples_per_s": totals_all["samples"] / seconds,
                  "tokens_per_s": totals_all["tokens"] / seconds, "final_loss": last_loss},
        "eval": {},
    }
    say(banner)
    say(f"train: {step - first_step} steps (to step {step}) in {seconds:.1f} s on {ctx.world_size} rank(s): "
        f"{results['train']['samples_per_s']:.1f} "
        f"samples/s, {results['train']['tokens_per_s']:.0f} tokens/s (all ranks; loading + forward + backward + update), "
        f"final loss {last_loss:.3f}")
    if not args.no_eval:
        plain = eval_copy(model, args, len(train_set.classes), max_time_patches, ctx.device)
        if ctx.is_main:
            results["eval"] = evaluate_qualities(plain, eval_sets, args, ctx.device, results["chance"])
            log.write(step=step, eval=results["eval"])
        ctx.barrier()
    say(banner)
    return results


def log_record(step, epoch, scheduler, grad_norm, window, max_tokens, multi_label) -> dict:
    """One metrics line over the steps since the last one (all ranks' totals)."""
    seconds = max(window["seconds"], 1e-9)
    record = {
        "step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
        "loss": window["loss_sum"] / max(window["samples"], 1.0), "grad_norm": grad_norm,
        "samples_per_s": window["samples"] / seconds, "tokens_per_s": window["tokens"] / seconds,
        # what a fixed-size row layout of the same packs would pad: unused budget of the packs
        "padding_pct": 100.0 * (1.0 - window["tokens"] / max(window["packs"] * max_tokens, 1.0)),
    }
    if not multi_label:
        record["train_accuracy"] = window["correct"] / max(window["samples"], 1.0)
    return record


# ---------------------------------------------------------------------------------------- command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--train-manifest", default=None, help="CSV/JSONL of path + label(s); default: the spoken-word demo")
    data.add_argument("--eval-manifest", default=None, help="the evaluation manifest (same label names)")
    data.add_argument("--data-dir", default=None,
                      help="where the demo data is written (default: CHECKPOINT_DIR/data, else a temporary folder)")
    data.add_argument("--skip-bad", action="store_true", help="skip (and count) bad manifest lines instead of failing")
    data.add_argument("--clips-per-word", type=int, default=None)
    data.add_argument("--no-espeak", action="store_true", help="use the synthetic tone dataset even if espeak-ng exists")
    data.add_argument("--test-fraction", type=float, default=0.2)
    data.add_argument("--train-qualities", type=float, nargs="+", default=None,
                      help="time resolutions trained on, mixed in every epoch (default 1 2 3; quick: 1 2)")
    data.add_argument("--eval-qualities", type=float, nargs="+", default=None,
                      help="time resolutions evaluated (default 1 2 3 4; quick: 1 2)")
    data.add_argument("--norm", type=float, nargs=2, default=None, metavar=("MEAN", "STD"),
                      help="feature normalisation (default: estimated from 200 training clips)")
    data.add_argument("--max-frames", type=int, default=None, help="crop clips to this many frames")
    data.add_argument("--workers", type=int, default=None, help="data-loader processes per rank (decode + fbank)")

    model = parser.add_argument_group("model")
    model.add_argument("--dim", type=int, default=None)
    model.add_argument("--depth", type=int, default=None)
    model.add_argument("--heads", type=int, default=None)
    model.add_argument("--dropout", type=float, default=0.0, help="dropout in the MLPs")
    model.add_argument("--token-dropout", type=float, default=0.0, help="fraction of tokens dropped in training")
    model.add_argument("--backend", default="auto", help="attention backend (see elasticast_kernels.backends)")

    run = parser.add_argument_group("training")
    run.add_argument("--quick", action="store_true", help="tiny model and data, few steps (seconds)")
    run.add_argument("--epochs", type=int, default=None)
    run.add_argument("--max-steps", "--steps", dest="max_steps", type=int, default=None,
                     help="train this many steps (overrides --epochs; the LR schedule spans them)")
    run.add_argument("--minutes", type=float, default=None, help="stop (with a checkpoint) after this much training time")
    run.add_argument("--max-tokens", type=int, default=512, help="token budget of one pack")
    run.add_argument("--packs-per-step", type=int, default=1, help="packs per rank and step")
    run.add_argument("--lr", type=float, default=3e-3)
    run.add_argument("--weight-decay", type=float, default=0.05)
    run.add_argument("--warmup", type=float, default=0.05, help="warm-up, as a fraction of the steps")
    run.add_argument("--clip-grad", type=float, default=1.0, help="gradient-norm clipping")
    run.add_argument("--label-smoothing", type=float, default=0.1, help="single-label only")
    run.add_argument("--fsdp", action="store_true",
                     help="shard with FSDP2 fully_shard instead of DDP (under torchrun; CPU/gloo and CUDA/NCCL)")
    run.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32 on GPU (default: bf16 autocast)")
    run.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads per rank (fixed: bitwise resume)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--log-every", type=int, default=None, help="steps per metrics.jsonl line")
    run.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    run.add_argument("--json", default=None, help="also write the results to this JSON file (rank 0)")

    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument("--checkpoint-dir", default=None, help="DIR/last.pt (atomic) and DIR/metrics.jsonl")
    ckpt.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 200; quick 2)")
    ckpt.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt when it exists")
    ckpt.add_argument("--crash-after-step", type=int, default=None, help=argparse.SUPPRESS)  # tests: SIGKILL itself

    args = parser.parse_args(argv)
    defaults = dict(clips_per_word=(16, 120), epochs=(6, 6), dim=(64, 96), depth=(1, 3), heads=(2, 4),
                    train_qualities=([1.0, 2.0], [1.0, 2.0, 3.0]), eval_qualities=([1.0, 2.0], [1.0, 2.0, 3.0, 4.0]),
                    workers=(1, 2), log_every=(1, 20), checkpoint_every=(2, 200))
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.resume and not args.checkpoint_dir:
        parser.error("--resume needs --checkpoint-dir")
    if args.data_dir is None:
        args.data_dir = os.path.join(args.checkpoint_dir, "data") if args.checkpoint_dir else None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="elasticast-data-") as scratch:
        if args.data_dir is None:  # without a checkpoint dir the demo data is thrown away afterwards
            if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
                raise SystemExit("under torchrun pass --data-dir or --checkpoint-dir (a folder every rank shares)")
            args.data_dir = scratch
        results = train(args)
    if args.json and int(os.environ.get("RANK", "0")) == 0:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
