"""The tables, figure and note of ``length_resolution.py``'s results (mean and range over seeds)."""
from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

#: what the figure and tables call each scored model
LABELS = {"elasticast": "ElasticAST (whole clip)", "ast_crop_pad": "AST-style, crop/pad",
          "ast_windows": "AST-style, mean of windows"}


def _main_budget(results: dict) -> int:
    return results["settings"]["budgets"][0]


def summarise(results: dict, budget: int | None = None) -> dict:
    """``{model: {axis: [(value, seconds, mean, min, max, unseen), ...]}}`` over seeds; ElasticAST at
    ``budget`` (default: the main comparison's)."""
    budget = _main_budget(results) if budget is None else budget
    grouped: dict = defaultdict(lambda: defaultdict(list))
    for entry in results["scores"]:
        if entry["model"] == "elasticast" and entry["budget"] != budget:
            continue
        grouped[entry["model"]][(entry["axis"], entry["value"])].append(entry)
    summary: dict = defaultdict(lambda: defaultdict(list))
    for model, by_condition in grouped.items():
        for (axis, value), entries in sorted(by_condition.items()):
            scores = [entry["accuracy"] for entry in entries]
            summary[model][axis].append((value, entries[0]["seconds"], float(np.mean(scores)), min(scores), max(scores),
                                         entries[0]["unseen_by_elastic"]))
    return summary


def _cell(mean: float, low: float, high: float) -> str:
    return f"{mean:.3f} [{low:.2f}-{high:.2f}]"


def accuracy_tables(results: dict) -> str:
    """Markdown: accuracy vs length and vs frame shift, every model, mean [min-max] over seeds."""
    summary, settings = summarise(results), results["settings"]
    models = [model for model in LABELS if model in summary]
    seeds = len(settings["seeds"])
    lines = []
    for axis, title, unit in (("length", f"Accuracy vs clip length (frame shift {settings['baseline_shift']:g} ms)", "s"),
                              ("shift", f"Accuracy vs frame shift ({settings['shift_eval_seconds']:g} s clips)", "ms")):
        lines += [f"### {title}", "", f"mean [min-max] over {seeds} seeds; * = a condition ElasticAST never trained on", "",
                  f"| {axis} | mean clip s | " + " | ".join(LABELS[m] for m in models) + " |",
                  "|---|---|" + "---|" * len(models)]
        for row in zip(*(summary[model][axis] for model in models)):
            value, seconds, unseen = row[0][0], row[0][1], row[0][5]
            name = "keyword alone" if axis == "length" and value == 0 else f"{value:g} {unit}"
            lines.append(f"| {name}{' *' if unseen else ''} | {seconds:.2f} | "
                         + " | ".join(_cell(*entry[2:5]) for entry in row) + " |")
        lines.append("")
    return "\n".join(lines)


def budget_table(results: dict) -> str:
    """Markdown: ElasticAST at every pack budget L' (accuracy, speed, memory), mean over seeds."""
    lines = ["### ElasticAST at each pack budget L' (same epochs; mean over seeds)", "",
             "| L' (tokens) | steps | samples/step | pack fill | train s | samples/s | tokens/s | saved for backward "
             "(MB, peak step) | mean accuracy, lengths | mean accuracy, shifts |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for budget in results["settings"]["budgets"]:
        runs = [run for run in results["training"] if run["model"] == "elasticast" and run["budget"] == budget]
        summary = summarise(results, budget)["elasticast"]
        means = {axis: np.mean([entry[2] for entry in summary[axis]]) for axis in ("length", "shift")}
        ranges = {axis: [np.mean([e["accuracy"] for e in results["scores"] if e["model"] == "elasticast"
                                  and e["budget"] == budget and e["seed"] == seed and e["axis"] == axis])
                         for seed in results["settings"]["seeds"]] for axis in means}

        def mean(key: str) -> float:
            return float(np.mean([run[key] for run in runs]))

        lines.append(f"| {budget} | {mean('steps'):.0f} | {mean('samples_per_step'):.1f} | {100 * mean('pack_fill'):.1f}% | "
                     f"{mean('seconds'):.0f} | {mean('samples_per_s'):.0f} | {mean('tokens_per_s'):.0f} | "
                     f"{mean('saved_for_backward_mb'):.1f} | "
                     + " | ".join(_cell(means[axis], min(ranges[axis]), max(ranges[axis])) for axis in means) + " |")
    return "\n".join(lines) + "\n"


def training_table(results: dict) -> str:
    """Markdown: what each model's training cost (main budget), mean over seeds."""
    lines = ["### Training cost (mean over seeds)", "",
             "| model | steps | samples | tokens | train s | samples/s | saved for backward (MB, peak step) |",
             "|---|---|---|---|---|---|---|"]
    for model, budget, name in (("elasticast", _main_budget(results), f"ElasticAST, L'={_main_budget(results)}"),
                                ("ast", None, "AST-style baseline")):
        runs = [run for run in results["training"] if run["model"] == model and budget in (None, run["budget"])]
        mean = {key: float(np.mean([run[key] for run in runs]))
                for key in ("steps", "samples", "tokens", "seconds", "samples_per_s", "saved_for_backward_mb")}
        lines.append(f"| {name} | {mean['steps']:.0f} | {mean['samples']:.0f} | {mean['tokens']:.0f} | "
                     f"{mean['seconds']:.0f} | {mean['samples_per_s']:.0f} | {mean['saved_for_backward_mb']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    """Accuracy vs length and vs frame shift, mean line and min-max band over seeds, every model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, settings = summarise(results), results["settings"]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {"elasticast": dict(color="C0", ls="-", marker="o"), "ast_crop_pad": dict(color="C3", ls="-", marker="s"),
              "ast_windows": dict(color="C3", ls="--", marker="^")}
    for ax, axis in zip(axes, ("length", "shift")):
        for model, style in styles.items():
            if model not in summary:
                continue
            rows = summary[model][axis]
            x = [row[1] if axis == "length" else row[0] for row in rows]
            ax.plot(x, [row[2] for row in rows], label=LABELS[model], **style)
            ax.fill_between(x, [row[3] for row in rows], [row[4] for row in rows], color=style["color"], alpha=0.15)
        ax.axhline(0.1, color="grey", lw=0.8, ls=":", label="chance")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy (held-out speakers)")
        ax.grid(alpha=0.3)
    low, high = settings["train_seconds"]
    axes[0].axvspan(low, high, color="C0", alpha=0.08, label="ElasticAST's training lengths")
    axes[0].axvline(settings["baseline_frames"] / 100 * settings["baseline_shift"] / 10, color="C3", lw=0.8, ls=":",
                    label="baseline's fixed length")
    axes[0].set_xlabel(f"clip length, s (frame shift {settings['baseline_shift']:g} ms)")
    axes[0].set_title("Accuracy vs clip length")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(settings["eval_shifts"], [f"{v:g}" for v in settings["eval_shifts"]])
    for shift in settings["train_shifts"]:
        axes[1].axvline(shift, color="C0", alpha=0.25, lw=6)
    axes[1].axvline(settings["baseline_shift"], color="C3", lw=0.8, ls=":")
    axes[1].set_xlabel(f"frame shift, ms ({settings['shift_eval_seconds']:g} s clips); blue bars: ElasticAST's "
                       "training shifts")
    axes[1].set_title("Accuracy vs frame shift")
    axes[0].legend(fontsize=8, loc="upper right")
    data = results["data"]
    tag = "" if data["source"] == "espeak-ng" else "  [SYNTHETIC TONES, not speech]"
    figure.suptitle(f"One model for all lengths? {data['eval_clips']} held-out clips, {len(settings['seeds'])} seeds "
                    f"(band: min-max), same steps and samples{tag}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def note(results: dict) -> str:
    """The run's README: what ran, where, how long, under what load, and every table."""
    data, machine, load, settings = results["data"], results["machine"], results["load_average"], results["settings"]
    warning = "" if data["source"] == "espeak-ng" else (
        "\n**SYNTHETIC TONE DATASET: espeak-ng missing or `--no-espeak`: these numbers are about tones, not speech.**\n")
    minutes = results["duration_s"] / 60
    return "\n".join([
        f"# Length and frame-shift generalisation: ElasticAST vs a fixed-length AST-style baseline ({results['date']})",
        warning,
        f"Command: `{results['command']}`  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} ({machine['torch_threads']} "
        f"threads), Python {machine['python']}.  ",
        f"Duration: {minutes:.1f} min (data synthesis {data['synth_seconds']:.0f} s, evaluation "
        f"{data['eval_seconds']:.0f} s). Load average (1 min) during the run: start {load['start']:.1f}, mean "
        f"{load['mean']:.1f}, max {load['max']:.1f}, end {load['end']:.1f} (the machine has {machine['cores']} cores; "
        "times are comparable only within this run).",
        "",
        f"Data: {data['description']}. {data['train_clips']} training clips "
        f"({data['train_clip_seconds']['min']:.2f}-{data['train_clip_seconds']['max']:.2f} s), {data['eval_clips']} "
        f"held-out clips by other speakers (keyword alone: {data['keyword_seconds']:.2f} s on average). "
        f"Model: ElasticAST dim {settings['dim']}, depth {settings['depth']}, heads {settings['heads']}, "
        f"{settings['epochs']} ElasticAST epochs; seeds {settings['seeds']}.",
        "",
        f"ElasticAST trains on {settings['train_seconds'][0]:g}-{settings['train_seconds'][1]:g} s clips at "
        f"{', '.join(f'{s:g}' for s in settings['train_shifts'])} ms, packed (L' = {_main_budget(results)}), whole; the "
        f"baseline on the same clips at {settings['baseline_shift']:g} ms cropped/padded to {settings['baseline_frames']} "
        "frames (AST's pipeline: keep the first frames, zero-pad the log-mel, then normalise), for the same steps "
        "and samples. See examples/length_resolution.py for the design.",
        "",
        accuracy_tables(results), training_table(results), budget_table(results),
        "Figure: `length_resolution.png`; every score: `results.json`.",
    ])


def write(results: dict, out_dir: str) -> list[str]:
    """``table.md``, ``length_resolution.png`` and ``README.md`` in ``out_dir``. -> their paths."""
    paths = [os.path.join(out_dir, name) for name in ("table.md", "length_resolution.png", "README.md")]
    with open(paths[0], "w") as handle:
        handle.write("\n".join([accuracy_tables(results), training_table(results), budget_table(results)]))
    plot(results, paths[1])
    with open(paths[2], "w") as handle:
        handle.write(note(results) + "\n")
    return paths
