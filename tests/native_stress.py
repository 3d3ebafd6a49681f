"""Hostile callers of the native extension, run in a child process by tests/test_native_fuzz.py.

    python tests/native_stress.py fuzz [--seed S] [--seconds T]
    python tests/native_stress.py race [--seed S] [--seconds T] [--raw-only]

``fuzz`` calls every ``_C`` entry point with random and adversarial arguments (wrong types and
dtypes, strides, sizes near the int32/int64 limits, empty buffers): each call must either succeed
with the right answer (plans equal to the pure-Python packer, gathers equal to a numpy reference)
or raise TypeError/ValueError naming an argument, writing nothing. ``race`` calls them while other
threads write the input arrays (values the checks would refuse included): a call must never read
what it did not check, so every successful result must be right for the values that were checked.
A crash kills this process (the test then reports the signal); a wrong result raises
AssertionError. Prints ``ok <counts>`` on success.

``EK_STRESS_EXTENSION=/path/to/_C.so`` tests that build of the module instead of the installed
one (with ``race --raw-only``: the raw ``_C`` functions only).
"""
from __future__ import annotations

import argparse
import faulthandler
import importlib.machinery
import importlib.util
import os
import sys
import threading
import time
from collections import Counter
from types import ModuleType
from typing import Any, Callable

import numpy as np

PLANS = ("next_fit", "first_fit_decreasing", "best_fit_decreasing", "best_fit_window", "histogram")
INT32_MAX, INT64_MAX = 2**31 - 1, 2**63 - 1
# Values a length or count must never be trusted with: each would index far outside any table.
HOSTILE_INTS = (0, -1, -(2**40), 2**40, INT32_MAX, 2**31, INT64_MAX, -(2**63))
ARG_NAMES = ("lengths", "max_tokens", "window", "sources", "cu_seqlens", "out", "freq_idx", "time_idx", "channels",
             "freq", "patch_size", "elem_size", "num_threads", "vec_bytes", "C * F", "C * p", "token bytes",
             "total_tokens", "num_segments", "segment_meta", "stream", "device", "tokens of a source",
             "freq_stride", "time_stride")


def load_extension() -> ModuleType:
    path = os.environ.get("EK_STRESS_EXTENSION")
    if not path:
        from elasticast_kernels import _C

        return _C
    spec = importlib.util.spec_from_file_location("_C", path, loader=importlib.machinery.ExtensionFileLoader("_C", path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expect_named_error(call: Callable[[], Any], what: str) -> None:
    """``call`` must raise TypeError/ValueError whose message starts with an argument's name."""
    try:
        call()
    except (TypeError, ValueError) as err:
        message = str(err)
        assert message.startswith(ARG_NAMES) or "cu_seqlens[" in message, f"{what}: unnamed error {message!r}"
        return
    raise AssertionError(f"{what}: accepted")


# --- plans ----------------------------------------------------------------------------------------
def python_plan(strategy: str, lengths: np.ndarray, max_tokens: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    from elasticast_kernels.packing import _fallback

    fn = getattr(_fallback, strategy)
    assignment = fn(lengths, max_tokens, window) if strategy == "best_fit_window" else fn(lengths, max_tokens)
    return _fallback.finalize(*assignment)


def random_lengths(rng: np.random.Generator, max_tokens: int) -> tuple[Any, np.ndarray | None]:
    """(object to pass, its int64 values when a valid int64 buffer, else None)."""
    n = int(rng.integers(0, 40))
    high = max_tokens if rng.random() < 0.8 else min(INT32_MAX, 3 * max_tokens + 2)  # oversize: own packs
    values = rng.integers(1, high + 1, size=n, dtype=np.int64)
    kind = rng.integers(0, 12)
    if kind == 0 and n:  # hostile values
        values[rng.integers(0, n)] = rng.choice(HOSTILE_INTS)
        return values, values
    if kind == 1:  # strided views, reversed and zero strides included
        wide = np.repeat(values, 2)
        view = [wide[::2], values[::-1], np.broadcast_to(values[:1], (n,)) if n else values][int(rng.integers(0, 3))]
        return view, np.array(view)
    if kind == 2:  # another dtype of the same values
        dtype = rng.choice([np.int32, np.uint64, np.float64, np.int8, np.bool_, np.int16, object])
        return values.astype(dtype), None
    if kind == 3:
        return values.reshape(1, -1), None
    if kind == 4:
        return np.int64(max_tokens), None
    if kind == 5:
        return [values.tolist(), None, "lengths", b"\x01" * 8, 3.5][int(rng.integers(0, 5))], None
    if kind == 6:
        return memoryview(values).cast("B").cast("q"), values
    if kind == 7:
        return values.astype(">i8"), None
    return values, values


def random_int(rng: np.random.Generator, valid: int, low: int, high: int) -> tuple[Any, int | None]:
    """(an integer argument, its value when valid else None): mostly ``valid``, else a limit or a
    wrong type."""
    kind = rng.integers(0, 8)
    if kind < 4:
        return valid, valid
    if kind == 4:
        return np.int64(valid), valid  # any __index__ works
    if kind == 5:
        value = int(rng.choice([low, high, low - 1, high + 1, 2**63, 2**64, -(2**64), -(2**63) - 1]))
        return value, value if low <= value <= high else None
    return [float(valid), str(valid), None, True][int(rng.integers(0, 4))], None


def fuzz_plans(ext: ModuleType, rng: np.random.Generator, counts: Counter) -> None:
    strategy = PLANS[int(rng.integers(0, len(PLANS)))]
    max_tokens = int(rng.choice([1, 2, 7, 100, 2**20, INT32_MAX])) if rng.random() < 0.25 else int(rng.integers(1, 300))
    lengths, values = random_lengths(rng, max_tokens)
    mt_arg, max_tokens = random_int(rng, max_tokens, 1, INT32_MAX)
    win_arg, window = random_int(rng, int(rng.integers(1, 12)), 1, INT64_MAX)
    windowed = strategy == "best_fit_window"
    args = (lengths, mt_arg, win_arg) if windowed else (lengths, mt_arg)
    valid = (values is not None and max_tokens is not None and (window is not None or not windowed)
             and bool(np.all((values >= 1) & (values <= INT32_MAX))))
    call = lambda: getattr(ext, strategy)(*args)  # noqa: E731
    if not valid:
        expect_named_error(call, f"{strategy}{tuple(type(a).__name__ for a in args)}")
        counts["plan_refused"] += 1
        return
    order, offsets = call()
    want = python_plan(strategy, np.array(values, dtype=np.int64), max_tokens, window or 1)
    assert order.tolist() == want[0].tolist() and offsets.tolist() == want[1].tolist(), strategy
    counts["plan_ok"] += 1


# --- gathers --------------------------------------------------------------------------------------
def reference_gather(specs: list[np.ndarray], p: int, stride_f: int, stride_t: int) -> np.ndarray:
    """Patch (f, t) of a [C, F, T] source is spec[:, f*stride_f : +p, t*stride_t : +p] flattened
    (c, p1, p2); frequency-major, time fastest."""
    rows = [spec[:, f:f + p, t:t + p].reshape(-1)
            for spec in specs
            for f in range(0, spec.shape[1] - p + 1, stride_f)
            for t in range(0, spec.shape[2] - p + 1, stride_t)]
    return np.stack(rows) if rows else np.zeros((0, 1), np.uint8)


def gather_case(rng: np.random.Generator, segments: int | None = None, max_time: int = 4,
                geometry: tuple[int, int, int, int] | None = None, strided: bool | None = None) -> tuple[dict, dict]:
    """Valid pack_patches_cpu arguments (random bytes) and the expected outputs. ``geometry``:
    (channels, freq, patch, elem_size), random when None; ``strided``: patches every (stride_f,
    stride_t) elements (overlapping or gapped; random when None) instead of the patch size."""
    if geometry is None:
        p = int(rng.choice([1, 2, 4, 8]))
        geometry = (int(rng.integers(1, 4)), p * int(rng.integers(1, 4)), p, int(rng.choice([1, 2, 4, 8, 16])))
    channels, freq, p, elem = geometry
    strided = bool(rng.random() < 0.4) if strided is None else strided
    stride_f, stride_t = (int(rng.integers(1, 2 * p + 2)), int(rng.integers(1, 2 * p + 2))) if strided else (p, p)
    if stride_f != p:
        freq += int(rng.integers(0, stride_f))  # frames past the last patch are left out, as Conv2d does
    count = int(rng.integers(0, 6)) if segments is None else segments

    def frames(patches: int) -> int:
        if patches == 0:
            return 0
        return p + stride_t * (patches - 1) + (int(rng.integers(0, stride_t)) if stride_t != p else 0)

    times = [frames(int(rng.integers(0, max_time + 1))) for _ in range(count)]
    # elements are `elem` bytes wide: a trailing axis of bytes keeps the numpy reference dtype-free
    specs = [rng.integers(0, 256, size=(channels, freq, t, elem), dtype=np.uint8) for t in times]
    freq_patches = (freq - p) // stride_f + 1
    time_patches = [(t - p) // stride_t + 1 if t >= p else 0 for t in times]
    tokens = [freq_patches * n for n in time_patches]
    cu = np.concatenate([[0], np.cumsum(tokens)]).astype(np.int32)
    total = int(cu[-1])
    # the reference works on whole elements: each element's bytes viewed as one opaque item
    item = np.dtype((np.void, elem))
    as_items = [np.ascontiguousarray(s).view(item).reshape(channels, freq, -1) for s in specs]
    expected_out = reference_gather(as_items, p, stride_f, stride_t) if total else np.zeros((0, channels * p * p), item)
    positions = [(np.repeat(np.arange(freq_patches), n), np.tile(np.arange(n), freq_patches)) for n in time_patches]
    expected = dict(
        out=np.ascontiguousarray(expected_out).view(np.uint8).reshape(-1) if total else np.zeros(0, np.uint8),
        freq_idx=np.concatenate([f for f, _ in positions]).astype(np.int32) if count else np.zeros(0, np.int32),
        time_idx=np.concatenate([t for _, t in positions]).astype(np.int32) if count else np.zeros(0, np.int32),
    )
    args = dict(sources=[s.reshape(-1) for s in specs], cu_seqlens=cu,
                out=np.full(total * channels * p * p * elem, 0xA5, np.uint8), freq_idx=np.full(total, -7, np.int32),
                time_idx=np.full(total, -7, np.int32), channels=channels, freq=freq, patch=p, elem_size=elem)
    if strided or rng.random() < 0.2:  # the default (None) and an explicit stride == p are the same
        args.update(freq_stride=stride_f, time_stride=stride_t)
    return args, expected


def _one_patch_stride(args: dict) -> int:
    """A time stride that gives every source one time patch: a token count cu_seqlens disagrees
    with whenever some source had two or more (0, itself refused, otherwise)."""
    row = args["channels"] * args["freq"] * args["elem_size"]
    frames = [len(s) // row for s in args["sources"] if len(s)]
    stride, p = args.get("time_stride", args["patch"]), args["patch"]
    return max(frames) + 1 if any((t - p) // stride >= 1 for t in frames) else 0


def corrupt_gather(args: dict, rng: np.random.Generator) -> str:
    """Make one argument invalid in place; returns what was done."""
    cu, n = args["cu_seqlens"], len(args["sources"])
    choices: list[tuple[str, Callable[[], None]]] = [
        ("cu_seqlens hostile value", lambda: cu.__setitem__(int(rng.integers(0, n + 1)),
                                                            int(rng.choice([-(2**31), -1, 2**30, INT32_MAX])))),
        ("cu_seqlens too short", lambda: args.update(cu_seqlens=cu[:-1].copy())),
        ("cu_seqlens too long", lambda: args.update(cu_seqlens=np.append(cu, cu[-1]))),
        ("cu_seqlens int64", lambda: args.update(cu_seqlens=cu.astype(np.int64))),
        ("cu_seqlens list", lambda: args.update(cu_seqlens=cu.tolist())),
        ("out one byte short", lambda: args.update(out=np.zeros(max(args["out"].size - 1, 0), np.uint8))
         if args["out"].size else args.update(out=np.zeros(1, np.uint8))),
        ("out read-only", lambda: args["out"].setflags(write=False)),
        ("out strided", lambda: args.update(out=np.zeros(2 * args["out"].size + 4, np.uint8)[::2])),
        ("freq_idx int64", lambda: args.update(freq_idx=args["freq_idx"].astype(np.int64))),
        ("time_idx one short", lambda: args.update(time_idx=np.zeros(max(args["time_idx"].size - 1, 0), np.int32))
         if args["time_idx"].size else args.update(time_idx=np.zeros(1, np.int32))),
        ("sources not a list", lambda: args.update(sources=None)),
        ("a source is not a buffer", lambda: args.update(sources=[*args["sources"], object()])),
        ("a source of 4-byte items", lambda: args.update(sources=[*args["sources"], np.zeros(4, np.float32)])),
        ("channels", lambda: args.update(channels=int(rng.choice([0, -1, 2**31, 2**63, 2**64])))),
        ("freq", lambda: args.update(freq=int(rng.choice([0, -1, 2**31, -(2**63) - 1])))),
        ("patch", lambda: args.update(patch=int(rng.choice([0, -3, 2**31, 2**64])))),
        ("elem_size", lambda: args.update(elem_size=int(rng.choice([0, 17, 2**62, -(2**63)])))),
        ("near int64: C * F * elem", lambda: args.update(channels=INT32_MAX, freq=INT32_MAX, patch=1, elem_size=16)),
        ("a float size", lambda: args.update(channels=float(args["channels"]))),
        ("freq_stride", lambda: args.update(freq_stride=int(rng.choice([0, -1, 2**31, 2**64])))),
        ("time_stride", lambda: args.update(time_stride=[0, -5, 2**63, "2", 1.0][int(rng.integers(0, 5))])),
        ("time_stride that disagrees with cu_seqlens", lambda: args.update(time_stride=_one_patch_stride(args))),
    ]
    name, apply = choices[int(rng.integers(0, len(choices)))]
    apply()
    return name


def fuzz_gathers(ext: ModuleType, rng: np.random.Generator, counts: Counter) -> None:
    args, expected = gather_case(rng)
    emulate = rng.random() < 0.3
    elem = args["elem_size"]
    # the copy unit divides a patch row, the time step and every source row (as on the device)
    steps = [args["patch"] * elem, args.get("time_stride", args["patch"]) * elem] + [len(s) // (
        args["channels"] * args["freq"]) for s in args["sources"] if len(s)]
    vec_bytes = int(rng.choice([v for v in (1, 2, 4, 8, 16) if all(step % v == 0 for step in steps)]))
    fn = ext.emulate_cuda_gather if emulate else ext.pack_patches_cpu
    extra = {"vec_bytes": vec_bytes} if emulate else {"num_threads": int(rng.integers(0, 4))}
    if rng.random() < 0.15:  # benign variations: any sequence, any stride for cu_seqlens
        args["sources"] = tuple(args["sources"])
        args["cu_seqlens"] = np.repeat(args["cu_seqlens"], 2)[::2]
    if rng.random() < 0.6:
        what = corrupt_gather(args, rng)
        outputs = {k: np.array(args[k], copy=True) for k in ("out", "freq_idx", "time_idx")
                   if isinstance(args[k], np.ndarray)}
        expect_named_error(lambda: fn(**args, **extra), what)
        for k, before in outputs.items():
            assert np.array_equal(args[k], before), f"{what}: {k} was written before the error"
        counts["gather_refused"] += 1
        return
    fn(**args, **extra)
    for k, v in expected.items():
        assert np.array_equal(args[k], v), f"gather wrote a wrong {k}"
    counts["gather_ok"] += 1


def fuzz_cuda_host_checks(ext: ModuleType, rng: np.random.Generator, counts: Counter) -> None:
    """pack_patches_cuda's host checks: bad arguments are named; good ones reach the CUDA call only
    where no device can run it (so no fake address is ever handed to a real GPU)."""
    args = dict(out=4096, freq_idx=8192, time_idx=12288, segment_meta=16384, cu_seqlens=20480, num_segments=2,
                total_tokens=6, channels=1, freq=16, patch=8, elem_size=4, vec_bytes=16, stream=0, device=0,
                freq_stride=None, time_stride=None)
    if rng.random() < 0.1:
        if ext.cuda_unavailable_reason():  # no device: valid arguments get as far as the CUDA call
            try:
                ext.pack_patches_cuda(**args)
            except RuntimeError:
                counts["cuda_no_device"] += 1
                return
            raise AssertionError("pack_patches_cuda ran without a usable device")
        return
    bad_values: dict[str, list[Any]] = {
        "num_segments": [0, -1, 2**31, 2**64, None, 1.0],
        "total_tokens": [-1, 2**31, 2**63, None, 2.0],
        "channels": [0, -1, 2**31, 2**64, None, 1.0],
        "freq": [0, 12, -(2**63) - 1, 2**31, None],
        "patch": [0, 3, 32, 2**31, "8"],
        "elem_size": [0, 17, 3, 2**64, None],
        "vec_bytes": [0, 3, 32, 2**64, None],
        "stream": [-1, 2**64, None, "0"],
        "device": [-1, 2**31, None, 1.0],
        "freq_stride": [0, -1, 2**31, 2.0, "4"],
        "time_stride": [0, 3, 2**64, True],  # 3: 12-byte steps, no 16-byte copy unit
    }
    name = list(args)[int(rng.integers(0, len(args)))]
    bad = bad_values[name] if name in bad_values else [None, "1", 1.0, -1, 2**64, 0, args[name] + 2]  # addresses
    args[name] = bad[int(rng.integers(0, len(bad)))]
    expect_named_error(lambda: ext.pack_patches_cuda(**args), f"pack_patches_cuda({name}={args[name]!r})")
    counts["cuda_refused"] += 1


def run_fuzz(ext: ModuleType, seed: int, seconds: float) -> Counter:
    rng = np.random.default_rng(seed)
    counts: Counter = Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for fuzz in (fuzz_plans, fuzz_plans, fuzz_gathers, fuzz_cuda_host_checks):
            fuzz(ext, rng, counts)
    # extremes that a random draw rarely hits
    empty = np.zeros(0, np.int64)
    for strategy in PLANS:
        order, offsets = getattr(ext, strategy)(empty, 8)
        assert order.size == 0 and offsets.tolist() == [0]
        expect_named_error(lambda: getattr(ext, strategy)(np.broadcast_to(np.int64(1), (2**31,)), 8), "2^31 lengths")
    return counts


# --- races ----------------------------------------------------------------------------------------
class Mutators:
    """Threads that keep writing `array` while the main thread calls the extension: single items
    toggled between a good value and a hostile one (item writes hold the GIL, so they land while
    native code runs without it), and whole-array copies (which numpy may run without the GIL)."""

    def __init__(self, array: np.ndarray, hostile: list[int], seed: int, threads: int = 2) -> None:
        self.array, self.hostile, self.stop = array, hostile, threading.Event()
        self.good = array.copy()
        self.threads = [threading.Thread(target=self._toggle, args=(seed + k,), daemon=True) for k in range(threads)]
        self.threads.append(threading.Thread(target=self._copy, daemon=True))

    def _toggle(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        array, good, n = self.array, self.good, len(self.array)
        while not self.stop.is_set():
            index = rng.integers(0, n, size=64).tolist()
            bad = rng.choice(self.hostile, size=64).tolist()
            for i, b in zip(index, bad):
                array[i] = b
                array[i] = good[i]

    def _copy(self) -> None:
        hostile = np.resize(np.asarray(self.hostile, dtype=self.array.dtype), self.array.shape)
        while not self.stop.is_set():
            self.array[:] = hostile
            self.array[:] = self.good
            time.sleep(0.0005)

    def __enter__(self) -> "Mutators":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        self.array[:] = self.good


class Budget:
    """`seconds` of calls, extended (up to 4x) until `minimum` calls have succeeded, so a slow
    machine still checks some results instead of seeing only refusals."""

    def __init__(self, seconds: float, minimum: int = 3) -> None:
        now = time.monotonic()
        self.soft, self.hard, self.minimum, self.ok = now + seconds, now + 4 * seconds, minimum, 0

    def more(self) -> bool:
        now = time.monotonic()
        return now < self.soft or (self.ok < self.minimum and now < self.hard)


def race_plans(ext: ModuleType, rng: np.random.Generator, seconds: float, counts: Counter) -> None:
    """Every hostile value is invalid, so a call that succeeds saw only the good values: its plan
    must be exactly the plan of the good values."""
    max_tokens = 2048
    lengths = rng.integers(100, max_tokens + 1, size=200_000).astype(np.int64)
    hostile = [-(2**40), 2**40, -(2**62), INT32_MAX + 1, 0]
    for strategy in PLANS:
        want = getattr(ext, strategy)(lengths.copy(), max_tokens)
        budget = Budget(seconds)
        with Mutators(lengths, hostile, int(rng.integers(1 << 30))):
            while budget.more():
                try:
                    got = getattr(ext, strategy)(lengths, max_tokens)
                except ValueError as err:
                    assert str(err).startswith("lengths["), err
                    counts[f"{strategy}_refused"] += 1
                    continue
                assert all(np.array_equal(a, b) for a, b in zip(got, want)), f"{strategy}: a plan of unchecked values"
                counts[f"{strategy}_ok"] += 1
                budget.ok += 1


def race_gather(ext: ModuleType, rng: np.random.Generator, seconds: float, counts: Counter, emulate: bool) -> None:
    # many rows: a call lasts long enough to be raced
    args, expected = gather_case(np.random.default_rng(int(rng.integers(1 << 30))), segments=48,
                                 max_time=4 if emulate else 40, geometry=(1, 64, 4, 4))
    sources = list(args["sources"])
    args["sources"] = sources
    cu = args["cu_seqlens"]
    hostile = [2**30, -(2**30), INT32_MAX, -(2**31)]
    fn = ext.emulate_cuda_gather if emulate else ext.pack_patches_cpu
    extra = {"vec_bytes": 1} if emulate else {"num_threads": 2}
    stop = threading.Event()

    def shuffle_list() -> None:  # the sequence itself changes length and content during calls
        spare = np.zeros(16, np.uint8)
        while not stop.is_set():
            sources.append(spare)
            sources.pop()

    shuffler = threading.Thread(target=shuffle_list, daemon=True)
    shuffler.start()
    budget = Budget(seconds)
    name = "emulate" if emulate else "gather"
    try:
        with Mutators(cu, hostile, int(rng.integers(1 << 30))):
            while budget.more():
                try:
                    fn(**args, **extra)
                except ValueError as err:
                    assert str(err).startswith(("cu_seqlens", "out", "freq_idx", "time_idx")), err
                    counts[f"{name}_refused"] += 1
                    continue
                for k, v in expected.items():
                    assert np.array_equal(args[k], v), f"{name} under a race wrote a wrong {k}"
                counts[f"{name}_ok"] += 1
                budget.ok += 1
    finally:
        stop.set()
        shuffler.join()


def race_pack_lengths(rng: np.random.Generator, seconds: float, counts: Counter) -> None:
    """The public planner: a plan it returns is the plan of the good values, and stays valid for
    its own lengths whatever the caller's array goes through afterwards."""
    from elasticast_kernels.packing import pack_lengths

    lengths = rng.integers(100, 2049, size=100_000).astype(np.int64)
    for strategy in PLANS:
        for backend in ("native", "python") if strategy == "next_fit" else ("native",):
            want = pack_lengths(lengths.copy(), 2048, strategy, backend=backend).order
            budget = Budget(seconds)
            with Mutators(lengths, [-(2**40), 2**40, 0, INT32_MAX + 1], int(rng.integers(1 << 30))):
                while budget.more():
                    try:
                        plan = pack_lengths(lengths, 2048, strategy, backend=backend)
                    except ValueError as err:
                        assert str(err).startswith("lengths["), err
                        counts[f"pack_lengths_{strategy}_refused"] += 1
                        continue
                    assert np.array_equal(plan.order, want), f"pack_lengths {strategy}: a plan of unchecked values"
                    plan.validate()
                    counts[f"pack_lengths_{strategy}_ok"] += 1
                    budget.ok += 1


def run_race(ext: ModuleType, seed: int, seconds: float, raw_only: bool) -> Counter:
    rng = np.random.default_rng(seed)
    counts: Counter = Counter()
    share = seconds / (len(PLANS) + 2 + (0 if raw_only else len(PLANS) + 1))
    race_plans(ext, rng, share, counts)
    race_gather(ext, rng, share, counts, emulate=False)
    race_gather(ext, rng, share, counts, emulate=True)
    if not raw_only:
        race_pack_lengths(rng, share, counts)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("fuzz", "race"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--raw-only", action="store_true", help="race: only the _C functions")
    opts = parser.parse_args()
    faulthandler.enable()  # a crash prints where it happened
    sys.setswitchinterval(1e-4)  # hand the GIL over often, so mutations land between any two steps
    ext = load_extension()
    if opts.mode == "fuzz":
        counts = run_fuzz(ext, opts.seed, opts.seconds)
    else:
        counts = run_race(ext, opts.seed, opts.seconds, opts.raw_only)
    print("ok", dict(sorted(counts.items())), flush=True)


if __name__ == "__main__":
    main()
