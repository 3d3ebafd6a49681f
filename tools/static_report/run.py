"""Compile the sweep and write ``<stem>.json`` and ``<stem>.md`` (``python -m tools.static_report``,
or ``elasticast-bench --suite static`` in a source checkout).

The stem defaults to ``triton-<version>`` so runs under several Triton versions share one folder.
With ``baseline`` (an earlier report's JSON) the markdown opens with a before/after summary of
the default configurations.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tools.static_report import report, specs, summary
from tools.static_report.compile import CompileError, triton_tools_present


def run(out: Path, tiny: bool = False, baseline: Path | None = None, stem: str | None = None,
        label: str = "", workers: int = 2, defaults_only: bool = False,
        dtypes: tuple[str, ...] = specs.DTYPES) -> tuple[Path, Path]:
    """Build and write the report; returns the JSON and markdown paths.

    Raises:
        RuntimeError: this Triton lacks its NVIDIA tools (cuobjdump), so nothing can be read.
        ValueError: ``baseline`` is not a static report.
    """
    if not triton_tools_present():
        raise RuntimeError("the static report needs triton with its NVIDIA backend tools (cuobjdump)")
    before = None
    if baseline is not None:
        before = json.loads(Path(baseline).read_text())
        if before.get("kind") != "static-kernel-report":
            raise ValueError(f"{baseline} is not a static kernel report")
    built = report.build(specs.all_cases(tiny, defaults_only, dtypes), workers=workers, label=label)
    stem = stem or f"triton-{built['triton']}"
    json_path, md_path = report.write(built, Path(out), stem)
    if before is not None:
        md_path.write_text(summary.before_after(before, built) + "\n" + md_path.read_text())
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    """Command line; exit status 0 written, 1 a compile failed, 2 bad arguments or tools missing."""
    parser = argparse.ArgumentParser(prog="python -m tools.static_report",
                                     description="Static kernel report: compile every kernel config for sm_80/sm_90 "
                                                 "and read its SASS (no GPU needed).")
    parser.add_argument("--out", default="bench-report-static", help="report folder")
    parser.add_argument("--tiny", action="store_true", help="plain default configs at head_dim 64 only (seconds)")
    parser.add_argument("--baseline", default=None, metavar="STATIC.json",
                        help="an earlier static report to summarise before/after against")
    parser.add_argument("--defaults-only", action="store_true", help="only the first candidate of each list")
    parser.add_argument("--dtypes", default=",".join(specs.DTYPES), help="comma-separated (default: fp16,bf16)")
    parser.add_argument("--label", default="", help="a label for the report's title")
    parser.add_argument("--workers", type=int, default=2, help="compile subprocesses (default 2)")
    args = parser.parse_args(argv)
    print("static kernel report (compile-time estimates from SASS; no GPU runs)", file=sys.stderr)
    try:
        json_path, md_path = run(Path(args.out), tiny=args.tiny,
                                 baseline=None if args.baseline is None else Path(args.baseline),
                                 label=args.label, workers=args.workers, defaults_only=args.defaults_only,
                                 dtypes=tuple(args.dtypes.split(",")))
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"static report: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, CompileError) else 2
    print(md_path.read_text())
    print(f"Report written to {json_path.resolve()} and {md_path.resolve()}")
    return 0
