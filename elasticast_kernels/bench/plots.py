"""PNG plots of a report (matplotlib, headless). Each function returns the file it wrote, or None
when the report holds no data for it."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(report: dict, group: str, name: str) -> list[dict]:
    return [r for r in report["results"] if r["group"] == group and r["name"] == name and r["status"] == "ok"]


def _title(report: dict, what: str) -> str:
    return f"{what}\n{report['device_label']}, {report['created_utc'][:10]}"


def _line_plot(lines: dict[str, list[tuple[float, float]]], path: Path, title: str, xlabel: str, ylabel: str,
               log2_x: bool = False, unit_line: bool = False) -> Path:
    """One line per label through its (x, y) points, sorted by x."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in sorted(lines.items()):
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, marker="o", label=label)
    if unit_line:
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    if log2_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def speedup_vs_seqlen(report: dict, out: Path) -> Path | None:
    lines = defaultdict(list)
    for r in _ok(report, "attention", "seqlen"):
        if r["metrics"].get("speedup_vs_baseline") is not None and r["variant"] != "sdpa_masked":
            lines[f"{r['variant']} {r['params']['pass_']}"].append((r["params"]["seqlen"], r["metrics"]["speedup_vs_baseline"]))
    if not lines:
        return None
    return _line_plot(lines, out / "speedup_vs_seqlen.png", _title(report, "Attention speedup vs sequence length"),
                      "tokens per sample (equal-length samples, 2048-token rows)",
                      "speedup over masked SDPA on padded rows", log2_x=True, unit_line=True)


def memory_vs_batch(report: dict, out: Path) -> Path | None:
    lines = defaultdict(list)
    for r in _ok(report, "attention", "batch_memory"):
        if r["metrics"].get("peak_mem_mib") is not None:
            lines[r["variant"]].append((r["params"]["samples"], r["metrics"]["peak_mem_mib"]))
    if not lines:
        return None
    return _line_plot(lines, out / "memory_vs_batch.png", _title(report, "Attention memory vs batch"),
                      "samples per step", "peak memory of attention fwd+bwd (MiB)")


def packing_efficiency(report: dict, out: Path) -> Path | None:
    cases = [r for r in _ok(report, "packing", "plan") if r["metrics"].get("efficiency") is not None]
    if not cases:
        return None
    workloads = list(dict.fromkeys(r["workload"] for r in cases))
    variants = list(dict.fromkeys(r["variant"] for r in cases))
    value = {(r["workload"], r["variant"]): r["metrics"]["efficiency"] for r in cases}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        xs = [w + i * width for w in range(len(workloads))]
        ax.bar(xs, [value.get((w, v), 0.0) for w in workloads], width, label=v)
    ax.set_xticks([w + 0.4 - width / 2 for w in range(len(workloads))], workloads)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("packing efficiency (real tokens / pack capacity)")
    ax.set_title(_title(report, "Packing efficiency per strategy (2048-token packs)"), fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out / "packing_efficiency.png")


def sweep_padding(report: dict, out: Path) -> Path | None:
    cases = _ok(report, "sweep", "padding")
    if not cases:
        return None
    steps = sorted({r["params"]["samples"] for r in cases})
    plt = _plt()
    fig, axes = plt.subplots(1, len(steps), figsize=(3.2 * len(steps), 3.6), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], steps):
        by_strategy = defaultdict(list)
        minimum = {}
        for r in cases:
            if r["params"]["samples"] == s:
                by_strategy[r["variant"]].append((r["params"]["limit"], r["metrics"]["padding_fraction"]))
                minimum[r["params"]["limit"]] = r["metrics"]["min_padding_fraction"]
        for strategy, pts in by_strategy.items():
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker=".", label=strategy)
        xs = sorted(minimum)
        ax.plot(xs, [minimum[x] for x in xs], "k--", lw=1, label="theoretical minimum")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{s} samples/step", fontsize=9)
        ax.set_xlabel("token limit per pack")
    axes[0][0].set_ylabel("padding fraction (rows padded to longest)")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(_title(report, "Padding vs token limit and samples per step"), fontsize=9)
    return _save(fig, out / "sweep_padding.png")


def sweep_throughput(report: dict, out: Path) -> Path | None:
    cases = _ok(report, "sweep", "throughput")
    if not cases:
        return None
    plt = _plt()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    lines = defaultdict(list)
    for r in cases:
        key = (r["variant"], r["params"]["strategy"], r["params"]["samples"])
        lines[key].append((r["params"]["limit"], r["metrics"]["tokens_per_s"], r["metrics"].get("peak_mem_mib") or 0.0))
    for (variant, strategy, samples), pts in sorted(lines.items()):
        pts.sort()
        xs = [p[0] for p in pts]
        style = "-" if variant != "sdpa_masked" else "--"
        ax_t.plot(xs, [p[1] for p in pts], style, marker=".", label=f"{variant} {strategy} {samples}/step")
        ax_m.plot(xs, [p[2] for p in pts], style, marker=".", label=f"{variant} {strategy} {samples}/step")
    for ax, label in ((ax_t, "attention tokens/s"), (ax_m, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("token limit per pack")
        ax.set_ylabel(label)
    ax_m.legend(fontsize=5)
    fig.suptitle(_title(report, "Attention throughput and memory vs token limit"), fontsize=9)
    return _save(fig, out / "sweep_throughput.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_plots(report: dict, out: Path) -> list[Path]:
    """Every plot the report has data for; matplotlib missing -> no plots (the JSON still holds it all)."""
    try:
        _plt()
    except ImportError:
        return []
    out.mkdir(parents=True, exist_ok=True)
    made = [f(report, out) for f in (speedup_vs_seqlen, memory_vs_batch, packing_efficiency, sweep_padding, sweep_throughput)]
    return [p for p in made if p is not None]
