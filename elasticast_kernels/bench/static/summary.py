"""Before/after summary of two static reports: the default configuration of each kernel."""
from __future__ import annotations

KEY_FIELDS = ("kernel", "arch", "dtype", "head_dim", "causal")
# the defaults the summary lists: (kernel, arch, head_dim); bf16, non-causal
SUMMARY_CASES = (
    ("fwd", 90, 64), ("fwd", 90, 128), ("dkdv", 90, 64), ("dkdv", 90, 128), ("dq", 90, 64), ("dq", 90, 128),
    ("preprocess", 90, 64), ("fwd", 80, 64), ("dkdv", 80, 128), ("dq", 80, 128),
    ("_pool_fwd_partial_kernel", 90, 64), ("_pool_bwd_kernel", 90, 64), ("_pool_combine_kernel", 90, 64),
    ("_segment_sum_partial_kernel", 90, 768), ("_segment_mean_bwd_kernel", 90, 768), ("_slot_sum_kernel", 90, 768),
)


def _defaults(report: dict) -> dict[tuple, dict]:
    return {tuple(row[f] for f in KEY_FIELDS): row for row in report["rows"] if row["default"]}


def _cell(row: dict | None) -> str:
    if row is None:
        return "- | - | - | - | -"
    per_tile = row.get("instr_per_tile")
    if per_tile is None:
        per_tile = f"{row['instr_per_iteration']}/iter" if row.get("instr_per_iteration") is not None else "-"
    ratio = "-" if row.get("mma_ratio") is None else row["mma_ratio"]
    tile = f"{row['block_m']}x{row['block_n']} w{row['num_warps']}"
    return f"{tile} | {row['registers']} | {row['spill_bytes']} | {per_tile} | {ratio}"


def before_after(before: dict, after: dict) -> str:
    """Markdown: default tiles before and after (bf16, non-causal), then the busy fractions."""
    old, new = _defaults(before), _defaults(after)
    lines = [f"## Before ({before.get('label') or 'baseline'}) and after, triton {after['triton']}", "",
             "Default configuration, bf16, non-causal. instr/tile: main-loop SASS instructions x warps per"
             " 128x64 tile (pooling: per loop iteration of the CTA).", "",
             "| kernel | sm | d | tile before | regs | spill B | instr/tile | MMA ratio"
             " | tile after | regs | spill B | instr/tile | MMA ratio | instr change |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kernel, arch, head_dim in SUMMARY_CASES:
        key = (kernel, arch, "bf16", head_dim, False)
        a, b = old.get(key), new.get(key)
        if a is None and b is None:
            continue
        change = "-"
        if a and b and a.get("instr_per_tile") and b.get("instr_per_tile"):
            change = f"{100 * (b['instr_per_tile'] / a['instr_per_tile'] - 1):+.1f}%"
        elif a and b and a.get("instr_per_iteration") and b.get("instr_per_iteration"):
            change = f"{100 * (b['instr_per_iteration'] / a['instr_per_iteration'] - 1):+.1f}%"
        lines.append(f"| {kernel} | {arch} | {head_dim} | {_cell(a)} | {_cell(b)} | {change} |")
    lines += ["", "| kernel | causal | workload | busy before | busy after |", "|---|---|---|---|---|"]
    old_sched = {(s["kernel"], s["causal"], s["workload"]): s for s in before["schedules"]}
    for s in after["schedules"]:
        prior = old_sched.get((s["kernel"], s["causal"], s["workload"]))
        prior_busy = "-" if prior is None else f"{prior['busy_fraction']:.3f}"
        lines.append(f"| {s['kernel']} | {'yes' if s['causal'] else 'no'} | {s['workload']} | {prior_busy} |"
                     f" {s['busy_fraction']:.3f} |")
    return "\n".join(lines) + "\n"
