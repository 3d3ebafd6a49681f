"""The native extension itself: build facts, import without a driver, and its own input checks."""
import numpy as np
import pytest
import torch

from elasticast_kernels.packing import has_native

pytestmark = pytest.mark.skipif(not has_native(), reason="native extension not built")


@pytest.fixture(scope="module")
def ext():
    from elasticast_kernels import _C

    return _C


def gather_args(ext, times=(16, 32), channels=1, freq=16, p=8, elem=4):
    sources = [np.zeros(channels * freq * t * elem, dtype=np.uint8) for t in times]
    tokens = [(freq // p) * (t // p) for t in times]
    cu = np.concatenate([[0], np.cumsum(tokens)]).astype(np.int32)
    total = int(cu[-1])
    return dict(
        sources=sources, cu_seqlens=cu, out=np.zeros(total * channels * p * p * elem, dtype=np.uint8),
        freq_idx=np.zeros(total, np.int32), time_idx=np.zeros(total, np.int32),
        channels=channels, freq=freq, patch=p, elem_size=elem,
    )


def test_cuda_facts_are_reported_without_failing_the_import(ext):
    assert isinstance(ext.has_cuda(), bool)
    reason = ext.cuda_unavailable_reason()
    assert isinstance(reason, str)
    if not torch.cuda.is_available():
        assert reason != ""  # no driver or no device: said, not crashed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_cuda_gather_fails_cleanly_without_a_gpu(ext):
    with pytest.raises(RuntimeError, match="CUDA|without CUDA"):
        ext.pack_patches_cuda(0, 0, 0, 0, 0, 1, 1, 1, 16, 16, 4, 16, 0, 0)


def test_cpu_gather_with_many_threads_matches_single_thread(ext):
    rng = np.random.default_rng(0)
    times = [16 * k for k in (40, 3, 64, 1, 17)]
    args = gather_args(ext, times=times, channels=2, freq=32, p=16, elem=2)
    for s in args["sources"]:
        s[:] = rng.integers(0, 256, size=s.size, dtype=np.uint8)
    outs = []
    for threads in (1, 3, 16):
        args["out"] = np.zeros_like(args["out"])
        ext.pack_patches_cpu(**args, num_threads=threads)
        outs.append(args["out"].copy())
    assert all(np.array_equal(o, outs[0]) for o in outs)
    assert outs[0].any()


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(cu_seqlens=a["cu_seqlens"][:-1].copy()), r"cu_seqlens must have len\(sources\) \+ 1"),
        (lambda a: a["cu_seqlens"].__setitem__(2, a["cu_seqlens"][2] + 1), r"cu_seqlens\[2\] - cu_seqlens\[1\] must be"),
        (lambda a: a.update(out=a["out"][:-4].copy()), "out must hold"),
        (lambda a: a.update(out=a["out"][::2]), "out must be C-contiguous"),
        (lambda a: a.update(freq_idx=a["freq_idx"][:-1].copy()), "freq_idx and time_idx"),
        (lambda a: a.update(time_idx=a["time_idx"].astype(np.int64)), "time_idx: expected items of 4 bytes"),
        (lambda a: a["sources"].__setitem__(1, a["sources"][1][:-4].copy()), r"sources\[1\]"),
        (lambda a: a.update(freq=12), "freq"),
        (lambda a: a.update(patch=0), "patch_size"),
        (lambda a: a.update(channels=0), "channels"),
        # sizes whose products wrap int64 (a wrapped size check would let the gather write out of bounds)
        (lambda a: a.update(channels=2**62 + 1), "must be < 2\\^31"),
        (lambda a: a.update(channels=2**31 - 1, freq=2**31 - 8, elem_size=16), "C \\* F \\* elem_size overflows int64"),
    ],
)
def test_cpu_gather_checks_every_size_before_writing(ext, change, match):
    args = gather_args(ext)
    change(args)
    out_before = args["out"].copy()
    with pytest.raises(ValueError, match=match):
        ext.pack_patches_cpu(**args)
    assert np.array_equal(args["out"], out_before)


def test_cpu_gather_refuses_read_only_output(ext):
    args = gather_args(ext)
    args["out"].setflags(write=False)
    with pytest.raises(ValueError, match="writable"):
        ext.pack_patches_cpu(**args)


@pytest.mark.parametrize("elem, vec_bytes", [(4, 16), (4, 8), (4, 4), (2, 16), (2, 2), (1, 1), (2, 4), (4, 1)])
@pytest.mark.parametrize("channels, p", [(1, 16), (2, 4)])
def test_cuda_kernel_address_math_matches_the_cpu_gather(ext, elem, vec_bytes, channels, p):
    """The CUDA kernel's per-thread indexing (shared header), run on the host, equals the CPU path."""
    if (p * elem) % vec_bytes:
        pytest.skip("copy unit must divide a patch row")
    rng = np.random.default_rng(1)
    times = [p * k for k in (3, 1, 7, 2)]
    args = gather_args(ext, times=times, channels=channels, freq=4 * p, p=p, elem=elem)
    for s in args["sources"]:
        s[:] = rng.integers(0, 256, size=s.size, dtype=np.uint8)
    ext.pack_patches_cpu(**args)
    expected = {k: args[k].copy() for k in ("out", "freq_idx", "time_idx")}
    for k in expected:
        args[k] = np.zeros_like(args[k])
    ext.emulate_cuda_gather(**args, vec_bytes=vec_bytes)
    for k, v in expected.items():
        assert np.array_equal(args[k], v), k


def test_cpu_gather_matches_numpy_layout(ext):
    """Bytes land where the (c, p1, p2) flattening of frequency-major patches says."""
    channels, freq, p, times = 2, 8, 4, (8, 12)
    specs = [np.arange(channels * freq * t, dtype=np.float32).reshape(channels, freq, t) + 1000 * i
             for i, t in enumerate(times)]
    args = gather_args(ext, times=times, channels=channels, freq=freq, p=p, elem=4)
    args["sources"] = [s.reshape(-1).view(np.uint8) for s in specs]
    ext.pack_patches_cpu(**args)
    out = args["out"].view(np.float32).reshape(-1, channels * p * p)
    expected = np.concatenate([
        s.reshape(channels, freq // p, p, s.shape[2] // p, p).transpose(1, 3, 0, 2, 4).reshape(-1, channels * p * p)
        for s in specs
    ])
    assert np.array_equal(out, expected)
