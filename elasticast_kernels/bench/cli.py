"""``elasticast-bench``: run a benchmark suite and write the report, or compare two reports.

Examples::

    elasticast-bench --suite quick                      # whatever device is present
    elasticast-bench --suite full --device cuda --out results/h100
    elasticast-bench --group attention --workload epic  # one group, one workload
    elasticast-bench --compare old/results.json new/results.json
    elasticast-bench --suite static --out results/static   # compile-time kernel report, no GPU needed

Exit status: 0 all cases ran (some may be skipped as unavailable), 1 a case failed,
2 bad arguments or unreadable files, 3 the run was cut short (time budget or interrupt).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from elasticast_kernels.bench.workloads import WORKLOADS

DEFAULT_OUT = "bench-report"
# What a run takes, as measured (suite, device kind) -> text; said before the run starts.
EXPECTED_DURATION = {
    ("quick", "cpu"): "about 2-3 minutes on a quiet 2-core CPU (measured: 2 min 6 s with load average 1.6), "
                      "less with more cores, more when other processes are running",
    ("full", "cpu"): "not timed yet on a CPU: five workloads and every baseline, several times the quick suite",
    ("quick", "cuda"): "not timed yet on a GPU (no GPU machine has run it): a few minutes expected",
    ("full", "cuda"): "about 8 minutes on an H100 by the GPU script's budget (not timed yet)",
}
TINY_DURATION = "a few seconds (tiny sizes; the figures mean nothing)"


def _parser() -> argparse.ArgumentParser:
    from elasticast_kernels.bench.config import GROUPS, SUITES

    from elasticast_kernels import __version__

    p = argparse.ArgumentParser(prog="elasticast-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"elasticast-kernels {__version__}")
    p.add_argument("--suite", choices=SUITES, default="quick",
                   help="quick (minutes), full, or static (compile every kernel config, read SASS; no GPU)")
    p.add_argument("--workload", choices=WORKLOADS, default=None,
                   help="run only this workload (default: voxceleb for quick, all for full)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when present, else cpu")
    p.add_argument("--group", action="append", choices=GROUPS, default=None,
                   help="run only this group (repeatable; default: all)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"report folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new tasks after this many seconds (the rest are listed as skipped)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (seconds; for tests and smoke checks)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--baseline", default=None, metavar="STATIC.json",
                   help="static suite: an earlier static report to summarise before/after against")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="print the change from A to B and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from elasticast_kernels.bench import report as report_mod

    if args.compare:
        try:
            a, b = (report_mod.load(path) for path in args.compare)
        except ValueError as exc:
            print(f"elasticast-bench: {exc}", file=sys.stderr)
            return 2
        print(report_mod.compare(a, b, "A", "B"))
        return 0

    if args.suite == "static":
        return _static(args)

    # Benchmarks time the CPU torch paths, never the Triton interpreter.
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    from elasticast_kernels.bench import runner
    from elasticast_kernels.bench.config import make_config, tiny_config
    from elasticast_kernels._optional import import_optional
    from elasticast_kernels.bench.results import load_average

    try:
        cfg = make_config(args.suite, args.device, args.workload, args.seed)
    except ValueError as exc:
        print(f"elasticast-bench: {exc}", file=sys.stderr)
        return 2
    if args.tiny:
        cfg = replace(tiny_config(cfg.device), workloads=cfg.workloads[:1] if args.workload is None else cfg.workloads,
                      seed=args.seed)
    if args.group:
        cfg = replace(cfg, groups=tuple(dict.fromkeys(args.group)))
    if not cfg.is_cuda and not args.tiny:
        # Process-wide and permanent, so only for a real run, not the in-process tiny smoke tests.
        from elasticast_kernels.bench.timing import precise_cpu_memory

        precise_cpu_memory()
    label = "GPU" if cfg.is_cuda else "CPU (reference torch paths; no GPU kernels are timed)"
    expected = TINY_DURATION if args.tiny else EXPECTED_DURATION[(cfg.suite, "cuda" if cfg.is_cuda else "cpu")]
    load = load_average()
    print(f"elasticast-bench: {cfg.suite} suite on {label}, workloads {', '.join(cfg.workloads)}\n"
          f"  expected duration: {expected}" + (f"; budget {args.budget_s:.0f} s" if args.budget_s is not None else "")
          + f"\n  machine: {os.cpu_count()} CPUs, load average now "
          + (f"{load[0]:.2f}" if load else "unknown"), file=sys.stderr)
    report = runner.run(cfg, progress=not args.no_progress, budget_s=args.budget_s)
    out = Path(args.out)
    path, plots = runner.write(report, out, plots=not args.no_plots)
    print(report_mod.format_table(report))
    errors = [r for r in report["results"] if r["status"] == "error"]
    print(f"\nReport written to {path.resolve()}" + (f" (+ {len(plots)} plots in {out.resolve()})" if plots else "")
          + f"; took {report_mod.duration_text(report['duration_s'])}")
    if not args.no_plots and not plots:
        try:
            import_optional("matplotlib", "the report's plots")
        except ImportError as exc:
            print(f"elasticast-bench: no plots: {exc}", file=sys.stderr)
    cut = [r for r in report["results"] if r["name"] == "task" and r["status"] == "skipped"]
    if errors:
        print(f"elasticast-bench: {len(errors)} case(s) failed; see 'status' above and in {path}", file=sys.stderr)
        return 1
    if cut:
        print(f"elasticast-bench: INCOMPLETE, {len(cut)} task(s) not run ({cut[0]['reason']})", file=sys.stderr)
        return 3
    return 0


def _source_checkout() -> Path | None:
    """The repository root when this package runs from a source checkout that has ``tools/static_report``."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "tools" / "static_report" / "run.py").exists() else None


def _static(args: argparse.Namespace) -> int:
    """The static kernel report, which lives in ``tools/static_report`` of a source checkout (it
    compiles that checkout's kernels; it is not installed). ``--tiny``: default configs at head_dim 64."""
    root = _source_checkout()
    if root is None:
        print("elasticast-bench: the static suite runs from a source checkout (tools/static_report, not "
              "installed with the package): clone the repository, `pip install -e .` and run it there, or "
              "`python -m tools.static_report` from the repository root", file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tools.static_report.run import main as static_main

    out = args.out if args.out != DEFAULT_OUT else f"{DEFAULT_OUT}-static"
    argv = ["--out", out] + (["--tiny"] if args.tiny else []) + (["--baseline", args.baseline] if args.baseline else [])
    return static_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
