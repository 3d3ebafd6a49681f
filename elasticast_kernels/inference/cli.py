"""``elasticast-predict``: classify audio files with a saved model or a training checkpoint.

    elasticast-predict ckpt/last.pt clip.wav                       # JSON lines on stdout
    elasticast-predict model.pt clips.csv --format csv --output scores.csv --top-k 3
    elasticast-predict model.pt long.flac --long window --plot long.png
    elasticast-predict model.pt a.wav b.flac --embeddings emb.npy   # row i: the i-th output line

INPUT is an audio file (anything libsndfile reads, any rate, any channel count) or a manifest
(.csv / .jsonl / .json with a ``path`` column, paths relative to the manifest). Output: one JSON
object per usable file and line (``path``, ``duration_s``, ``top``: ``[{"label", "score"}]``, and
in window mode ``windows``: ``[{"start_s", "end_s", "top"}]``), or one CSV row per file.

Exit status: 0 when every input was scored (or, with ``--skip-bad``, when the unusable ones were
skipped and at least one was scored); 1 when an input could not be used (each is named on stderr
with the reason; every other input still gets its line); 2 for a bad command line, checkpoint or
output path (nothing is scored); 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import IO, Iterator

from elasticast_kernels._optional import import_optional
from elasticast_kernels.inference.engine import LONG_MODES, Predictor
from elasticast_kernels.inference.listing import BadLine, expand_inputs, is_manifest, read_manifest
from elasticast_kernels.inference.plot import plot_windows
from elasticast_kernels.inference.writers import CsvWriter, EmbeddingWriter, JsonLinesWriter
from elasticast_kernels.serialization import CheckpointError

EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _UsageError(Exception):
    """Something wrong before any input is scored: message for stderr, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elasticast-predict", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a model file (saved_model.save_model) or a training checkpoint with a model card")
    parser.add_argument("inputs", metavar="INPUT", nargs="+", help="audio files and/or manifests (.csv, .jsonl, .json)")
    parser.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="labels per file (default 5)")
    parser.add_argument("--format", choices=("json", "csv"), default="json",
                        help="json: one object per line, with windows in window mode; csv: one row per file (default json)")
    parser.add_argument("--output", "-o", metavar="PATH", help="write here instead of stdout")
    parser.add_argument("--embeddings", metavar="PATH.npy",
                        help="also write the pooled embeddings, float32 [files, dim], row i for output line i")
    parser.add_argument("--max-tokens", type=_positive_int, default=4096, metavar="N",
                        help="token budget of one forward; bounds memory (default 4096; a longer file gets a forward of its own)")
    parser.add_argument("--long", choices=LONG_MODES, default="window",
                        help="window (default): overlapping windows, file score = mean of window scores; whole: one sequence per file")
    parser.add_argument("--window", type=_positive_float, metavar="SECONDS",
                        help="window length (default: the longest clip the model was built for, from its time positional table)")
    parser.add_argument("--hop", type=_positive_float, metavar="SECONDS", help="seconds between window starts (default: window / 2)")
    parser.add_argument("--plot", metavar="PATH.png",
                        help="draw the top classes' window scores over time (window mode; several inputs: PATH-0001-NAME.png, ...)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unusable inputs (each listed on stderr) and exit 0 if any input was scored")
    parser.add_argument("--device", default="auto", metavar="DEV", help="auto (default: CUDA if available), cpu, cuda or cuda:N")
    return parser


def _positive(convert, what: str):
    """An argparse type: ``convert(text)``, refused unless finite and > 0."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}")
        return value
    return parse


_positive_int, _positive_float = _positive(int, "integer"), _positive(float, "number of seconds")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plot and args.long != "window":
        parser.error("--plot draws window scores: it needs --long window")
    if (args.window is not None or args.hop is not None) and args.long != "window":
        parser.error("--window and --hop apply to --long window only")
    try:
        return _run(args)
    except _UsageError as error:
        print(f"elasticast-predict: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("elasticast-predict: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _load(args) -> Predictor:
    try:  # missing extras fail before the model loads, naming the extra to install
        import_optional("soundfile", "reading audio files")
        import_optional("soxr", "resampling audio")
        if args.plot:
            import_optional("matplotlib.figure", "drawing window scores (--plot)")
        return Predictor.from_file(args.checkpoint, device=args.device, max_tokens=args.max_tokens, long=args.long,
                                   window_s=args.window, hop_s=args.hop)
    except FileNotFoundError:
        raise _UsageError(f"checkpoint not found: {args.checkpoint}") from None
    except (CheckpointError, ValueError, TypeError, ImportError) as error:
        raise _UsageError(_one_line(str(error))) from None


def _one_line(message: str, limit: int = 300) -> str:
    """The first line of ``message``, at most ``limit`` characters: torch's unpickling errors run
    to paragraphs of advice that does not apply to a corrupt file."""
    first = message.strip().splitlines()[0] if message.strip() else message
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "...)"


def _open_output(path: str | None) -> IO[str]:
    if path is None:
        return sys.stdout
    try:
        return open(path, "w", newline="", encoding="utf-8")
    except OSError as error:
        raise _UsageError(f"cannot write --output {path}: {error.strerror or error}") from None


def _check_writable(option: str, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise _UsageError(f"{option} {path} is a directory")
    if not os.path.isdir(folder):
        raise _UsageError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise _UsageError(f"{option} {path}: the folder {folder} is not writable")


def _count_inputs(inputs: list[str]) -> int:
    return sum(sum(1 for _ in read_manifest(item)) if is_manifest(item) else 1 for item in inputs)


def _run(args) -> int:
    for option, path in (("--output", args.output), ("--embeddings", args.embeddings), ("--plot", args.plot)):
        if path:
            _check_writable(option, path)
    predictor = _load(args)
    from tqdm.auto import tqdm

    total = _count_inputs(args.inputs)
    progress = tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True,
                    disable=True if total < 2 else None)  # None: shown on a terminal only
    failures: list[str] = []

    def report(source: str, reason: str) -> None:
        failures.append(source)
        progress.write(f"{'skipped' if args.skip_bad else 'error'}: {source}: {reason}", file=sys.stderr)
        progress.update()

    def paths() -> Iterator[str]:
        for item in expand_inputs(args.inputs):
            if isinstance(item, BadLine):
                report(f"{item.manifest}" + (f" line {item.line}" if item.line else ""), item.reason)
            else:
                yield item

    output = _open_output(args.output)
    embeddings = EmbeddingWriter(args.embeddings) if args.embeddings else None
    writer = (CsvWriter(output, args.top_k, len(predictor.classes)) if args.format == "csv"
              else JsonLinesWriter(output, args.top_k))
    scored = 0
    completed = False
    try:
        for prediction in predictor.predict(paths(), embeddings=embeddings is not None, on_error="return"):
            if not prediction.ok:
                report(prediction.source, prediction.error)
                continue
            writer.write(prediction)
            output.flush()
            if embeddings is not None:
                embeddings.write(prediction.embedding)
            if args.plot:
                plot_windows(prediction, _plot_path(args.plot, scored, prediction.source, total),
                             top=args.top_k, multi_label=predictor.card.multi_label)
            scored += 1
            progress.update()
        completed = True
    except OSError as error:  # the output went away mid-run (disk full, pipe closed)
        raise _UsageError(f"writing the results failed: {error}") from None
    finally:
        progress.close()
        if output is not sys.stdout:
            output.close()
        if embeddings is not None:
            embeddings.close() if completed else embeddings.discard()
    return _summary(failures, scored, args.skip_bad)


def _plot_path(path: str, index: int, source: str, total: int) -> str:
    if total < 2:
        return path
    stem, suffix = os.path.splitext(path)
    name = os.path.splitext(os.path.basename(source))[0]
    return f"{stem}-{index + 1:04d}-{name}{suffix or '.png'}"


def _summary(failures: list[str], scored: int, skip_bad: bool) -> int:
    if not failures:
        return EXIT_OK
    what = "skipped" if skip_bad else "could not be used"
    print(f"elasticast-predict: {len(failures)} input(s) {what} (listed above); {scored} scored", file=sys.stderr)
    if skip_bad and scored > 0:
        return EXIT_OK
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
