"""Pack [C, F, T] spectrograms into one token buffer (``pack_spectrograms``) and back (``unpack``).

Patch layout: what ``Conv2d(C, dim, kernel_size=p, stride=(stride_f, stride_t))`` reads, in its
output order. A sample has ``F' = (F - p) // stride_f + 1`` frequency and ``T' = (T - p) //
stride_t + 1`` time patches; its tokens are frequency-major (token k has freq index k // T' and
time index k % T', time fastest); a patch is flattened as (c, p1, p2), the Conv2d weight's layout,
so ``patches @ conv.weight.reshape(dim, -1).T`` equals the convolution. The default stride is p
(non-overlapping patches: ElasticAST's layout, F and T multiples of p); AST uses p = 16 with
stride 10.

Paths: CPU tensors go through the C++ gather (multi-threaded, straight into the output buffer),
CUDA tensors through one CUDA kernel launch on torch's current stream; both need the native
extension. Without it (or when autograd must flow into the spectrograms) a torch ``unfold`` path
gives the same result.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from elasticast_kernels.layout import SeqLayout, check_offsets, cumulative_lengths, host_to_device

from ._native import native, native_cuda
from .batch import PackedBatch
from .._checks import check_int
from .plans import PackPlan

_warned_pin = False


def stride_pair(stride: Any, patch_size: int) -> tuple[int, int]:
    """``(stride_f, stride_t)`` from None (the patch size: non-overlapping), one int for both axes
    or a pair. Raises TypeError / ValueError naming ``stride``."""
    if stride is None:
        return patch_size, patch_size
    pair = (stride, stride) if not isinstance(stride, (tuple, list)) else tuple(stride)
    if len(pair) != 2:
        raise TypeError(f"stride must be an int or a pair of ints (freq, time), got {stride!r}")
    return check_int("stride[0]", pair[0], 1, 2**31 - 1), check_int("stride[1]", pair[1], 1, 2**31 - 1)


def axis_patches(extent: int, patch_size: int, stride: int, axis: str) -> int:
    """Patches along one axis of ``extent`` elements: ``(extent - p) // stride + 1``.

    Raises ValueError (the message starts with ``axis=extent``) when ``extent < p`` or, for
    non-overlapping patches (stride == p), when ``extent`` is not a multiple of p: there, as in the
    published model, no frame is left out silently.
    """
    if stride == patch_size and (extent < patch_size or extent % patch_size):
        raise ValueError(f"{axis}={extent} is not a positive multiple of patch_size={patch_size}")
    if extent < patch_size:
        raise ValueError(f"{axis}={extent} is shorter than patch_size={patch_size}")
    return (extent - patch_size) // stride + 1


def _check_specs(specs: Any, patch_size: int, stride: tuple[int, int]) -> tuple[int, int, int, np.ndarray]:
    """Validate the spectrogram list; return (C, F, frequency patches, time patches per sample)."""
    if isinstance(specs, torch.Tensor) or not isinstance(specs, Sequence):
        raise TypeError(f"specs must be a list of [C, F, T] tensors, got {type(specs).__name__}")
    if len(specs) == 0:
        raise ValueError("specs must hold at least one spectrogram, got an empty list")
    ref = specs[0]
    time_patches = np.empty(len(specs), dtype=np.int64)
    freq_patches = 0
    for j, spec in enumerate(specs):
        if not isinstance(spec, torch.Tensor):
            raise TypeError(f"specs[{j}] must be a torch.Tensor, got {type(spec).__name__}")
        _check_real_dense(f"specs[{j}]", spec)
        if spec.dim() != 3:
            raise ValueError(f"specs[{j}] must be [C, F, T], got shape {tuple(spec.shape)}")
        channels, freq, time = spec.shape
        if channels != ref.shape[0] or freq != ref.shape[1]:
            raise ValueError(
                f"specs[{j}] has C={channels}, F={freq} but specs[0] has C={ref.shape[0]}, F={ref.shape[1]}: "
                "channels and frequency bins must match"
            )
        if spec.dtype != ref.dtype:
            raise ValueError(f"specs[{j}] has dtype {spec.dtype} but specs[0] has {ref.dtype}")
        if spec.device != ref.device:
            raise ValueError(f"specs[{j}] is on {spec.device} but specs[0] is on {ref.device}")
        if channels < 1:
            raise ValueError(f"specs[{j}] has no channels")
        try:
            freq_patches = axis_patches(freq, patch_size, stride[0], "F")
            time_patches[j] = axis_patches(time, patch_size, stride[1], "T")
        except ValueError as error:
            raise ValueError(f"specs[{j}]: {error}") from None
    return int(ref.shape[0]), int(ref.shape[1]), freq_patches, time_patches


def _check_real_dense(name: str, spec: torch.Tensor) -> None:
    """TypeError unless ``spec`` is a dense tensor of real numbers with values to read: the gathers
    copy bytes, so a complex, boolean, quantized, sparse or meta tensor would pass through them
    as something it is not."""
    if spec.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {spec.layout}")
    if spec.is_quantized:
        raise TypeError(f"{name} is a quantized tensor ({spec.dtype}): dequantize it first")
    if spec.is_complex() or spec.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got {spec.dtype} (for a complex STFT pass its magnitude)")
    if spec.device.type == "meta":
        raise TypeError(f"{name} is a meta tensor, which holds no values")


def _checked_plan(plan: PackPlan, tokens: np.ndarray) -> PackPlan:
    """``plan``, after checking that it partitions these samples with their token counts."""
    if not isinstance(plan, PackPlan):
        raise TypeError(f"plan must be a PackPlan or None, got {type(plan).__name__}")
    if len(plan.lengths) != len(tokens):
        raise ValueError(f"plan was made for {len(plan.lengths)} samples but {len(tokens)} specs were given")
    mismatch = np.asarray(plan.lengths) != tokens
    if mismatch.any():
        j = int(np.argmax(mismatch))
        raise ValueError(f"plan.lengths[{j}] = {plan.lengths[j]} but specs[{j}] has {tokens[j]} tokens")
    try:
        plan.validate()  # a partition of the samples, no empty or overfull pack
    except ValueError as error:
        raise ValueError(f"plan is not a valid plan for these specs: {error}") from None
    return plan


def _positions(seqlens: np.ndarray, time_patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """freq_idx, time_idx (int32 [total_tokens]) for frequency-major segments."""
    segment_of = np.repeat(np.arange(len(seqlens)), seqlens)
    k = np.arange(int(seqlens.sum()), dtype=np.int64) - cumulative_lengths(seqlens)[:-1][segment_of]
    nt = time_patches[segment_of]
    return (k // nt).astype(np.int32), (k % nt).astype(np.int32)


def patchify(spec: torch.Tensor, patch_size: int, stride: Any = None) -> torch.Tensor:
    """``[C, F, T] -> [F' * T', C*p*p]`` with the packer's layout (torch ``unfold``; autograd-safe).
    ``stride``: None (the patch size), an int or ``(stride_f, stride_t)``."""
    p = patch_size
    stride_f, stride_t = stride_pair(stride, p)
    windows = spec.unfold(1, p, stride_f).unfold(2, p, stride_t)  # [C, F', T', p1, p2]
    channels, freq_patches, time_patches = windows.shape[:3]
    return windows.permute(1, 2, 0, 3, 4).reshape(freq_patches * time_patches, channels * p * p)


def _alloc(shape: tuple[int, ...], dtype: torch.dtype, pin: bool) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=pin)


def _gather_cpu_native(ext, specs, segments, layout, channels, freq, p, stride, pin):
    dtype = specs[0].dtype
    total = layout.total_tokens
    patches = _alloc((total, channels * p * p), dtype, pin)
    freq_idx = _alloc((total,), torch.int32, pin)
    time_idx = _alloc((total,), torch.int32, pin)
    sources = [specs[j].detach().contiguous().reshape(-1).view(torch.uint8).numpy() for j in segments.tolist()]
    ext.pack_patches_cpu(
        sources, layout.cu_seqlens.numpy(), patches.view(torch.uint8).numpy(), freq_idx.numpy(), time_idx.numpy(),
        channels, freq, p, patches.element_size(),
        # torch's intra-op thread count: 1 inside DataLoader workers, so workers do not oversubscribe
        torch.get_num_threads(), freq_stride=stride[0], time_stride=stride[1],
    )
    return patches, freq_idx, time_idx


def _gather_cuda_native(ext, specs, segments, layout, time_patches, channels, freq, p, stride):
    device = specs[0].device
    dtype = specs[0].dtype
    total = layout.total_tokens
    patches = torch.empty((total, channels * p * p), dtype=dtype, device=device)
    freq_idx = torch.empty((total,), dtype=torch.int32, device=device)
    time_idx = torch.empty((total,), dtype=torch.int32, device=device)
    if total == 0:
        return patches, freq_idx, time_idx
    # Contiguous sources are allocated on the current stream, so the caching allocator cannot hand
    # their memory to other work before the kernel below (same stream) has read them.
    sources = [specs[j].detach().contiguous() for j in segments.tolist()]
    addresses = [s.data_ptr() for s in sources]
    frames = [s.shape[2] for s in sources]
    meta = torch.tensor(addresses + time_patches.tolist() + frames, dtype=torch.int64).pin_memory()
    meta_dev = meta.to(device, non_blocking=True)
    elem = patches.element_size()
    align = 16 | (p * elem) | (stride[1] * elem) | patches.data_ptr()
    for address, length in zip(addresses, frames):
        align |= address | (length * elem)
    # the largest power of two (<= 16) dividing every address, patch row, time step and source row
    vec_bytes = align & -align
    stream = torch.cuda.current_stream(device)
    ext.pack_patches_cuda(
        patches.data_ptr(), freq_idx.data_ptr(), time_idx.data_ptr(), meta_dev.data_ptr(),
        layout.cu_seqlens.data_ptr(), len(sources), total, channels, freq, p, elem, vec_bytes, stream.cuda_stream,
        device.index, freq_stride=stride[0], time_stride=stride[1],
    )
    return patches, freq_idx, time_idx


def pack_spectrograms(
    specs: Sequence[torch.Tensor],
    patch_size: int = 16,
    plan: PackPlan | None = None,
    *,
    stride: int | tuple[int, int] | None = None,
    pin_memory: bool = False,
) -> PackedBatch:
    """Cut spectrograms into patches and lay them out as packed segments.

    Args:
        specs: non-empty list of ``[C, F, T]`` tensors on one device, one dtype (any real dtype;
            fp32, fp16 and bf16 are the usual), equal C and F; F, T >= p, and multiples of p along
            an axis whose stride is p.
        patch_size: p, the side of the square patches.
        plan: which samples share a pack (from :func:`pack_lengths` on the token counts
            ``F' * T'``); None puts every sample in one pack, in input order.
        stride: ``(stride_f, stride_t)`` between patches, or one int for both; None is
            ``patch_size`` (non-overlapping). See the module docstring for the token counts and
            order (a Conv2d's).
        pin_memory: allocate the CPU outputs page-locked (for a DataLoader feeding a GPU); ignored
            for CUDA inputs and, with a warning, when no accelerator is present.

    Returns:
        :class:`PackedBatch` with ``patches [total_tokens, C*p*p]``, ``freq_idx``/``time_idx`` int32
        ``[total_tokens]`` (indices into the strided grid), ``cu_seqlens`` int32
        ``[num_samples + 1]`` on the specs' device and ``grid_shapes`` ``(F', T')`` per segment.

    Raises:
        TypeError: specs not a list of tensors; a complex, boolean, quantized, sparse or meta
            spectrogram (named); plan not a PackPlan.
        ValueError: empty list, not 3-D, mixed C/F/dtype/device, F or T shorter than patch_size (or
            not a multiple of it with a stride of patch_size), a bad stride, a plan made for other
            token counts.
    """
    p = check_int("patch_size", patch_size, 1)
    stride = stride_pair(stride, p)
    channels, freq, freq_patches, time_patches_all = _check_specs(specs, p, stride)
    device = specs[0].device
    pin = bool(pin_memory) and device.type == "cpu"
    if pin and not torch.cuda.is_available():
        global _warned_pin
        if not _warned_pin:
            warnings.warn("pack_spectrograms(pin_memory=True): no accelerator, returning unpinned tensors")
            _warned_pin = True
        pin = False

    tokens = freq_patches * time_patches_all
    if plan is None:
        segments = np.arange(len(tokens), dtype=np.int64)
        layout = SeqLayout(tokens.tolist(), device=device)
    else:
        plan = _checked_plan(plan, tokens)
        segments = plan.order.astype(np.int64)
        layout = plan.layout(device)
    time_patches = time_patches_all[segments]
    needs_grad = torch.is_grad_enabled() and any(s.requires_grad for s in specs)

    ext = None
    if not needs_grad:  # the native gathers write raw buffers: no autograd through them
        ext = native() if device.type == "cpu" else native_cuda() if device.type == "cuda" else None
    if ext is not None and device.type == "cpu":
        patches, freq_idx, time_idx = _gather_cpu_native(ext, specs, segments, layout, channels, freq, p, stride, pin)
    elif ext is not None:
        patches, freq_idx, time_idx = _gather_cuda_native(ext, specs, segments, layout, time_patches, channels, freq, p,
                                                          stride)
    else:
        pieces = [patchify(specs[j], p, stride) for j in segments.tolist()]
        patches = torch.cat(pieces) if pieces else specs[0].new_empty((0, channels * p * p))
        f_idx, t_idx = _positions(np.asarray(layout.seqlens, dtype=np.int64), time_patches)
        freq_idx, time_idx = (host_to_device(torch.from_numpy(a), device) for a in (f_idx, t_idx))
        if pin:
            patches, freq_idx, time_idx = (t.pin_memory() for t in (patches, freq_idx, time_idx))
    if pin:
        layout = layout.pin_memory()
    return PackedBatch(
        patches=patches,
        freq_idx=freq_idx,
        time_idx=time_idx,
        layout=layout,
        sample_index=torch.from_numpy(segments),
        grid_shapes=tuple((freq_patches, int(t)) for t in time_patches.tolist()),
    )


def unpack(packed_tokens: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """Split ``packed_tokens [total_tokens, ...]`` into per-segment views ``[n_j, ...]``.

    ``cu_seqlens``: 1-D integer tensor ``[num_segments + 1]`` (CPU or the tokens' device), starting
    at 0, non-decreasing, ending at total_tokens. Reads its values on the host (a sync on CUDA).
    Raises TypeError / ValueError on bad input.
    """
    if not isinstance(packed_tokens, torch.Tensor):
        raise TypeError(f"packed_tokens must be a torch.Tensor, got {type(packed_tokens).__name__}")
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be 1-D with at least one entry, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype.is_complex or cu_seqlens.dtype == torch.bool:
        raise ValueError(f"cu_seqlens must hold integers, got {cu_seqlens.dtype}")
    if packed_tokens.dim() < 1:
        raise ValueError("packed_tokens must have a token dimension")
    bounds = cu_seqlens.tolist()
    check_offsets(bounds, packed_tokens.shape[0], total_name="packed_tokens.shape[0]")
    return [packed_tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
