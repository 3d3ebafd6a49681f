"""pack_spectrograms / unpack: exact equality with a torch unfold reference, round trips, errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elasticast_kernels.packing import PackedBatch, has_native, has_native_cuda, pack_lengths, pack_spectrograms, unpack
from helpers import reference_patches

HAS_CUDA = torch.cuda.is_available()
PATHS = ["torch"] + (["native"] if has_native() else [])


def make_specs(times, channels=1, freq=32, dtype=torch.float32, device="cpu"):
    return [torch.randn(channels, freq, t).to(dtype=dtype, device=device) for t in times]


@pytest.fixture
def path(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setenv("ELASTICAST_NO_NATIVE", "1")
    return request.param


def check_batch(batch: PackedBatch, specs, p: int) -> None:
    """Every segment equals the reference patches of its sample; positions and metadata agree."""
    device = specs[0].device
    assert batch.patches.device == device and batch.patches.dtype == specs[0].dtype
    for t in (batch.freq_idx, batch.time_idx, batch.cu_seqlens):
        assert t.dtype == torch.int32 and t.device == device
    assert batch.sample_index.dtype == torch.int64 and batch.sample_index.device.type == "cpu"
    segments = unpack(batch.patches, batch.cu_seqlens)
    freqs = unpack(batch.freq_idx, batch.cu_seqlens)
    times = unpack(batch.time_idx, batch.cu_seqlens)
    assert len(segments) == batch.num_samples == len(batch.seqlens)
    for j, i in enumerate(batch.sample_index.tolist()):
        spec = specs[i]
        expected = reference_patches(spec, p)
        assert torch.equal(segments[j], expected), f"segment {j} (sample {i})"
        nt = spec.shape[2] // p
        k = torch.arange(expected.shape[0], device=device)
        assert torch.equal(freqs[j].long(), k // nt) and torch.equal(times[j].long(), k % nt)
        assert batch.seqlens[j] == expected.shape[0]
    assert batch.max_seqlen == max(batch.seqlens)
    assert batch.total_tokens == sum(batch.seqlens)
    assert batch.cu_seqlens.tolist() == np.concatenate([[0], np.cumsum(batch.seqlens)]).tolist()


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels, p", [(1, 16), (2, 4), (3, 2)])
def test_patches_equal_the_unfold_reference(path, dtype, channels, p):
    freq = 2 * p if p == 16 else 4 * p
    specs = make_specs([p, 5 * p, 3 * p, 8 * p], channels=channels, freq=freq, dtype=dtype)
    batch = pack_spectrograms(specs, patch_size=p)
    check_batch(batch, specs, p)
    assert batch.sample_index.tolist() == [0, 1, 2, 3]
    assert batch.pack_offsets == (0, 4) and batch.num_packs == 1


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("strategy", ["next_fit", "best_fit_decreasing", "histogram"])
def test_plan_orders_segments_and_packs(path, strategy):
    p = 16
    specs = make_specs([16 * k for k in (7, 1, 3, 6, 2, 5, 4, 8)], freq=32)
    tokens = [(s.shape[1] // p) * (s.shape[2] // p) for s in specs]
    plan = pack_lengths(tokens, 20, strategy)
    batch = pack_spectrograms(specs, p, plan)
    check_batch(batch, specs, p)
    assert batch.sample_index.tolist() == plan.order.tolist()
    assert batch.pack_offsets == tuple(plan.pack_offsets.tolist())
    assert list(batch.pack_tokens()) == plan.pack_tokens().tolist()
    assert all(t <= 20 for t in batch.pack_tokens())


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_round_trip_and_non_contiguous_input(path):
    specs = make_specs([32, 48], channels=2, freq=16)
    specs.append(torch.randn(2, 64, 16).transpose(1, 2))  # [2, 16, 64], not contiguous
    batch = pack_spectrograms(specs, patch_size=8)
    check_batch(batch, specs, 8)
    # Inverse of the patch layout: rebuild every spectrogram from its tokens.
    for seg, spec in zip(unpack(batch.patches, batch.cu_seqlens), specs):
        c, f, t = spec.shape
        rebuilt = seg.reshape(f // 8, t // 8, c, 8, 8).permute(2, 0, 3, 1, 4).reshape(c, f, t)
        assert torch.equal(rebuilt, spec)


def test_native_and_torch_paths_agree(monkeypatch):
    if not has_native():
        pytest.skip("native extension not built")
    specs = make_specs([16 * k for k in range(1, 30)], channels=1, freq=128, dtype=torch.bfloat16)
    plan = pack_lengths([8 * k for k in range(1, 30)], 256, "best_fit_decreasing")
    native = pack_spectrograms(specs, 16, plan)
    monkeypatch.setenv("ELASTICAST_NO_NATIVE", "1")
    fallback = pack_spectrograms(specs, 16, plan)
    for name in ("patches", "freq_idx", "time_idx", "cu_seqlens", "sample_index"):
        assert torch.equal(getattr(native, name), getattr(fallback, name)), name
    assert (native.seqlens, native.pack_offsets, native.max_seqlen) == (
        fallback.seqlens, fallback.pack_offsets, fallback.max_seqlen)


def test_gradients_flow_through_the_torch_path():
    specs = [torch.randn(1, 16, 32, requires_grad=True), torch.randn(1, 16, 16, requires_grad=True)]
    batch = pack_spectrograms(specs, patch_size=8)
    (batch.patches * 2).sum().backward()
    assert all(torch.equal(s.grad, torch.full_like(s, 2.0)) for s in specs)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: [], ValueError, "at least one spectrogram"),
        (lambda: torch.randn(2, 1, 16, 16), TypeError, "list of"),
        (lambda: [torch.randn(1, 16, 16), "x"], TypeError, r"specs\[1\] must be a torch.Tensor"),
        (lambda: [torch.randn(16, 16)], ValueError, r"specs\[0\] must be \[C, F, T\]"),
        (lambda: [torch.randn(1, 16, 16), torch.randn(1, 16, 20)], ValueError, r"specs\[1\]: T=20 is not a positive multiple"),
        (lambda: [torch.randn(1, 12, 16)], ValueError, r"F=12 is not a positive multiple"),
        (lambda: [torch.randn(1, 16, 0)], ValueError, r"T=0"),
        (lambda: [torch.randn(1, 16, 16), torch.randn(2, 16, 16)], ValueError, "channels and frequency bins must match"),
        (lambda: [torch.randn(1, 16, 16), torch.randn(1, 32, 16)], ValueError, "channels and frequency bins must match"),
        (lambda: [torch.randn(1, 16, 16), torch.randn(1, 16, 16).half()], ValueError, r"specs\[1\] has dtype"),
        (lambda: [torch.randn(1, 16, 16), torch.randn(1, 16, 16, device="meta")], TypeError,
         r"specs\[1\] is a meta tensor, which holds no values"),
        (lambda: [torch.randn(1, 16, 16, dtype=torch.complex64)], TypeError, r"specs\[0\] must hold real numbers, got torch.complex64"),
        (lambda: [torch.randn(1, 16, 16), torch.randn(1, 16, 16, dtype=torch.complex128)], TypeError,
         r"specs\[1\] must hold real numbers"),
        (lambda: [torch.ones(1, 16, 16, dtype=torch.bool)], TypeError, r"specs\[0\] must hold real numbers, got torch.bool"),
        (lambda: [torch.randn(1, 16, 16).to_sparse()], TypeError, r"specs\[0\] must be a dense \(strided\) tensor"),
        pytest.param(lambda: [torch.quantize_per_tensor(torch.randn(1, 16, 16), 0.1, 0, torch.qint8)], TypeError,
                     r"specs\[0\] is a quantized tensor",
                     marks=pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")),
    ],
)
def test_bad_specs(path, make, error, match):
    with pytest.raises(error, match=match):
        pack_spectrograms(make(), patch_size=8)


def test_bad_plan_and_patch_size():
    specs = make_specs([16, 32], freq=16)
    with pytest.raises(ValueError, match=r"plan.lengths\[1\] = 5 but specs\[1\] has 8 tokens"):
        pack_spectrograms(specs, 8, pack_lengths([4, 5], 16))
    with pytest.raises(ValueError, match="plan was made for 3 samples"):
        pack_spectrograms(specs, 8, pack_lengths([4, 8, 1], 16))
    with pytest.raises(TypeError, match="plan must be a PackPlan"):
        pack_spectrograms(specs, 8, [[0, 1]])
    with pytest.raises(ValueError, match="patch_size"):
        pack_spectrograms(specs, 0)


def test_unpack_checks_cu_seqlens():
    x = torch.arange(10.0)
    assert [t.tolist() for t in unpack(x, torch.tensor([0, 3, 3, 10]))] == [[0, 1, 2], [], list(range(3, 10))]
    with pytest.raises(ValueError, match=r"cu_seqlens\[0\] must be 0"):
        unpack(x, torch.tensor([1, 10]))
    with pytest.raises(ValueError, match="non-decreasing"):
        unpack(x, torch.tensor([0, 5, 4, 10]))
    with pytest.raises(ValueError, match=r"must equal packed_tokens.shape\[0\]=10"):
        unpack(x, torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="integers"):
        unpack(x, torch.tensor([0.0, 10.0]))
    with pytest.raises(TypeError, match="cu_seqlens must be a torch.Tensor"):
        unpack(x, [0, 10])


def strided_patches(spec: torch.Tensor, p: int, stride: tuple[int, int]) -> torch.Tensor:
    """``[C, F, T] -> [F' * T', C*p*p]`` by unfold with the stride: frequency-major (time fastest),
    token ``(f, t)`` holds ``spec[c, f*stride_f + i, t*stride_t + j]`` at column ``(c*p + i)*p + j``."""
    windows = spec.unfold(1, p, stride[0]).unfold(2, p, stride[1])  # [C, F', T', p (freq), p (time)]
    return windows.permute(1, 2, 0, 3, 4).reshape(-1, spec.shape[0] * p * p)


STRIDED = [  # (patch, stride, channels, F, frames per sample)
    (16, (10, 10), 1, 128, [16, 26, 1024, 100, 35]),  # AST: 12 x 101 tokens at 1024 frames
    (4, (2, 3), 2, 11, [4, 5, 13, 30]),
    (4, (6, 4), 1, 16, [4, 8, 28]),  # gaps between patches in frequency
    (8, (8, 5), 3, 24, [8, 9, 40]),  # non-overlapping in frequency only
]


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("p, stride, channels, freq, frames", STRIDED)
def test_strided_patches_equal_unfold_and_the_conv2d_layout(path, dtype, p, stride, channels, freq, frames):
    specs = [torch.randn(channels, freq, t).to(dtype) for t in frames]
    tokens = [((freq - p) // stride[0] + 1) * ((t - p) // stride[1] + 1) for t in frames]
    plan = pack_lengths(tokens, max(tokens), "best_fit_decreasing")
    batch = pack_spectrograms(specs, p, plan, stride=stride)
    order = plan.order.tolist()
    expected = torch.cat([strided_patches(specs[j], p, stride) for j in order])
    assert batch.patches.dtype == dtype and torch.equal(batch.patches.view(torch.uint8), expected.view(torch.uint8))
    assert batch.seqlens == tuple(tokens[j] for j in order)
    freq_patches = (freq - p) // stride[0] + 1
    assert batch.grid_shapes == tuple((freq_patches, tokens[j] // freq_patches) for j in order)
    # freq_idx / time_idx index the strided grid, time fastest
    for j, (segment, times) in enumerate(zip(unpack(batch.freq_idx, batch.cu_seqlens),
                                             unpack(batch.time_idx, batch.cu_seqlens))):
        time_patches = batch.grid_shapes[j][1]
        k = torch.arange(batch.seqlens[j])
        assert torch.equal(segment.long(), k // time_patches) and torch.equal(times.long(), k % time_patches)
    # Conv2d layout: an identity filter bank reads every patch element into its own channel, in the
    # (c, p1, p2) order of conv.weight.reshape(out, -1); outputs flattened over [freq, time]
    identity = torch.eye(channels * p * p, dtype=torch.float64).reshape(-1, channels, p, p)
    conv = torch.cat([F.conv2d(specs[j].double()[None], identity, stride=stride)[0].flatten(1).t() for j in order])
    assert torch.equal(batch.patches.double(), conv)
    # ... so a Conv2d patch embedding is a Linear on the packed patches
    weight, bias = torch.randn(5, channels, p, p, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    conv = torch.cat([F.conv2d(specs[j].double()[None], weight, bias, stride=stride)[0].flatten(1).t() for j in order])
    torch.testing.assert_close(F.linear(batch.patches.double(), weight.reshape(5, -1), bias), conv)


@pytest.mark.parametrize("stride", [None, 16, (10, 10), (16, 6), (7, 3)])
def test_plans_count_tokens_as_the_packer_does(stride):
    """data.features.num_tokens (what samplers plan with) gives the packer's token counts."""
    from elasticast_kernels.data.features import num_tokens

    frames = np.array([16, 26, 48, 1024, 333]) if stride not in (None, 16) else np.array([16, 48, 1024, 320])
    batch = pack_spectrograms([torch.randn(1, 128, int(t)) for t in frames], 16, stride=stride)
    assert num_tokens(frames, 128, 16, stride=stride).tolist() == list(batch.seqlens)
    assert num_tokens(int(frames[1]), 128, 16, stride=stride) == batch.seqlens[1]
    with pytest.raises(ValueError, match="stride must be >= 1"):
        num_tokens(frames, 128, 16, stride=(0, 10))


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_default_stride_is_the_patch_size(path):
    specs = make_specs([16, 48], freq=32)
    for stride in (None, 16, (16, 16)):
        assert torch.equal(pack_spectrograms(specs, 16, stride=stride).patches, pack_spectrograms(specs, 16).patches)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize(
    "specs, stride, error, match",
    [
        ([torch.randn(1, 128, 10)], 10, ValueError, r"specs\[0\]: T=10 is shorter than patch_size=16"),
        ([torch.randn(1, 12, 40)], (10, 10), ValueError, r"specs\[0\]: F=12 is shorter than patch_size=16"),
        ([torch.randn(1, 128, 40)], (10, 16), ValueError, r"specs\[0\]: T=40 is not a positive multiple of patch_size=16"),
        ([torch.randn(1, 120, 32)], (16, 10), ValueError, r"specs\[0\]: F=120 is not a positive multiple"),
        ([torch.randn(1, 128, 32)], 0, ValueError, r"stride\[0\] must be in \[1, 2147483647\], got 0"),
        ([torch.randn(1, 128, 32)], (10, -1), ValueError, r"stride\[1\] must be"),
        ([torch.randn(1, 128, 32)], (10, 10, 10), TypeError, r"stride must be an int or a pair of ints"),
        ([torch.randn(1, 128, 32)], 10.0, TypeError, r"stride\[0\] must be an int, got float"),
        ([torch.randn(1, 128, 32)], (True, 10), TypeError, r"stride\[0\] must be an int, got bool"),
        ([torch.randn(1, 128, 32)], "10", TypeError, r"stride"),
    ],
)
def test_bad_strides_are_named(path, specs, stride, error, match):
    with pytest.raises(error, match=match):
        pack_spectrograms(specs, 16, stride=stride)


def test_strided_torch_path_carries_gradients():
    specs = [torch.randn(1, 24, t, dtype=torch.float64, requires_grad=True) for t in (16, 30)]
    batch = pack_spectrograms(specs, 8, stride=(4, 5))
    batch.patches.sum().backward()
    for spec in specs:  # each element's gradient: how many overlapping patches read it
        ones = torch.ones(1, 1, *spec.shape[1:], dtype=torch.float64)
        count = F.conv_transpose2d(F.conv2d(ones, torch.ones(1, 1, 8, 8, dtype=torch.float64), stride=(4, 5)),
                                   torch.ones(1, 1, 8, 8, dtype=torch.float64), stride=(4, 5))
        assert torch.equal(spec.grad[0, :count.shape[2], :count.shape[3]], count[0, 0] / 64)


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_pin_memory(path):
    specs = make_specs([16, 32], freq=16)
    if HAS_CUDA:
        batch = pack_spectrograms(specs, 8, pin_memory=True)
        assert batch.patches.is_pinned() and batch.cu_seqlens.is_pinned()
        moved = batch.to("cuda", non_blocking=True)
        assert moved.patches.is_cuda and moved.sample_index.device.type == "cpu"
    else:
        with pytest.warns(UserWarning, match="no accelerator"):
            import elasticast_kernels.packing.tensors as tensors

            tensors._warned_pin = False
            batch = pack_spectrograms(specs, 8, pin_memory=True)
        assert not batch.patches.is_pinned()
    check_batch(batch, specs, 8)


def test_packed_batch_to_keeps_host_metadata():
    batch = pack_spectrograms(make_specs([16, 32], freq=16), 8)
    batch.labels = torch.tensor([1, 0])
    moved = batch.to("cpu")
    assert moved is not batch and moved.seqlens == batch.seqlens and torch.equal(moved.labels, batch.labels)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("offset", [0, 1])  # 1: sources not 16-byte aligned -> narrower copy unit
@pytest.mark.parametrize("stride", [None, (10, 10), (16, 6)])  # AST's overlap; odd rows of 16 * k + 3 frames
def test_cuda_path_equals_cpu_path(dtype, offset, stride):
    if has_native():
        assert has_native_cuda(), "the extension's CUDA gather should be usable on a CUDA machine"
    torch.manual_seed(0)
    extra = 0 if stride is None else 3
    cpu_specs = [torch.randn(1, 128, 16 * k + extra).to(dtype) for k in (3, 64, 17, 1, 40)]
    stride_f, stride_t = stride or (16, 16)
    tokens = [((128 - 16) // stride_f + 1) * ((s.shape[2] - 16) // stride_t + 1) for s in cpu_specs]
    plan = pack_lengths(tokens, 600, "best_fit_decreasing")
    cpu = pack_spectrograms(cpu_specs, 16, plan, stride=stride)
    cuda_specs = []
    for s in cpu_specs:  # a base address off by `offset` elements when offset=1
        holder = torch.empty(s.numel() + offset, dtype=dtype, device="cuda")
        view = holder[offset:].view(s.shape)
        view.copy_(s)
        cuda_specs.append(view)
    gpu = pack_spectrograms(cuda_specs, 16, plan, stride=stride)
    torch.cuda.synchronize()
    for name in ("patches", "freq_idx", "time_idx", "cu_seqlens"):
        assert getattr(gpu, name).is_cuda
        assert torch.equal(getattr(gpu, name).cpu(), getattr(cpu, name)), name
    if stride is None:
        check_batch(gpu, cuda_specs, 16)
    else:
        expected = torch.cat([strided_patches(cpu_specs[j], 16, stride) for j in plan.order.tolist()])
        assert torch.equal(gpu.patches.cpu(), expected)
