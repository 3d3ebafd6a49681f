"""Long-audio inference, measured: which mode (whole or window) to default to, and what it costs.

Reproduce (about 30 min on a 2-core CPU; needs espeak-ng for the speech)::

    python examples/train.py --checkpoint-dir ckpt --clips-per-word 300 --epochs 40 \
        --train-qualities 1 --eval-qualities 1 --threads 1
    python benchmarks/results/2026-12-04_inference/measure.py --checkpoint ckpt/last.pt \
        --data-dir ckpt/data --work /tmp/inference-measure

1. Exports the training checkpoint as a self-describing model file (the card: config, class
   names from the manifest, the normalisation the run used) with ``pos_embed_interpolation=True``
   so whole mode can run past the time table.
2. Builds long files from held-out spoken words (the test split, never trained on): word slots
   separated by 0.1-0.6 s pauses, 60 % of the slots one "dominant" word, the rest random other
   words; the file's label is the dominant word. Scores them in whole mode and in window mode
   (windows of 1x, 2x and 4x the time table) through the Python API: file accuracy and time.
3. Times ``elasticast-predict`` as a separate process on a 7 s, a 3 min and a 20 min file in both
   modes: wall time and peak RSS of that process alone (``/usr/bin/time -v``).

Writes ``accuracy.json``, ``cost.json`` and ``window_scores_3min.png`` to ``--out`` (``--parts``
runs one of the two measurements).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

from elasticast_kernels.data import ManifestDataset
from elasticast_kernels.data.audio import read_audio
from elasticast_kernels.inference import Predictor
from elasticast_kernels.inference.plot import plot_windows
from elasticast_kernels.models import ElasticAST
from elasticast_kernels.saved_model import FeatureSettings, save_model
from elasticast_kernels.training import load_checkpoint

RATE = 16000
DOMINANT = 0.6


def export(checkpoint: str, train_manifest: str, out: str) -> tuple[str, dict]:
    """The training checkpoint as a model file (train.py's constructor arguments)."""
    state = load_checkpoint(checkpoint, required=("model", "norm", "args"))
    args, weights = state["args"], state["model"]
    classes = ManifestDataset(train_manifest).classes
    time_rows, dim = weights["pos_embed_time"].shape
    model = ElasticAST(sample_size=(128, time_rows * 16), patch_size=16, num_classes=len(classes), dim=dim,
                       depth=args["depth"], heads=args["heads"], channels=1, softmax_scale=(dim // args["heads"]) ** -0.5,
                       pos_embed_interpolation=True)
    model.load_state_dict(weights)
    save_model(out, model, classes=classes, features=FeatureSettings(normalize=tuple(state["norm"])))
    return out, {"parameters": sum(p.numel() for p in model.parameters()), "dim": dim, "depth": args["depth"],
                 "heads": args["heads"], "time_table_s": time_rows * 16 * 0.01, "classes": list(classes),
                 "train_step": int(state["step"]), "file_bytes": os.path.getsize(out)}


def held_out_words(test_manifest: str) -> dict[str, list[np.ndarray]]:
    base = os.path.dirname(os.path.abspath(test_manifest))
    words: dict[str, list[np.ndarray]] = {}
    with open(test_manifest, newline="") as handle:
        for row in csv.DictReader(handle):
            words.setdefault(row["label"], []).append(read_audio(os.path.join(base, row["path"]), RATE))
    return words


def long_file(words: dict[str, list[np.ndarray]], seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Words and pauses up to ``seconds``; 60 % of the words are the returned label."""
    names = sorted(words)
    target = names[rng.integers(len(names))]
    others = [name for name in names if name != target]
    parts, total = [], 0
    while total < seconds * RATE:
        name = target if rng.random() < DOMINANT else others[rng.integers(len(others))]
        clip = words[name][rng.integers(len(words[name]))]
        pause = rng.standard_normal(int(rng.uniform(0.1, 0.6) * RATE)).astype(np.float32) * 1e-3
        parts += [clip, pause]
        total += clip.shape[0] + pause.shape[0]
    return np.concatenate(parts)[: int(seconds * RATE)], target


def accuracy_runs(model_path: str, words, table_s: float, sets: dict[float, int], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    files = {seconds: [long_file(words, seconds, rng) for _ in range(count)] for seconds, count in sets.items()}
    modes = [("whole", {"long": "whole"})] + [
        (f"window {factor}x ({factor * table_s:.2f} s, hop {factor * table_s / 2:.2f} s)",
         {"long": "window", "window_s": factor * table_s}) for factor in (1, 2, 4)]
    rows = []
    for seconds, batch in files.items():
        for name, options in modes:
            predictor = Predictor.from_file(model_path, device="cpu", **options)
            start = time.perf_counter()
            results = predictor.predict_all([(wave, RATE) for wave, _ in batch])
            elapsed = time.perf_counter() - start
            correct = sum(r.top(1)[0][0] == label for r, (_, label) in zip(results, batch))
            rows.append({"seconds": seconds, "files": len(batch), "mode": name, "accuracy": correct / len(batch),
                         "wall_s": elapsed})
            print(f"{seconds:>6.0f} s x {len(batch):>3}  {name:<36} accuracy {correct / len(batch):.3f}  {elapsed:7.1f} s",
                  flush=True)
    return rows


def run_measured(argv: list[str]) -> dict:
    """Wall time and peak RSS of one separate process, as ``/usr/bin/time -v`` reports them.

    Not ``os.wait4`` from here: Linux carries the RSS high-water mark of the process that forks
    (this one, holding the test words) into the child's ``ru_maxrss`` across exec, so a child of
    a big process reports at least the parent's size. ``time`` is small.
    """
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed: {done.stderr}")
    fields = dict(line.strip().rsplit(": ", 1) for line in done.stderr.splitlines() if ": " in line and line.startswith("\t"))
    cpu = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
    return {"wall_s": wall, "peak_rss_mib": int(fields["Maximum resident set size (kbytes)"]) / 1024, "cpu_s": cpu,
            "load_before": load}


def cost_runs(model_path: str, words, work: str, repeats: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed + 1)
    import soundfile

    paths = {}
    for label, seconds in (("0.05 s (start-up + load)", 0.05), ("7 s", 7), ("3 min", 180), ("20 min", 1200)):
        wave = long_file(words, seconds, rng)[0] if seconds > 1 else np.zeros(int(seconds * RATE), np.float32)
        paths[label] = os.path.join(work, f"long_{seconds:g}s.wav")
        soundfile.write(paths[label], wave, RATE, subtype="PCM_16")
    rows = []
    command = [os.path.join(os.path.dirname(sys.executable), "elasticast-predict"), model_path]
    for label, path in paths.items():
        for mode in ("whole", "window"):
            runs = [run_measured(command + [path, "--long", mode, "--device", "cpu", "--output", os.devnull])
                    for _ in range(1 if label == "20 min" and mode == "whole" else repeats)]
            best = min(runs, key=lambda run: run["wall_s"])
            row = {"file": label, "mode": mode, "runs": len(runs), "wall_s": float(np.median([r["wall_s"] for r in runs])),
                   "wall_s_min": best["wall_s"], "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                   "cpu_s": float(np.median([r["cpu_s"] for r in runs])), "load_before": [r["load_before"] for r in runs]}
            rows.append(row)
            print(f"{label:<26} {mode:<7} wall {row['wall_s']:7.1f} s  peak RSS {row['peak_rss_mib']:7.0f} MiB  "
                  f"(load {row['load_before']})", flush=True)
    return rows, paths


def _write(folder: str, name: str, payload: dict) -> None:
    with open(os.path.join(folder, name), "w") as handle:
        json.dump(payload, handle, indent=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", required=True, help="the train.py data folder (train.csv, test.csv)")
    parser.add_argument("--work", required=True, help="scratch folder for the model file and long wavs")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", nargs="+", choices=("accuracy", "cost"), default=["accuracy", "cost"],
                        help="what to measure; each part writes its own JSON file")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    torch.manual_seed(args.seed)
    model_path, model_info = export(args.checkpoint, os.path.join(args.data_dir, "train.csv"), os.path.join(args.work, "model.pt"))
    print(json.dumps(model_info), flush=True)
    words = held_out_words(os.path.join(args.data_dir, "test.csv"))
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    if "accuracy" in args.parts:
        accuracy = accuracy_runs(model_path, words, model_info["time_table_s"], {7: 60, 30: 40, 180: 20}, args.seed)
        _write(args.out, "accuracy.json", {"model": model_info, "machine": machine, "dominant_fraction": DOMINANT,
                                           "accuracy": accuracy})
    if "cost" in args.parts:
        cost, paths = cost_runs(model_path, words, args.work, args.repeats, args.seed)
        _write(args.out, "cost.json", {"model": model_info, "machine": machine, "cost": cost})
        (example,) = Predictor.from_file(model_path, device="cpu").predict_all([paths["3 min"]])
        plot_windows(example, os.path.join(args.out, "window_scores_3min.png"), top=4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
