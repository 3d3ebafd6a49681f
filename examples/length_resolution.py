"""Does one model serve all lengths and frame shifts? ElasticAST against a fixed-length AST-style baseline.

    python examples/length_resolution.py              # the full run: 3 seeds, 3 pack budgets (~25 min, 2 CPU cores)
    python examples/length_resolution.py --quick      # seconds: runs end to end; its numbers mean nothing

Data (``words_in_context.py``): one spoken keyword (10 classes) over quieter filler speech of another
espeak-ng speaker (20-30 dB quieter: at the same level or 6-18 dB below, a model of this size did
not learn the task in this compute budget), plus noise; rendering a clip at L seconds changes only how much filler surrounds
the keyword, so clip length is a controlled variable and the label stays defined. Training and
evaluation clips come from different random speakers. Without espeak-ng: SYNTHETIC TONES, said
loudly in the output and the results.

Models: the same ElasticAST (``train.build_model``: same size, same initial weights per seed),
trained for the same number of steps on the same number of samples with the same optimiser:

- **ElasticAST**: training clips of 0-2 s (0: the keyword alone) at frame shifts 10, 20 and 30 ms (every clip at every
  shift each epoch, as the paper trains), packed into packs of at most L' tokens, never cropped or
  padded (T cropped to a whole number of 16-frame patches, as the published data loader does).
- **AST-style baseline**: the same clips at 10 ms only, each cropped or zero-padded to a fixed
  304 frames (3.04 s, 19 patches: no training clip is cropped, every one is padded) exactly as AST's pipeline does:
  log-mel, then crop the frames past 304 from the END (AST keeps the start) or pad zeros at the end,
  then normalise. A batch of such inputs is a batch of equal-length samples, so the padding is
  input the model attends to, as in AST (no mask). Its steps hold the ElasticAST run's mean number
  of samples per step.

Evaluation: held-out clips rendered at each length (0 = the keyword alone, about 0.5 s) at 10 ms,
and at 2 s at each frame shift; the same clips in every condition. ElasticAST sees every clip
whole at its own length and shift (inputs longer than its 19-patch time table get the table
linearly interpolated, the model's default ``past_time_table="interpolate"``); the baseline sees
the clip cropped/padded to its 304 frames ("crop/pad"), and, as AST users do for long audio, also the mean of its logits over
304-frame windows with 50% overlap ("windows"). Seeds change the initial weights and the sample
order; the data are the same. The pack-budget study trains ElasticAST at each L' (same epochs, so
fewer, larger steps at a larger L') and reports accuracy, speed and the memory saved for backward.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import length_resolution_report as report  # noqa: E402
import train_models  # noqa: E402
import words_in_context  # noqa: E402

from elasticast_kernels.data import PackedBatchSampler, PackedCollator, audio_to_spectrogram, fbank, num_tokens  # noqa: E402
from elasticast_kernels.training import (DistributedContext, accuracy, global_mean_update, resumable_batches,  # noqa: E402
                                         seed_rng, warmup_cosine)

PATCH, MEL_BINS, SAMPLE_RATE = train_models.PATCH, train_models.MEL_BINS, words_in_context.SAMPLE_RATE
TOKENS_PER_PATCH_COLUMN = MEL_BINS // PATCH  # a 16-frame time step is 8 tokens
EVAL_TOKENS_PER_CALL = 4096


# ---------------------------------------------------------------------------------------- features
def elastic_input(wave: np.ndarray, shift_ms: float, norm: tuple[float, float] | None) -> torch.Tensor:
    """ElasticAST's input ``[1, 128, T]``: the whole clip at ``shift_ms``, T cropped to whole patches."""
    return audio_to_spectrogram(torch.from_numpy(wave), SAMPLE_RATE, shift_ms / 10.0, normalize=norm)


def ast_input(wave: np.ndarray, shift_ms: float, frames: int, norm: tuple[float, float]) -> torch.Tensor:
    """AST's input ``[1, 128, frames]``: log-mel of the first ``frames`` frames (only the samples they
    span are read), zero-padded at the end in the log-mel domain, then normalised, as AST's loader."""
    shift, window = int(SAMPLE_RATE * shift_ms * 0.001), int(SAMPLE_RATE * 0.025)
    head = torch.from_numpy(wave[: window + (frames - 1) * shift])
    features = fbank(head, SAMPLE_RATE, MEL_BINS, frame_shift_ms=shift_ms) if head.numel() >= window else \
        torch.zeros(0, MEL_BINS)
    features = F.pad(features, (0, 0, 0, frames - features.shape[0]))
    return ((features - norm[0]) / norm[1]).T.unsqueeze(0).contiguous()


def windows(spec: torch.Tensor, fixed: torch.Tensor) -> list[torch.Tensor]:
    """AST on a long clip: windows of ``fixed``'s length over the whole clip ``spec [1, F, T]`` (50%
    overlap, the last one ending at T), or ``[fixed]`` (the cropped/padded input) when T is not longer."""
    length, frames = spec.shape[-1], fixed.shape[-1]
    if length <= frames:
        return [fixed]
    starts = list(range(0, length - frames, frames // 2)) + [length - frames]
    return [spec[..., start:start + frames] for start in starts]


def tokens_of(spec: torch.Tensor) -> int:
    return int(num_tokens(spec.shape[-1], MEL_BINS, PATCH))


# ---------------------------------------------------------------------------------------- data
def build_data(args, say) -> dict:
    """Training inputs of both models, and the held-out clips (rendered per condition later)."""
    started = time.perf_counter()
    train_clips, source, description = words_in_context.make_clips(
        args.clips_per_word, args.speakers, args.data_seed, max(args.train_seconds) + 1.0, not args.no_espeak,
        background_db=tuple(args.background_db))
    eval_clips, _, _ = words_in_context.make_clips(
        args.eval_clips_per_word, max(1, args.speakers // 4), args.data_seed + 1000, max(args.eval_lengths) + 1.0,
        not args.no_espeak, background_db=tuple(args.background_db))
    if source != "espeak-ng":
        say("NOTE: espeak-ng was not found (or --no-espeak): this run uses the SYNTHETIC TONE DATASET, not speech.\n"
            "      Install it for spoken words: apt-get update && apt-get install -y espeak-ng")
    rng = np.random.default_rng(args.data_seed + 2000)
    train_waves = [words_in_context.render(clip, float(rng.uniform(*args.train_seconds))) for clip in train_clips]
    synth_s = time.perf_counter() - started

    unnormalised = [elastic_input(wave, args.baseline_shift, None) for wave in train_waves[:200]]
    values = torch.cat([spec.double().flatten() for spec in unnormalised])
    norm = (float(values.mean()), float(values.std()))  # the training set's statistics, as AST estimates them
    labels = [clip.label for clip in train_clips]
    # ElasticAST: every clip at every training shift, one item each (the sampler shuffles them together)
    elastic_train = [(elastic_input(wave, shift, norm), label)
                     for shift in args.train_shifts for wave, label in zip(train_waves, labels)]
    baseline_train = [(ast_input(wave, args.baseline_shift, args.baseline_frames, norm), label)
                      for wave, label in zip(train_waves, labels)]
    seconds = [wave.size / SAMPLE_RATE for wave in train_waves]
    info = dict(source=source, description=description, norm=norm, synth_seconds=round(synth_s, 1),
                train_features_seconds=round(time.perf_counter() - started - synth_s, 1),
                train_clips=len(train_clips), eval_clips=len(eval_clips),
                train_clip_seconds=dict(min=min(seconds), mean=float(np.mean(seconds)), max=max(seconds)),
                keyword_seconds=float(np.mean([clip.keyword.size for clip in eval_clips])) / SAMPLE_RATE)
    say(f"data: {description}\n      {info['train_clips']} training clips ({args.train_seconds[0]:g}-"
        f"{args.train_seconds[1]:g} s), {info['eval_clips']} held-out clips by other speakers; synthesis "
        f"{synth_s:.0f} s, training features {info['train_features_seconds']:.0f} s")
    return dict(info=info, norm=norm, eval_clips=eval_clips, elastic_train=elastic_train, baseline_train=baseline_train)


def conditions(args) -> list[tuple[str, float, float, float]]:
    """Every evaluation condition: ``(axis, value, clip seconds, frame shift ms)``."""
    return ([("length", seconds, seconds, args.baseline_shift) for seconds in args.eval_lengths]
            + [("shift", shift, args.shift_eval_seconds, shift) for shift in args.eval_shifts])


def condition_inputs(eval_clips: list, seconds: float, shift_ms: float, norm, args) -> dict:
    """The held-out clips at one length and shift, as each model and variant sees them."""
    waves = [words_in_context.render(clip, seconds) for clip in eval_clips]
    elastic = [elastic_input(wave, shift_ms, norm) for wave in waves]
    crop_pad = [ast_input(wave, shift_ms, args.baseline_frames, norm) for wave in waves]
    return dict(labels=torch.tensor([clip.label for clip in eval_clips]), elastic=elastic, crop_pad=crop_pad,
                windows=[windows(spec, fixed) for spec, fixed in zip(elastic, crop_pad)],
                seconds=float(np.mean([wave.size for wave in waves])) / SAMPLE_RATE,
                unseen_by_elastic=not (args.train_seconds[0] <= seconds <= args.train_seconds[1]
                                       and shift_ms in args.train_shifts))


# ---------------------------------------------------------------------------------------- training
class SavedForBackward:
    """Bytes of the distinct tensors autograd saves for backward during a forward: the activation
    memory a training step holds at its peak (weights the graph saves count once)."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def measure(self):
        self.storages = {}
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())


def new_model(args, seed: int):
    """``train.build_model`` (the demo's ElasticAST and initialisation), the same weights for a seed."""
    torch.manual_seed(seed)
    model = train_models.build_model(
        SimpleNamespace(dim=args.dim, depth=args.depth, heads=args.heads, dropout=0.0, backend="auto",
                        token_dropout=0.0), len(words_in_context.KEYWORDS), args.baseline_frames // PATCH)
    return model


def train_model(model, items: list, lengths: np.ndarray, max_tokens: int, total_steps: int, args, seed: int,
                log_every: int = 0) -> dict:
    """Train ``model`` for ``total_steps`` packed steps of at most ``max_tokens`` tokens. -> statistics."""
    sampler = PackedBatchSampler(lengths, max_tokens, seed=seed)
    loader = DataLoader(items, batch_sampler=sampler, collate_fn=PackedCollator(patch_size=PATCH))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = warmup_cosine(optimizer, max(1, round(0.05 * total_steps)), total_steps)
    ctx, meter = DistributedContext(device=torch.device("cpu")), SavedForBackward()
    seed_rng(seed + 1)
    samples = tokens = peak_bytes = 0
    window_loss, window_samples = 0.0, 0
    model.train()
    started = time.perf_counter()
    for step, (_, _, batch) in enumerate(resumable_batches(loader, sampler, total_steps, seed=seed), 1):
        with meter.measure():
            logits = model(batch)
        loss_sum = F.cross_entropy(logits, batch.labels, label_smoothing=0.1, reduction="sum")
        outcome = global_mean_update(model, optimizer, loss_sum, batch.num_samples, ctx, clip_grad=1.0,
                                     scheduler=scheduler)
        if outcome.problem:
            raise RuntimeError(f"training diverged: {outcome.problem}")
        samples, tokens, peak_bytes = samples + batch.num_samples, tokens + batch.total_tokens, max(peak_bytes, meter.nbytes)
        window_loss, window_samples = window_loss + float(outcome.totals["loss_sum"]), window_samples + batch.num_samples
        if log_every and (step % log_every == 0 or step == total_steps):
            print(f"    step {step}/{total_steps}: training loss {window_loss / window_samples:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
            window_loss, window_samples = 0.0, 0
    seconds = time.perf_counter() - started
    return dict(steps=total_steps, samples=samples, tokens=tokens, seconds=round(seconds, 2),
                samples_per_step=samples / total_steps, samples_per_s=samples / seconds, tokens_per_s=tokens / seconds,
                pack_fill=tokens / (total_steps * max_tokens), saved_for_backward_mb=peak_bytes / 2**20,
                final_loss=outcome.totals["loss_sum"] / outcome.totals["samples"])


# ---------------------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def predict(model, specs: list[torch.Tensor]) -> torch.Tensor:
    """Logits ``[len(specs), classes]``, the inputs packed a few thousand tokens per forward."""
    model.eval()
    outputs, chunk, chunk_tokens = [], [], 0
    for spec in specs + [None]:
        if chunk and (spec is None or chunk_tokens + tokens_of(spec) > EVAL_TOKENS_PER_CALL):
            outputs.append(model(chunk, group_max_seq_len=max(EVAL_TOKENS_PER_CALL, chunk_tokens)))
            chunk, chunk_tokens = [], 0
        if spec is not None:
            chunk.append(spec)
            chunk_tokens += tokens_of(spec)
    return torch.cat(outputs)


def windowed_logits(model, clips: list[list[torch.Tensor]]) -> torch.Tensor:
    """The mean of the logits of each clip's windows."""
    logits = predict(model, [window for clip in clips for window in clip])
    counts = torch.tensor([len(clip) for clip in clips])
    owner = torch.repeat_interleave(torch.arange(len(clips)), counts)
    return torch.zeros(len(clips), logits.shape[1]).index_add_(0, owner, logits) / counts[:, None]


def score(model, inputs: dict, variant: str) -> float:
    """Accuracy of ``model`` on one condition's ``inputs`` as ``variant`` ("elastic", "crop_pad", "windows")."""
    logits = windowed_logits(model, inputs["windows"]) if variant == "windows" else predict(model, inputs[variant])
    return accuracy(logits, inputs["labels"])


# ---------------------------------------------------------------------------------------- the experiment
class LoadSampler:
    """The 1-minute load average every ``interval`` seconds, in a daemon thread."""

    def __init__(self, interval: float = 15.0) -> None:
        self.samples, self._stop = [os.getloadavg()[0]], threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


def run_experiment(args, say) -> dict:
    """Train every model (seeds x budgets, and the baseline per seed), then score them all, one
    evaluation condition at a time (only one condition's inputs are in memory)."""
    data = build_data(args, say)
    elastic_lengths = np.array([tokens_of(spec) for spec, _ in data["elastic_train"]])
    baseline_tokens = args.baseline_frames // PATCH * TOKENS_PER_PATCH_COLUMN
    runs = []
    for seed in args.seeds:
        for budget in args.budgets:
            steps = args.epochs * len(PackedBatchSampler(elastic_lengths, budget, seed=seed))
            model = new_model(args, seed)
            stats = train_model(model, data["elastic_train"], elastic_lengths, budget, steps, args, seed, args.log_every)
            runs.append(dict(model="elasticast", variants=("elastic",), seed=seed, budget=budget, train=stats, net=model))
            say(f"seed {seed}: ElasticAST, L'={budget}: {steps} steps, {stats['samples_per_step']:.1f} samples/step, "
                f"{stats['seconds']:.0f} s, final loss {stats['final_loss']:.3f}")
            if budget != args.budgets[0]:
                continue
            per_step = max(1, round(stats["samples"] / steps))  # the baseline: the same steps and samples
            model = new_model(args, seed)
            stats = train_model(model, data["baseline_train"], np.full(len(data["baseline_train"]), baseline_tokens),
                                per_step * baseline_tokens, steps, args, seed, args.log_every)
            runs.append(dict(model="ast", variants=("crop_pad", "windows"), seed=seed, budget=per_step * baseline_tokens,
                             train=stats, net=model))
            say(f"seed {seed}: AST-style baseline: {steps} steps x {per_step} samples, {stats['seconds']:.0f} s, "
                f"final loss {stats['final_loss']:.3f}")
    del data["elastic_train"], data["baseline_train"]
    started, evaluated = time.perf_counter(), []
    for axis, value, seconds, shift_ms in conditions(args):
        inputs = condition_inputs(data["eval_clips"], seconds, shift_ms, data["norm"], args)
        for run in runs:
            for variant in run["variants"]:
                evaluated.append(dict(model=run["model"] if variant == "elastic" else f"ast_{variant}", seed=run["seed"],
                                      budget=run["budget"], axis=axis, value=value, seconds=inputs["seconds"],
                                      shift_ms=shift_ms, unseen_by_elastic=inputs["unseen_by_elastic"],
                                      accuracy=score(run["net"], inputs, variant)))
        here = [e for e in evaluated if (e["axis"], e["value"]) == (axis, value)
                and (e["model"] != "elasticast" or e["budget"] == args.budgets[0])]
        say(f"eval {axis} {value:g}{' (unseen)' if inputs['unseen_by_elastic'] else ''}: " + ", ".join(
            f"{name} {np.mean([e['accuracy'] for e in here if e['model'] == name]):.3f}"
            for name in dict.fromkeys(e["model"] for e in here)))
    data["info"]["eval_seconds"] = round(time.perf_counter() - started, 1)
    return dict(data=data["info"], scores=evaluated,
                training=[dict(model=run["model"], seed=run["seed"], budget=run["budget"], **run["train"]) for run in runs])


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), platform=platform.platform())


# ---------------------------------------------------------------------------------------- command line
def _existing_parent(path: str) -> str:
    """``path`` or its nearest existing ancestor (the folder that must be writable to create it)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--quick", action="store_true", help="tiny data, model and grid: checks that it runs (seconds)")
    add("--out", help="results folder (default benchmarks/results/<date>_length_resolution)")
    add("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2; quick: 0)")
    add("--budgets", type=int, nargs="+", help="ElasticAST pack budgets L' in tokens; the first is the main "
        "comparison's (default 512 256 1024; quick: 256 512)")
    add("--epochs", type=int, help="ElasticAST epochs; the baseline gets the same steps and samples")
    add("--clips-per-word", type=int, help="training clips per keyword")
    add("--eval-clips-per-word", type=int, help="held-out clips per keyword")
    add("--speakers", type=int, help="training speakers (evaluation: a quarter as many, other ones)")
    add("--train-seconds", type=float, nargs=2, default=[0.0, 2.0], metavar=("MIN", "MAX"),
        help="training clip lengths, uniform (0: the keyword alone)")
    add("--train-shifts", type=float, nargs="+", default=[10.0, 20.0, 30.0], help="ElasticAST's frame shifts (ms)")
    add("--baseline-shift", type=float, default=10.0, help="the baseline's frame shift (ms)")
    add("--baseline-frames", type=int, default=304, help="the baseline's fixed input length (frames, x16)")
    add("--eval-lengths", type=float, nargs="+", help="evaluation clip lengths in s (0: the keyword alone)")
    add("--eval-shifts", type=float, nargs="+", help="evaluation frame shifts in ms")
    add("--background-db", type=float, nargs=2, default=list(words_in_context.BACKGROUND_DB), metavar=("LOW", "HIGH"),
        help="how much quieter than the keyword the background speech is (dB, uniform per clip)")
    add("--shift-eval-seconds", type=float, default=2.0, help="clip length of the frame-shift evaluation")
    for name in ("--dim", "--depth", "--heads"):
        add(name, type=int)
    add("--lr", type=float, default=2e-3)
    add("--weight-decay", type=float, default=0.05)
    add("--threads", type=int, default=1, help="torch CPU threads (1: far faster than 2 on a shared, loaded 2-core machine)")
    add("--data-seed", type=int, default=0)
    add("--log-every", type=int, default=0, help="print the training loss every this many steps (0: never)")
    add("--no-espeak", action="store_true", help="synthetic tones even with espeak-ng installed")
    args = parser.parse_args(argv)
    defaults = dict(seeds=([0], [0, 1, 2]), budgets=([256, 512], [512, 256, 1024]), epochs=(1, 16),
                    clips_per_word=(3, 100), eval_clips_per_word=(2, 20), speakers=(8, 60), dim=(32, 64),
                    depth=(1, 2), heads=(2, 4), eval_lengths=([0.0, 1.0, 4.0], [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0]),
                    eval_shifts=([10.0, 20.0], [5.0, 10.0, 20.0, 30.0, 40.0]))
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    problems = [f"--{name.replace('_', '-')} must be > 0" for name in ("epochs", "clips_per_word", "eval_clips_per_word",
                                                                      "speakers", "dim", "depth", "heads", "threads")
                if getattr(args, name) < 1]
    if args.baseline_frames < PATCH or args.baseline_frames % PATCH:
        problems.append(f"--baseline-frames must be a positive multiple of {PATCH}")
    if not 0 <= args.train_seconds[0] <= args.train_seconds[1] or not all(math.isfinite(s) for s in args.train_seconds) \
            or args.train_seconds[1] <= 0:
        problems.append("--train-seconds needs 0 <= MIN <= MAX, MAX > 0 (0: the keyword alone)")
    for name in ("train_shifts", "eval_shifts", "eval_lengths"):
        values = getattr(args, name)
        if not all(math.isfinite(v) and (v >= 0 if name == "eval_lengths" else v >= 1.0) for v in values):
            problems.append(f"--{name.replace('_', '-')} must be finite and " +
                            (">= 0" if name == "eval_lengths" else ">= 1 ms"))
    if not (math.isfinite(args.shift_eval_seconds) and args.shift_eval_seconds > 0):
        problems.append("--shift-eval-seconds must be > 0")
    if not (all(math.isfinite(v) for v in args.background_db) and args.background_db[0] <= args.background_db[1]):
        problems.append("--background-db needs finite LOW <= HIGH")
    if any(budget < 1 for budget in args.budgets):
        problems.append("--budgets must be positive token counts")
    if any(seed < 0 for seed in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        problems.append("--seeds must be distinct integers >= 0")
    if args.log_every < 0:
        problems.append("--log-every must be >= 0")
    if args.out is not None and (os.path.exists(args.out) and not os.path.isdir(args.out)):
        problems.append(f"--out {args.out!r} exists and is not a folder")
    elif args.out is not None and not (os.path.isdir(_existing_parent(args.out))
                                       and os.access(_existing_parent(args.out), os.W_OK | os.X_OK)):
        problems.append(f"--out {args.out!r} cannot be created or written")
    if problems:
        parser.error("; ".join(problems))
    args.out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                                        "results", f"{datetime.date.today():%Y-%m-%d}_length_resolution")
    return args


def main(argv=None) -> int:
    args, threads = parse_args(argv), torch.get_num_threads()
    command = "python examples/length_resolution.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        with LoadSampler() as load:
            results = run_experiment(args, print)
    finally:
        torch.set_num_threads(threads)
    results.update(command=command.strip(), machine=dict(machine(), torch_threads=args.threads),
                   duration_s=round(time.perf_counter() - started, 1),
                   load_average=dict(start=load.samples[0], end=load.samples[-1], mean=float(np.mean(load.samples)),
                                     max=max(load.samples)),
                   date=f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
                   settings={key: value for key, value in vars(args).items() if key != "out"})
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=1)
    for path in report.write(results, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
