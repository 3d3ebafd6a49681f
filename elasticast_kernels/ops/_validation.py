"""Input checks shared by every varlen op, done once at the public boundary.

Structural checks (dtype, device, shape) are free and always run. Value checks on ``cu_seqlens``
(starts at 0, non-decreasing, ends at ``total_tokens``) need its values: they run when it lives on
the CPU, where reading it is free, and never on CUDA, where reading it would be a host-device sync
on the hot path (the ops stay sync-free, so CUDA graphs and ``torch.compile`` work). They never run
while ``torch.compile`` traces.
"""
from __future__ import annotations


import torch

from elasticast_kernels._checks import check_int, check_number, check_optional_int
from elasticast_kernels.layout import check_offsets

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_float_tensor(name: str, tensor: object, ndim: int) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16 or float32, got {tensor.dtype}")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)}")
    return tensor


def check_same(name: str, tensor: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``tensor`` must share dtype and device with ``ref``."""
    if tensor.dtype != ref.dtype:
        raise ValueError(f"{name} has dtype {tensor.dtype} but {ref_name} has {ref.dtype}")
    if tensor.device != ref.device:
        raise ValueError(f"{name} is on {tensor.device} but {ref_name} is on {ref.device}")


def check_cu_seqlens(
    cu_seqlens: object, total_tokens: int, device: torch.device, name: str = "cu_seqlens",
    total_name: str = "total_tokens",
) -> torch.Tensor:
    """Validate ``cu_seqlens``: int32, 1-D, >= 1 entry, on ``device``; its values too when on the CPU.

    ``name`` and ``total_name`` are how the caller's arguments are called in the messages.

    Raises:
        TypeError: not a tensor. ValueError: wrong dtype/shape/device, or (CPU) values that do not
        start at 0, decrease, or do not end at ``total_tokens``.
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"{name} must be int32, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"{name} must be 1-D with batch + 1 >= 1 entries, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"{name} is on {cu_seqlens.device} but the data is on {device}")
    if cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling():
        check_offsets(cu_seqlens.tolist(), total_tokens, name, total_name)
    return cu_seqlens


def check_max_seqlen(max_seqlen: object, name: str = "max_seqlen") -> int | None:
    return check_optional_int(name, max_seqlen, 0)


def check_window(window_size: object, causal: bool, longest: int) -> tuple[int, int]:
    """flash-attn's ``window_size=(left, right)`` as the kernels take it.

    Query ``i`` of a sample with ``Lq`` queries and ``Lk`` keys sees keys
    ``[i + Lk - Lq - left, i + Lk - Lq + right]``; ``-1`` leaves a side unbounded. Causal is the
    right side 0. A side of ``longest`` (the larger token total) or more cannot exclude any key of
    any sample, so it becomes -1 here: the kernels never see a value whose index arithmetic could
    overflow int32, and an "infinite" window costs nothing.

    Raises:
        TypeError: not a pair of Python ints (a bool, a float, a tensor).
        ValueError: not two entries, or a side below -1.
    """
    try:
        sides = tuple(window_size)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"window_size must be a pair of ints (left, right), got {type(window_size).__name__}") from None
    if len(sides) != 2:
        raise ValueError(f"window_size must have two entries (left, right), got {window_size!r}")
    for side, value in zip(("left", "right"), sides):
        if isinstance(value, torch.Tensor):  # reading it would be a host-device sync
            raise TypeError(f"window_size {side} must be a Python int, got a tensor")
    left, right = (check_int(f"window_size {side} (-1: unbounded)", value, -1) for side, value in zip(("left", "right"), sides))
    if causal:
        right = 0
    return tuple(-1 if side >= longest else side for side in (left, right))  # type: ignore[return-value]


def check_softcap(softcap: object) -> float:
    """The tanh soft-cap of the scores as a float: 0.0 (off) or a positive finite number.

    Raises:
        TypeError: not a real number. ValueError: negative, NaN or infinite.
    """
    value = check_number("softcap (0.0: off)", softcap)
    if value < 0:
        raise ValueError(f"softcap must be 0.0 (off) or a positive finite number, got {softcap!r}")
    return value


def resolve_softmax_scale(softmax_scale: object, head_dim: int, allow_none: bool = True) -> float:
    """The score scale as a finite float; ``None`` means 1/sqrt(head_dim) (ElasticAST itself uses 1.0).

    Raises:
        TypeError: not a real number (a string, a tensor, a complex, a bool).
        ValueError: NaN or infinite (the softmax of NaN/inf-scaled scores is meaningless), or
            ``None`` where ``allow_none`` is False.
    """
    if softmax_scale is None:
        if not allow_none:
            raise ValueError("softmax_scale must be a finite number, got None")
        return head_dim ** -0.5
    return check_number("softmax_scale", softmax_scale)
