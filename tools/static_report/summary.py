"""Summaries of static reports: before/after of the default tiles, and the feature variants side by side."""
from __future__ import annotations

KEY_FIELDS = ("kernel", "arch", "dtype", "head_dim", "variant")
# the defaults the before/after summary lists: (kernel, arch, head_dim); bf16, plain
SUMMARY_CASES = (
    ("fwd", 90, 64), ("fwd", 90, 128), ("fwd", 90, 256), ("dkdv", 90, 64), ("dkdv", 90, 128), ("dv", 90, 256),
    ("dk", 90, 256), ("dq", 90, 64), ("dq", 90, 128), ("dq", 90, 256), ("preprocess", 90, 64), ("fwd", 80, 64),
    ("fwd", 80, 256), ("dkdv", 80, 128), ("dv", 80, 256), ("dk", 80, 256), ("dq", 80, 128), ("dq", 80, 256),
    ("_pool_fwd_partial_kernel", 90, 64), ("_pool_bwd_kernel", 90, 64), ("_pool_combine_kernel", 90, 64),
    ("_segment_sum_partial_kernel", 90, 768), ("_segment_mean_bwd_kernel", 90, 768), ("_slot_sum_kernel", 90, 768),
)
VARIANT_ORDER = ("plain", "causal", "window", "softcap", "gqa_cross", "all")
# the attention kernels in table order (above head_dim 128 dK/dV runs as a dV pass and a dK pass)
ATTENTION_KERNELS = ("fwd", "dkdv", "dv", "dk", "dq")


def variant_of(row: dict) -> str:
    """A row's feature variant; reports from before the variants had only ``causal``."""
    if "variant" in row:
        return row["variant"]
    return "causal" if row.get("causal") else "plain"


def _defaults(report: dict) -> dict[tuple, dict]:
    return {(*(row[f] for f in KEY_FIELDS[:-1]), variant_of(row)): row for row in report["rows"] if row["default"]}


def _per_tile(row: dict) -> str:
    per_tile = row.get("instr_per_tile")
    if per_tile is None:
        return f"{row['instr_per_iteration']}/iter" if row.get("instr_per_iteration") is not None else "-"
    return str(per_tile)


def _cell(row: dict | None) -> str:
    if row is None:
        return "- | - | - | - | -"
    ratio = "-" if row.get("mma_ratio") is None else row["mma_ratio"]
    tile = f"{row['block_m']}x{row['block_n']} w{row['num_warps']}"
    return f"{tile} | {row['registers']} | {row['spill_bytes']} | {_per_tile(row)} | {ratio}"


def before_after(before: dict, after: dict) -> str:
    """Markdown: default tiles before and after (bf16, plain), then the busy fractions."""
    old, new = _defaults(before), _defaults(after)
    lines = [f"## Before ({before.get('label') or 'baseline'}) and after, triton {after['triton']}", "",
             "Default configuration, bf16, plain self-attention. instr/tile: main-loop SASS instructions x warps"
             " per 128x64 tile (pooling: per loop iteration of the CTA).", "",
             "| kernel | sm | d | tile before | regs | spill B | instr/tile | MMA ratio"
             " | tile after | regs | spill B | instr/tile | MMA ratio | instr change |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kernel, arch, head_dim in SUMMARY_CASES:
        key = (kernel, arch, "bf16", head_dim, "plain")
        a, b = old.get(key), new.get(key)
        if a is None and b is None:
            continue
        change = "-"
        if a and b and a.get("instr_per_tile") and b.get("instr_per_tile"):
            change = f"{100 * (b['instr_per_tile'] / a['instr_per_tile'] - 1):+.1f}%"
        elif a and b and a.get("instr_per_iteration") and b.get("instr_per_iteration"):
            change = f"{100 * (b['instr_per_iteration'] / a['instr_per_iteration'] - 1):+.1f}%"
        lines.append(f"| {kernel} | {arch} | {head_dim} | {_cell(a)} | {_cell(b)} | {change} |")
    lines += ["", "| kernel | variant | workload | busy before | busy after |", "|---|---|---|---|---|"]
    old_sched = {(s["kernel"], variant_of(s), s["workload"]): s for s in before["schedules"]}
    for s in after["schedules"]:
        prior = old_sched.get((s["kernel"], variant_of(s), s["workload"]))
        prior_busy = "-" if prior is None else f"{prior['busy_fraction']:.3f}"
        lines.append(f"| {s['kernel']} | {variant_of(s)} | {s['workload']} | {prior_busy} | {s['busy_fraction']:.3f} |")
    return "\n".join(lines) + "\n"


def _tile(row: dict) -> str:
    return f"{row['block_m']}x{row['block_n']} w{row['num_warps']}s{row['num_stages']}"


def variants_table(report: dict, dtype: str = "bf16") -> str:
    """Markdown: each attention kernel's default tile per arch and head_dim, one column per feature
    variant: registers / spill bytes / instructions per 128x64 tile (MMA ratio when not 1.0). The
    tile column is the plain variant's; a variant whose launches default to another tile (the
    heavy-feature candidate lists) names its tile in its cell."""
    rows = _defaults(report)
    present = [v for v in VARIANT_ORDER if any(key[-1] == v for key in rows)]
    if not present:
        return ""
    lines = [f"## Feature variants at the default tiles ({dtype})", "",
             "Each cell: registers / spill bytes / main-loop instructions x warps per 128x64 tile"
             " (MMA ratio shown when it is not 1.0; the tile when it is not the row's).", "",
             "| kernel | sm | d | tile | " + " | ".join(present) + " |", "|---|---|---|---|" + "---|" * len(present)]
    shapes = sorted({(k[0], k[1], k[3]) for k in rows if k[0] in ATTENTION_KERNELS and k[2] == dtype},
                    key=lambda x: (ATTENTION_KERNELS.index(x[0]), x[1], x[2]))
    for kernel, arch, head_dim in shapes:
        found = [rows.get((kernel, arch, dtype, head_dim, variant)) for variant in present]
        tile = next((_tile(row) for row in found if row is not None), "-")
        cells = []
        for row in found:
            if row is None:
                cells.append("-")
                continue
            ratio = row.get("mma_ratio")
            extra = "" if ratio in (1.0, None) else f" (MMA {ratio})"
            extra += "" if _tile(row) == tile else f" at {_tile(row)}"
            cells.append(f"{row['registers']} / {row['spill_bytes']} / {_per_tile(row)}{extra}")
        lines.append(f"| {kernel} | {arch} | {head_dim} | {tile} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
