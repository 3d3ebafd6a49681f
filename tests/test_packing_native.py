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


def gather_args(ext, times=(16, 32), channels=1, freq=16, p=8, elem=4, stride=None):
    """Valid gather arguments (zero bytes); ``stride``: None (= p) or (stride_f, stride_t)."""
    stride_f, stride_t = stride or (p, p)
    sources = [np.zeros(channels * freq * t * elem, dtype=np.uint8) for t in times]
    tokens = [((freq - p) // stride_f + 1) * ((t - p) // stride_t + 1) for t in times]
    cu = np.concatenate([[0], np.cumsum(tokens)]).astype(np.int32)
    total = int(cu[-1])
    strides = {} if stride is None else dict(freq_stride=stride_f, time_stride=stride_t)
    return dict(
        sources=sources, cu_seqlens=cu, out=np.zeros(total * channels * p * p * elem, dtype=np.uint8),
        freq_idx=np.zeros(total, np.int32), time_idx=np.zeros(total, np.int32),
        channels=channels, freq=freq, patch=p, elem_size=elem, **strides,
    )


def strided_reference(spec: np.ndarray, p: int, stride_f: int, stride_t: int) -> np.ndarray:
    """[C, F, T] -> [F' * T', C*p*p]: patch (f, t) is spec[:, f*stride_f : +p, t*stride_t : +p], flattened
    (c, p1, p2), frequency-major (time fastest). Written as loops, to trust at a glance."""
    channels, freq, time = spec.shape
    rows = []
    for f in range(0, freq - p + 1, stride_f):
        for t in range(0, time - p + 1, stride_t):
            rows.append(spec[:, f:f + p, t:t + p].reshape(-1))
    return np.stack(rows)


def cuda_args(**changes):
    """Arguments of pack_patches_cuda that pass every host-side check (addresses are fake)."""
    args = dict(out=4096, freq_idx=8192, time_idx=12288, segment_meta=16384, cu_seqlens=20480, num_segments=2,
                total_tokens=6, channels=1, freq=16, patch=8, elem_size=4, vec_bytes=16, stream=0, device=0)
    args.update(changes)
    return args


def test_cuda_facts_are_reported_without_failing_the_import(ext):
    assert isinstance(ext.has_cuda(), bool)
    reason = ext.cuda_unavailable_reason()
    assert isinstance(reason, str)
    if not torch.cuda.is_available():
        assert reason != ""  # no driver or no device: said, not crashed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_cuda_gather_fails_cleanly_without_a_gpu(ext):
    with pytest.raises(RuntimeError, match="CUDA|without CUDA"):
        ext.pack_patches_cuda(**cuda_args())


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
    "change, error, match",
    [
        (lambda a: a.update(cu_seqlens=a["cu_seqlens"][:-1].copy()), ValueError, r"cu_seqlens must have len\(sources\) \+ 1"),
        (lambda a: a["cu_seqlens"].__setitem__(2, a["cu_seqlens"][2] + 1), ValueError,
         r"cu_seqlens\[2\] - cu_seqlens\[1\] must be"),
        (lambda a: a["cu_seqlens"].__setitem__(0, 1), ValueError, r"cu_seqlens\[0\] must be 0, got 1"),
        (lambda a: a.update(cu_seqlens=a["cu_seqlens"].reshape(1, -1)), ValueError, "cu_seqlens must be 1-D"),
        (lambda a: a.update(cu_seqlens=a["cu_seqlens"].astype(np.float32)), TypeError, "cu_seqlens must be int32"),
        (lambda a: a.update(cu_seqlens=a["cu_seqlens"].astype(np.uint32)), TypeError, "cu_seqlens must be int32"),
        (lambda a: a.update(cu_seqlens=a["cu_seqlens"].tolist()), TypeError, "cu_seqlens must support the buffer"),
        (lambda a: a.update(out=a["out"][:-4].copy()), ValueError, "out must hold"),
        (lambda a: a.update(out=a["out"][::2]), ValueError, "out must be C-contiguous"),
        (lambda a: a.update(out=a["out"].view(np.float32)), TypeError, "out must be a byte buffer"),
        (lambda a: a.update(out=None), TypeError, r"out must support the buffer protocol \(e.g. a numpy array\), got NoneType"),
        (lambda a: a.update(freq_idx=a["freq_idx"][:-1].copy()), ValueError, "freq_idx must hold 12 int32 items, got 11"),
        (lambda a: a.update(time_idx=a["time_idx"].astype(np.int64)), TypeError, "time_idx must be int32"),
        (lambda a: a["sources"].__setitem__(1, a["sources"][1][:-4].copy()), ValueError, r"sources\[1\]"),
        (lambda a: a["sources"].__setitem__(0, a["sources"][0].view(np.int32)), TypeError, r"sources\[0\] must be a byte"),
        (lambda a: a["sources"].__setitem__(0, a["sources"][0][::-1]), ValueError, r"sources\[0\] must be C-contiguous"),
        (lambda a: a.update(sources=a["sources"][0]), ValueError, r"cu_seqlens must have len\(sources\) \+ 1"),
        (lambda a: a.update(sources=7), TypeError, "sources must be a list of byte buffers, got int"),
        (lambda a: a.update(freq=12), ValueError, r"freq = 12 must be a positive multiple of patch_size \(8\)"),
        (lambda a: a.update(freq=4, freq_stride=3), ValueError, r"freq = 4 must be >= patch_size \(8\)"),
        (lambda a: a.update(freq_stride=0), ValueError, r"freq_stride must be in \[1, 2147483647\], got 0"),
        (lambda a: a.update(time_stride=2**31), ValueError, r"time_stride must be in \[1, 2147483647\]"),
        (lambda a: a.update(time_stride=4.0), TypeError, r"time_stride must be an int, got float"),
        (lambda a: a.update(time_stride=4), ValueError, r"cu_seqlens\[1\] - cu_seqlens\[0\] must be 6"),
        (lambda a: a["sources"].__setitem__(1, np.zeros(16 * 20 * 4, np.uint8)), ValueError,
         r"sources\[1\]: T = 20 must be a positive multiple of patch_size \(8\)"),
        (lambda a: a.update(patch=0), ValueError, r"patch_size must be in \[1, 2147483647\], got 0"),
        (lambda a: a.update(channels=0), ValueError, "channels"),
        (lambda a: a.update(channels=1.0), TypeError, "channels must be an int, got float"),
        (lambda a: a.update(elem_size=True), TypeError, "elem_size must be an int, got bool"),
        (lambda a: a.update(num_threads=2**40), ValueError, "num_threads must be in"),
        # sizes beyond int32 / int64 (a wrapped size check would let the gather write out of bounds)
        (lambda a: a.update(channels=2**62 + 1), ValueError, r"channels must be in \[1, 2147483647\], got 4611686018427387905"),
        (lambda a: a.update(freq=2**64), ValueError, r"freq must be in \[1, 2147483647\], got 18446744073709551616"),
        (lambda a: a.update(elem_size=-(2**63)), ValueError, r"elem_size must be in \[1, 16\]"),
        (lambda a: a.update(channels=2**31 - 1, freq=2**31 - 8, elem_size=16), ValueError,
         "C \\* F \\* elem_size overflows int64"),
    ],
)
def test_cpu_gather_checks_every_argument_before_writing(ext, change, error, match):
    args = gather_args(ext)
    change(args)
    out_before = np.copy(args["out"]) if isinstance(args["out"], np.ndarray) else None
    with pytest.raises(error, match=match):
        ext.pack_patches_cpu(**args)
    if out_before is not None:
        assert np.array_equal(args["out"], out_before)


def test_cpu_gather_copies_a_strided_cu_seqlens(ext):
    args = gather_args(ext)
    ext.pack_patches_cpu(**args)
    expected = args["out"].copy()
    args["out"][:] = 0
    args["cu_seqlens"] = np.repeat(args["cu_seqlens"], 2)[::2]  # a non-contiguous view
    args["sources"] = tuple(args["sources"])  # any sequence
    ext.pack_patches_cpu(**args)
    assert np.array_equal(args["out"], expected)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(num_segments=0), ValueError, r"num_segments must be in \[1, "),
        (dict(total_tokens=-1), ValueError, r"total_tokens must be in \[0, 2147483647\]"),
        (dict(total_tokens=2**31), ValueError, "total_tokens"),
        (dict(vec_bytes=3), ValueError, "vec_bytes must be 1, 2, 4, 8 or 16"),
        (dict(vec_bytes=2**70), ValueError, r"vec_bytes must be in \[1, 16\]"),
        (dict(out=4100), ValueError, "out = 4100 is not aligned to 16 bytes"),
        (dict(out=0), ValueError, "out is a null device address"),
        (dict(segment_meta=16388), ValueError, "segment_meta = 16388 is not aligned to 8 bytes"),
        (dict(cu_seqlens=2**64), ValueError, r"cu_seqlens must be an address in \[0, 2\*\*64 - 1\]"),
        (dict(freq_idx=-4), ValueError, "freq_idx must be an address"),
        (dict(time_idx=4096.0), TypeError, "time_idx must be an int, got float"),
        (dict(stream="default"), TypeError, "stream must be an int, got str"),
        (dict(device=-1), ValueError, r"device must be in \[0, 2147483647\]"),
        (dict(channels=0), ValueError, "channels"),
        (dict(channels=2**31 - 1, patch=2**16, freq=2**16, elem_size=16, total_tokens=2**31 - 1), ValueError,
         "overflows int64"),
        (dict(time_stride=0), ValueError, r"time_stride must be in \[1, "),
        (dict(time_stride=5), ValueError, r"vec_bytes must .* divide .* time_stride \* elem_size \(20\), got 16"),
        (dict(freq=4, freq_stride=3), ValueError, r"freq = 4 must be >= patch_size \(8\)"),
    ],
)
def test_cuda_gather_checks_its_arguments_on_the_host(ext, change, error, match):
    """Every argument check runs before any CUDA call, so these hold with or without a GPU."""
    with pytest.raises(error, match=match):
        ext.pack_patches_cuda(**cuda_args(**change))


def test_emulated_gather_names_a_bad_copy_unit(ext):
    with pytest.raises(ValueError, match=r"vec_bytes must be 1, 2, 4, 8 or 16 and divide patch \* elem_size \(8\) "
                                         r"and time_stride \* elem_size \(8\), got 16"):
        ext.emulate_cuda_gather(**gather_args(ext, elem=1), vec_bytes=16)
    # every source row must start on a copy unit, as on the device (frames 18 * 4 bytes, unit 16)
    with pytest.raises(ValueError, match=r"vec_bytes = 16 does not divide the row bytes of sources\[1\]"):
        ext.emulate_cuda_gather(**gather_args(ext, times=(16, 18), stride=(8, 4)), vec_bytes=16)
    with pytest.raises(ValueError, match=r"vec_bytes must be in \[1, 16\], got 64"):
        ext.emulate_cuda_gather(**gather_args(ext), vec_bytes=2**6)


def test_cpu_gather_refuses_read_only_output(ext):
    args = gather_args(ext)
    args["out"].setflags(write=False)
    with pytest.raises(ValueError, match="writable"):
        ext.pack_patches_cpu(**args)


@pytest.mark.parametrize("elem, vec_bytes", [(4, 16), (4, 8), (4, 4), (2, 16), (2, 2), (1, 1), (2, 4), (4, 1)])
@pytest.mark.parametrize("channels, p, stride", [
    (1, 16, None), (2, 4, None),  # non-overlapping
    (2, 16, (10, 10)), (1, 16, (8, 6)), (2, 4, (2, 3)),  # overlapping (AST: 16 every 10)
    (1, 8, (12, 16)), (1, 16, (16, 2)),  # gaps between patches; overlap in time only
])
def test_cuda_kernel_address_math_matches_the_cpu_gather(ext, elem, vec_bytes, channels, p, stride):
    """The CUDA kernel's per-thread indexing (shared header), run on the host, equals the CPU
    gather, which equals a loop over the windows."""
    stride_f, stride_t = stride or (p, p)
    if (p * elem) % vec_bytes or (stride_t * elem) % vec_bytes:
        pytest.skip("the copy unit must divide a patch row and the time step")
    rng = np.random.default_rng(1)
    freq = p + 3 * stride_f + (1 if stride_f != p else 0)  # a strided axis may end past the last patch
    times = [p + stride_t * k + (k % stride_t if stride_t != p else 0) for k in (2, 0, 6, 1)]
    times = [t for t in times if (t * elem) % vec_bytes == 0]  # a copy unit divides every row, as on the device
    args = gather_args(ext, times=times, channels=channels, freq=freq, p=p, elem=elem, stride=stride)
    for s in args["sources"]:
        s[:] = rng.integers(0, 256, size=s.size, dtype=np.uint8)
    ext.pack_patches_cpu(**args)
    item = np.dtype((np.void, elem))
    specs = [s.view(item).reshape(channels, freq, -1) for s in args["sources"]]
    expected = np.concatenate([strided_reference(spec, p, stride_f, stride_t) for spec in specs])
    assert np.array_equal(args["out"].view(item).reshape(expected.shape), expected)
    want = {k: args[k].copy() for k in ("out", "freq_idx", "time_idx")}
    for k in want:
        args[k] = np.zeros_like(args[k])
    ext.emulate_cuda_gather(**args, vec_bytes=vec_bytes)
    for k, v in want.items():
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
