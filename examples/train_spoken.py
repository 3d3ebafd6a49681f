"""Train a small ElasticAST on variable-length spoken words, on CPU, with packed batches.

What it shows, end to end, with the package's training-side pieces:
- a spoken-word dataset synthesised locally by ``espeak-ng`` (see ``spoken_words.py``): 10 words
  (classes) said by random voices, speaking rates and pitches, so clip lengths vary ~5x;
- Kaldi-compatible log-mel features (``elasticast_kernels.data.fbank`` via
  ``audio_to_spectrogram``) at several time resolutions: quality q multiplies the 10 ms frame
  shift, so a clip has ~1/q as many frames (the ElasticAST paper's elastic-length setting);
- ``PackedBatchSampler`` steps of at most ``--max-tokens`` tokens (no padding anywhere),
  ``PackedCollator`` building the ``PackedBatch`` in the data loader, and ``ElasticAST`` taking
  the ``PackedBatch`` directly (varlen attention + fused attention pooling);
- training on a mix of resolutions, then accuracy and throughput at each resolution.

Install espeak-ng first for the real dataset (Debian/Ubuntu: ``apt-get update && apt-get install
-y espeak-ng``; macOS: ``brew install espeak-ng``). Without it the script says so loudly and
trains on a SYNTHETIC TONE dataset instead (same shapes, same code path).

Run::

    python examples/train_spoken.py            # ~7 minutes on 2 CPU cores (5 of them training)
    python examples/train_spoken.py --quick    # tiny model and data, < 60 s (what the tests run)
    python examples/train_spoken.py --help

On CPU, leave ``TRITON_INTERPRET`` unset so the ops take their plain torch path.

What to expect (full run, espeak-ng, a shared 2-core machine, 1 torch thread): 1312 steps in
5 min at ~150 samples/s (2.3k tokens/s, forward+backward+update), test accuracy 0.58 / 0.62 /
0.55 at quality 1 / 2 / 3 and 0.41 at the unseen quality 4, against 0.10 chance. A model
trained from scratch on 960 clips is far from converged: more minutes or clips raise it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

try:
    from tqdm.auto import tqdm
except ImportError:  # progress bars are a nicety, never a requirement
    def tqdm(iterable=None, **_):
        return iterable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spoken_words import synthesise  # noqa: E402

from elasticast_kernels.data import PackedBatchSampler, PackedCollator, audio_to_spectrogram  # noqa: E402
from elasticast_kernels.models import ElasticAST  # noqa: E402

PATCH = 16
MEL_BINS = 128


class SpectrogramSet(Dataset):
    """``(spectrogram [1, 128, T], label)`` items, precomputed (features are cheap next to training)."""

    def __init__(self, specs: list[torch.Tensor], labels: list[int]) -> None:
        self.specs, self.labels = specs, labels

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int):
        return self.specs[index], self.labels[index]

    def token_lengths(self) -> np.ndarray:
        """Tokens per item, what the sampler packs: (F / p) * (T / p)."""
        return np.array([(s.shape[1] // PATCH) * (s.shape[2] // PATCH) for s in self.specs], dtype=np.int64)


def featurise(waveforms, labels, sample_rate, qualities, normalize, desc) -> SpectrogramSet:
    specs, out_labels = [], []
    jobs = [(w, label, q) for q in qualities for w, label in zip(waveforms, labels)]
    for wave, label, quality in tqdm(jobs, desc=desc, unit="clip", leave=False):
        specs.append(audio_to_spectrogram(torch.from_numpy(wave), sample_rate, quality, normalize=normalize))
        out_labels.append(int(label))
    return SpectrogramSet(specs, out_labels)


def dataset_statistics(waveforms, sample_rate) -> tuple[float, float]:
    """Mean and std of the training set's log-mel values (as the recipes normalise)."""
    values = torch.cat([audio_to_spectrogram(torch.from_numpy(w), sample_rate).flatten() for w in waveforms])
    return float(values.mean()), float(values.std())


def make_loader(dataset: SpectrogramSet, max_tokens: int, shuffle: bool, seed: int, workers: int):
    sampler = PackedBatchSampler(dataset.token_lengths(), max_tokens, "best_fit_window", shuffle=shuffle, seed=seed)
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=PackedCollator(patch_size=PATCH), num_workers=workers,
        persistent_workers=workers > 0,
    )
    return sampler, loader


def evaluate(model, dataset: SpectrogramSet, max_tokens: int, workers: int, desc: str) -> dict[str, float]:
    _, loader = make_loader(dataset, max_tokens, shuffle=False, seed=0, workers=workers)
    model.eval()
    correct = samples = tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="step", leave=False):
            predicted = model(batch).argmax(dim=-1)  # logits in the step's sample order, as batch.labels
            correct += int((predicted == batch.labels).sum())
            samples += batch.num_samples
            tokens += batch.total_tokens
    seconds = time.perf_counter() - start
    return {"accuracy": correct / samples, "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
            "samples": samples}


def build_model(args, num_classes: int, max_frames: int) -> ElasticAST:
    """A small ElasticAST for training from scratch.

    Two departures from the published defaults, both because it starts from random weights (the
    published model is always fine-tuned from ImageNet/SSAST weights): scores scaled by
    1/sqrt(head_dim) (published: unscaled) and ViT-style initialisation (std 0.02 position tables
    and linear weights) so that the patch content is not drowned by std-1 position embeddings.
    """
    head_dim = args.dim // args.heads
    model = ElasticAST(
        sample_size=(MEL_BINS, int(math.ceil(max_frames / PATCH)) * PATCH), patch_size=PATCH,
        num_classes=num_classes, dim=args.dim, depth=args.depth, heads=args.heads, channels=1,
        dropout=args.dropout, token_dropout_prob=args.token_dropout or None, attention_backend=args.backend,
        softmax_scale=head_dim**-0.5,
    )
    for name, param in model.named_parameters():
        if name.startswith("pos_embed") or name == "attn_pool_queries":
            torch.nn.init.trunc_normal_(param, std=0.02)
        elif param.dim() == 2:  # linear weights
            torch.nn.init.trunc_normal_(param, std=0.02)
        elif name.endswith(".bias"):
            torch.nn.init.zeros_(param)
    return model


def train(args) -> dict:
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(max(1, args.threads))

    data = synthesise(args.clips_per_word, seed=args.seed, use_espeak=not args.no_espeak, progress=tqdm)
    banner = "=" * 78
    print(banner)
    print(f"dataset: {data.description}")
    if data.source != "espeak-ng":
        print("NOTE: espeak-ng was not found (or --no-espeak): this run uses the SYNTHETIC TONE DATASET.")
        print("      Install it for spoken words: apt-get update && apt-get install -y espeak-ng")
    durations = np.array([len(w) / data.sample_rate for w in data.waveforms])
    print(f"clips: {len(durations)}, {durations.min():.2f}-{durations.max():.2f} s (mean {durations.mean():.2f} s), "
          f"{len(data.class_names)} classes: {', '.join(data.class_names)}")

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(data.waveforms))
    n_test = int(round(len(order) * args.test_fraction))
    test_ids, train_ids = order[:n_test], order[n_test:]
    train_waves = [data.waveforms[i] for i in train_ids]
    test_waves = [data.waveforms[i] for i in test_ids]
    norm = dataset_statistics(train_waves, data.sample_rate)
    train_set = featurise(train_waves, data.labels[train_ids], data.sample_rate, args.train_qualities, norm, "features")
    test_sets = {q: featurise(test_waves, data.labels[test_ids], data.sample_rate, [q], norm, f"features q={q:g}")
                 for q in args.eval_qualities}
    max_frames = max(s.shape[2] for ds in [train_set, *test_sets.values()] for s in ds.specs)
    lengths = train_set.token_lengths()
    print(f"train items: {len(train_set)} ({len(train_ids)} clips x qualities {args.train_qualities}), "
          f"tokens per item {lengths.min()}-{lengths.max()} (mean {lengths.mean():.1f}); test clips: {n_test}")

    model = build_model(args, len(data.class_names), max_frames)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: ElasticAST dim={args.dim} depth={args.depth} heads={args.heads} ({params / 1e6:.2f} M params), "
          f"backend {model.resolved_backend('cpu')}, max {args.max_tokens} tokens per step")
    print(banner)

    sampler, loader = make_loader(train_set, args.max_tokens, shuffle=True, seed=args.seed, workers=args.workers)
    steps_per_epoch = len(sampler)
    total_steps = args.epochs * steps_per_epoch if args.steps is None else args.steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    budget_s = args.minutes * 60 if args.minutes else math.inf

    def learning_rate(step: int, elapsed_s: float) -> float:
        """Linear warm-up over 5% then cosine decay, over whichever runs out first: steps or time."""
        progress = min(1.0, max(step / total_steps, elapsed_s / budget_s))
        return args.lr * min(1.0, progress / 0.05 + 1e-3) * 0.5 * (1 + math.cos(math.pi * progress))

    step = train_samples = train_tokens = 0
    train_seconds = 0.0
    started = time.perf_counter()
    epoch = 0
    bar = tqdm(total=total_steps, desc="train", unit="step")
    while step < total_steps and time.perf_counter() - started < budget_s:
        sampler.set_epoch(epoch)
        model.train()
        running = []
        for batch in loader:
            start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, start - started)
            logits = model(batch)
            loss = F.cross_entropy(logits, batch.labels, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            train_seconds += time.perf_counter() - start
            train_samples += batch.num_samples
            train_tokens += batch.total_tokens
            running.append(float(loss.detach()))
            step += 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(epoch=epoch, loss=f"{np.mean(running[-20:]):.3f}",
                                samples_s=f"{train_samples / train_seconds:.0f}")
                bar.update(1)
            if step >= total_steps or time.perf_counter() - started >= budget_s:
                break
        epoch += 1
    if hasattr(bar, "close"):
        bar.close()

    results = {
        "dataset": data.source,
        "classes": len(data.class_names),
        "chance": 1.0 / len(data.class_names),
        "train": {"steps": step, "epochs": round(step / steps_per_epoch, 2), "seconds": round(train_seconds, 1),
                  "samples_per_s": train_samples / train_seconds, "tokens_per_s": train_tokens / train_seconds,
                  "final_loss": float(np.mean(running[-20:])) if running else float("nan")},
        "eval": {},
    }
    print(banner)
    print(f"train: {step} steps ({results['train']['epochs']} epochs) in {train_seconds:.1f} s: "
          f"{results['train']['samples_per_s']:.1f} samples/s, {results['train']['tokens_per_s']:.0f} tokens/s "
          f"(forward+backward+update), final loss {results['train']['final_loss']:.3f}")
    for quality, test_set in test_sets.items():
        metrics = evaluate(model, test_set, args.max_tokens, args.workers, f"eval q={quality:g}")
        results["eval"][f"{quality:g}"] = metrics
        seen = "" if quality in args.train_qualities else "  (resolution not seen in training)"
        print(f"eval quality {quality:g} (frame shift {10 * quality:g} ms): accuracy {metrics['accuracy']:.3f} "
              f"(chance {results['chance']:.3f}) on {metrics['samples']} clips, "
              f"{metrics['samples_per_s']:.0f} samples/s, {metrics['tokens_per_s']:.0f} tokens/s{seen}")
    print(banner)
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, small data, few steps (< 60 s)")
    parser.add_argument("--clips-per-word", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps (overrides --epochs)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training time budget (default 5 for the full run; the LR schedule follows it)")
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget of one step (one pack)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--token-dropout", type=float, default=None, help="fraction of tokens dropped in training")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout in the MLPs")
    parser.add_argument("--train-qualities", type=float, nargs="+", default=None,
                        help="time resolutions trained on, mixed in every epoch (default 1 2 3)")
    parser.add_argument("--eval-qualities", type=float, nargs="+", default=None,
                        help="time resolutions evaluated (default 1 2 3 4)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--backend", default="auto", help="attention backend (see elasticast_kernels.backends)")
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (1 is fastest for these small steps on a small or shared machine)",
    )
    parser.add_argument("--no-espeak", action="store_true", help="use the synthetic tone dataset even if espeak-ng exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    # full run: 5 minutes of training (time-capped); quick: < 60 s including synthesis
    defaults = dict(clips_per_word=(16, 120), epochs=(6, 40), dim=(64, 96), depth=(1, 3), heads=(2, 4),
                    max_tokens=(512, 512), lr=(3e-3, 3e-3), token_dropout=(0.0, 0.0), minutes=(None, 5.0),
                    train_qualities=([1.0, 2.0], [1.0, 2.0, 3.0]), eval_qualities=([1.0, 2.0], [1.0, 2.0, 3.0, 4.0]))
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    results = train(args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
