"""PackedAST vs Hugging Face's ASTForAudioClassification: eval on a mixed-length batch.

The same weights run the same clips two ways: ``ASTForAudioClassification`` on what
``ASTFeatureExtractor`` gives it (every clip padded to ``max_length`` = 1024 frames with the
extractor's normalised padding), and `PackedAST` on the unpadded ``[frames, 128]`` features.
Wall time (median of interleaved repeats in one process, so both sides see the same machine
load) and peak memory (each side's first forward in a fresh process: growth of the peak RSS over
the RSS before the call, Linux ``/proc/self/status``) are reported with their ratios.

    python benchmarks/test_bench_packed_ast.py --size audioset --repeats 2 --out DIR
    python benchmarks/test_bench_packed_ast.py --size small --repeats 5
    pytest benchmarks/test_bench_packed_ast.py      # the report's hf_ast cases under pytest-benchmark

Sizes: ``audioset`` is the AudioSet AST (ViT-B: hidden 768, 12 layers, 12 heads, 527 labels);
``small`` a 192-wide, 12-layer AST (3 heads) for quicker CPU runs; ``tiny`` for tests. Weights
are random (the time does not depend on them). Clips: ``--clips`` durations drawn uniformly from
``--seconds`` (default 32 clips of 1-10 s, seed 0), as 16 kHz audio gives frames. Clips,
features and models are those of ``elasticast-bench``'s ``hf_ast`` group
(`elasticast_kernels.bench.groups.hf_ast`), which measures the same comparison in the report.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from elasticast_kernels.bench.groups import hf_ast
from elasticast_kernels.bench.results import environment

SIZES = {  # intermediate size 4 x hidden, as in AST
    "audioset": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "small": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
}
NUM_LABELS = 527


def build_models(size: str, weights: str | None = None):
    """``(hf, packed)`` with the same weights: random, or loaded from ``weights`` (a state dict)."""
    from elasticast_kernels.models import PackedAST

    s = SIZES[size]
    hf, packed = hf_ast.build_models(s["hidden_size"], s["num_hidden_layers"], s["num_attention_heads"], NUM_LABELS,
                                     seed=0, backend="torch")
    if weights is not None:
        hf.load_state_dict(torch.load(weights, weights_only=True))
        packed = PackedAST.from_hf(hf, attention_backend="torch")
    return hf, packed


# --------------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_growth_mib(run) -> float:
    """Peak RSS growth of ``run()`` over the RSS before it, in MiB (Linux: the peak is reset
    through ``/proc/self/clear_refs``)."""
    gc.collect()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS
    run()
    return (_status_kib("VmHWM") - before) / 1024


def _memory_child(side: str, size: str, weights: str, frames: list[int], seed: int) -> None:
    hf, packed = build_models(size, weights)
    clips, padded = hf_ast.make_inputs(frames, seed)
    model, inputs = (hf, padded) if side == "hf" else (packed, clips)
    del hf, packed
    with torch.inference_mode():
        start = time.perf_counter()
        peak = peak_growth_mib(lambda: model(inputs))
        cold = time.perf_counter() - start
    print(json.dumps({"peak_growth_mib": peak, "first_call_s": cold}))


def measure_memory(side: str, size: str, weights: str, frames: list[int], seed: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--memory-child", side, "--size", size,
               "--weights", weights, "--frames", ",".join(map(str, frames)), "--seed", str(seed)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def interleaved_times(runs: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of every call, alternating the sides each repeat (one warm-up call each first)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for run in runs.values():
            run()
        for _ in range(repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
                print(f"  {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    return times


def benchmark(size: str, clips: int, seconds: tuple[float, float], repeats: int, seed: int) -> dict:
    frames = hf_ast.clip_frames(clips, seconds, seed)
    hf, packed = build_models(size)
    hf_clips, padded = hf_ast.make_inputs(frames, seed)
    with torch.inference_mode():  # same weights: a clip of max_length frames gives the same logits
        check = (packed([padded[0]]) - hf(padded[:1]).logits).abs().max().item()
    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "weights.pt")
        torch.save(hf.state_dict(), weights)
        start = time.perf_counter()
        times = interleaved_times({"hf": lambda: hf(padded), "packed": lambda: packed(hf_clips)}, repeats)
        del hf, packed
        gc.collect()
        memory = {side: measure_memory(side, size, weights, frames, seed) for side in ("hf", "packed")}
    padded_tokens, packed_tokens = hf_ast.encoder_tokens(frames)
    hf_s, packed_s = statistics.median(times["hf"]), statistics.median(times["packed"])
    return {
        "size": size, **SIZES[size], "intermediate_size": 4 * SIZES[size]["hidden_size"], "num_labels": NUM_LABELS, "clips": clips, "seconds": list(seconds), "seed": seed,
        "frames": frames, "tokens_padded": padded_tokens, "tokens_packed": packed_tokens, "repeats": repeats,
        "times_s": times, "hf_s": hf_s, "packed_s": packed_s, "speedup": hf_s / packed_s,
        "hf_peak_mib": memory["hf"]["peak_growth_mib"], "packed_peak_mib": memory["packed"]["peak_growth_mib"],
        "memory_ratio": memory["hf"]["peak_growth_mib"] / memory["packed"]["peak_growth_mib"],
        "first_call_s": {side: memory[side]["first_call_s"] for side in memory},
        "max_abs_logit_diff_at_1024_frames": check, "timed_wall_s": time.perf_counter() - start,
    }


def machine() -> dict:
    import transformers

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": environment("cpu")["cpu"], "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "load_average": load}


def summary(report: dict) -> str:
    """The results table with what it was measured on: command, machine, load, duration."""
    m = report["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average"]) if m["load_average"] else "n/a"
    end = ", ".join(f"{x:.2f}" for x in report["load_average_end"]) if report.get("load_average_end") else "n/a"
    return "\n".join([
        table(report["results"]), "",
        f"- command: `{report['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads; torch {m['torch']}, "
        f"transformers {m['transformers']}, Python {m['python']}",
        f"- load average (1, 5, 15 min): {load} at the start, {end} at the end",
        f"- duration: {report['duration_s']:.0f} s",
        "- times: median of interleaved calls in one process; peak memory: growth of the peak RSS of a "
        "fresh process during its first forward", ""])


def table(results: list[dict]) -> str:
    lines = ["| size | clips | tokens padded / packed | HF padded (s) | PackedAST (s) | speed-up | "
             "HF peak MiB | PackedAST peak MiB | memory ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['size']} ({r['hidden_size']}x{r['num_hidden_layers']}) | {r['clips']} x {r['seconds'][0]:g}-"
            f"{r['seconds'][1]:g} s | {r['tokens_padded']} / {r['tokens_packed']} | {r['hf_s']:.2f} | "
            f"{r['packed_s']:.2f} | {r['speedup']:.2f}x | {r['hf_peak_mib']:.0f} | {r['packed_peak_mib']:.0f} | "
            f"{r['memory_ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), action="append")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seconds", type=float, nargs=2, default=(1.0, 10.0))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder for results.json and summary.md")
    parser.add_argument("--memory-child", choices=("hf", "packed"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--frames", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        _memory_child(args.memory_child, args.size[0], args.weights, [int(f) for f in args.frames.split(",")],
                      args.seed)
        return
    started, results = time.time(), []
    report = {"machine": machine(), "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "results": results}
    for size in args.size or ["small"]:  # each size reported as soon as it is done
        results.append(benchmark(size, args.clips, tuple(args.seconds), args.repeats, args.seed))
        report["duration_s"], report["load_average_end"] = time.time() - started, machine()["load_average"]
        print(table(results[-1:]), flush=True)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "results.json"), "w") as handle:
                json.dump(report, handle, indent=1)
            with open(os.path.join(args.out, "summary.md"), "w") as handle:
                handle.write(summary(report))
    print(f"machine: {report['machine']}; duration {report['duration_s']:.0f} s")


# --------------------------------------------------------------------------------------------------
# pytest-benchmark: the report's hf_ast cases (elasticast_kernels.bench.groups.hf_ast; see conftest.py)
# --------------------------------------------------------------------------------------------------
GROUP = "hf_ast"


def test_hf_ast(case, run_case):
    run_case(case)


def test_peak_memory_probe_sees_an_allocation():
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("peak RSS reset needs Linux /proc")
    # in a fresh process, as the benchmark measures: in a long-lived one the allocator may hand
    # back pages already resident from earlier tests, and the RSS would not grow
    probe = ("import sys, torch; sys.path.insert(0, sys.argv[1]); from test_bench_packed_ast import peak_growth_mib; "
             "print(peak_growth_mib(lambda: torch.ones(64 * 2**20 // 4).sum()))")
    done = subprocess.run([sys.executable, "-c", probe, os.path.dirname(os.path.abspath(__file__))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    growth = float(done.stdout.strip().splitlines()[-1])
    assert 48 < growth < 512


if __name__ == "__main__":
    main()
