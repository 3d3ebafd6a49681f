"""Attention backends: one table of interchangeable implementations of per-sample self-attention.

Every backend computes the same thing: for each sample (segment of the `SeqLayout`), softmax
attention among that sample's tokens only, on packed ``[total_tokens, heads, head_dim]`` tensors.
They differ in how they get there, which is what the benchmarks compare:

===============  =================================================================================
``triton``       our varlen kernel (``elasticast_kernels.ops.varlen_attention``); CUDA, or CPU
                 under ``TRITON_INTERPRET=1`` (slow, for testing only)
``torch``        ``scaled_dot_product_attention`` without padding: one batched call per run of
                 consecutive equal-length samples (one call in all when every sample has the same length)
``flex``         ``torch.nn.attention.flex_attention`` with a document mask (compiled on CUDA; on
                 CPU it runs eagerly, unfused, materialising ``[heads, total, total]`` scores,
                 and has no backward there: inference only on CPU). **Does not isolate
                 non-finite values:** masked-out keys get probability 0, but 0 x NaN = NaN, so a
                 NaN/inf in one sample reaches the other samples of the batch
``varlen_attn``  ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention; CUDA, fp16/bf16 only)
``flash_attn``   ``flash_attn.flash_attn_varlen_func`` when the package is importable (CUDA)
``xformers``     ``xformers.ops.memory_efficient_attention`` with a ``BlockDiagonalMask`` (CUDA)
``auto``         the fastest available correct one for the tensors' device and dtype
===============  =================================================================================

Every backend except ``flex`` keeps samples independent, non-finite values included: a sample's
output depends on its own tokens only. The padded baselines of the published model
(``sdpa_masked``, ``padded``) live with the benchmarks (`elasticast_kernels.bench.padded`); their
old names here are deprecated aliases of ``torch`` (same results, no padding).

Use `attention` for one call, or resolve once with `resolve_backend` and call
``BACKENDS[name].fn`` per layer (what the model does: ``auto`` is resolved once per forward).
"""
from __future__ import annotations

import functools
import importlib
import types
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from elasticast_kernels.layout import SeqLayout
from elasticast_kernels.ops._common import triton_available, triton_interpret
from elasticast_kernels.ops._validation import resolve_softmax_scale

BackendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, SeqLayout, float], torch.Tensor]

__all__ = [
    "Backend", "BACKENDS", "BACKEND_NAMES", "SeqLayout", "attention", "available_backends", "backend_name",
    "resolve_backend",
]


# ------------------------------------------------------------------------------------------------
# Backends: each one is fn(q, k, v, layout, softmax_scale) -> [total_tokens, heads, head_dim]
# ------------------------------------------------------------------------------------------------
def _sdpa_batch(x: torch.Tensor, segments: int, length: int) -> torch.Tensor:
    """``[segments * length, heads, d]`` -> ``[segments, heads, length, d]`` (a view)."""
    return x.view(segments, length, *x.shape[1:]).transpose(1, 2)


def _equal_length_runs(layout: SeqLayout) -> list[tuple[int, int]]:
    """``(length, count)`` of each maximal run of consecutive non-empty segments of one length, in
    token order (a batch of equal-length clips is one run; all lengths distinct, one run each)."""
    runs: list[list[int]] = []
    for length in layout.seqlens:
        if length == 0:
            continue  # owns no token: nothing to attend
        if runs and runs[-1][0] == length:
            runs[-1][1] += 1
        else:
            runs.append([length, 1])
    return [(length, count) for length, count in runs]


def _torch_backend(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    # Consecutive samples of equal length form one [count, heads, length, head_dim] batch: one
    # fused SDPA call per run, no padding, no mask (one call in all for a batch of equal-length
    # clips). 4-D inputs matter: the CPU flash kernel only takes them (3-D falls back to the
    # unfused math path, about 6x slower). One split, not a slice per run, keeps the backward a
    # single concatenation. Runs are never gathered from across the batch: on the CPU the
    # gathers cost more than the batching saves (measured).
    runs = layout.cached("equal_length_runs", lambda: _equal_length_runs(layout))
    if not runs:  # no token at all: an empty [0, heads, head_dim] result, still on q's graph
        return q.clone()
    sizes = [length * count for length, count in runs]
    outputs = []
    for (length, count), *parts in zip(runs, *(x.split(sizes) for x in (q, k, v))):
        result = F.scaled_dot_product_attention(*(_sdpa_batch(x, count, length) for x in parts), scale=softmax_scale)
        # back to tokens first: a view for one sample, one copy for a batch of them
        outputs.append(result[0].transpose(0, 1) if count == 1 else result.transpose(1, 2).reshape(-1, *q.shape[1:]))
    out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    return out + _nan_rows(q)


def _nan_rows(q: torch.Tensor) -> torch.Tensor:
    """``[total, heads, 1]``: NaN where a query row holds a NaN, else 0 (no gradient).

    PyTorch's CPU flash SDPA returns zeros for a query row with a NaN (it treats the row as fully
    masked), which would hide the NaN; adding this to the output restores it for that token alone
    (0 * NaN = NaN, 0 * finite = 0) at the cost of one reduction over q.
    """
    with torch.no_grad():
        return q.sum(-1, keepdim=True).mul_(0)


@functools.lru_cache(maxsize=None)
def _compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _flex_backend(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    device, total = q.device, q.shape[0]
    segment_ids = layout.segment_ids()

    def document_mask(batch, head, q_idx, kv_idx):
        return segment_ids[q_idx] == segment_ids[kv_idx]

    # _compile on CUDA builds the block mask block by block; uncompiled it materialises a
    # total x total boolean mask first (gigabytes at ElasticAST's step sizes)
    block_mask = layout.cached(
        ("flex", device),
        lambda: create_block_mask(document_mask, None, None, total, total, device=device, _compile=q.is_cuda),
    )
    if not q.is_cuda and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise NotImplementedError(
            "FlexAttention has no backward on CPU (torch " + torch.__version__ + "); use backend='torch' to train on CPU"
        )
    # Eager flex on the CPU is the unfused reference path; compiled flex is the fused kernel (CUDA).
    flex = _compiled_flex() if q.is_cuda and not torch.compiler.is_compiling() else flex_attention
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = flex(*(x.transpose(0, 1).unsqueeze(0) for x in (q, k, v)), block_mask=block_mask, scale=softmax_scale)
    return out.squeeze(0).transpose(0, 1)


def _varlen_attn_backend(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    cu = layout.cu_seqlens
    return varlen_attn(q, k, v, cu, cu, layout.max_seqlen, layout.max_seqlen, scale=softmax_scale)


def _flash_attn_backend(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    cu = layout.cu_seqlens
    return flash_attn_varlen_func(q, k, v, cu, cu, layout.max_seqlen, layout.max_seqlen, softmax_scale=softmax_scale)


def _xformers_backend(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    from xformers.ops import fmha

    # device=: xformers would otherwise build the mask on the current CUDA device
    bias = layout.cached(
        ("xformers", q.device),
        lambda: fmha.attn_bias.BlockDiagonalMask.from_seqlens(list(layout.seqlens), device=q.device),
    )
    out = fmha.memory_efficient_attention(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_bias=bias, scale=softmax_scale
    )
    return out.squeeze(0)


def _triton_backend(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    from elasticast_kernels.ops.varlen_attention import launch_schedule, varlen_attention

    # the kernels' launch order depends on the layout alone: built once per batch, shared by
    # every layer and by the backward
    schedule = layout.cached("launch_schedule", lambda: launch_schedule(layout.cu_seqlens))
    return varlen_attention(q, k, v, layout.cu_seqlens, layout.max_seqlen, softmax_scale=softmax_scale,
                            schedule=schedule)


# ------------------------------------------------------------------------------------------------
# Availability: None when usable on the device, else the reason
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _import_error(module: str, attribute: str) -> str | None:
    """None when ``module.attribute`` imports, else why not."""
    try:
        getattr(importlib.import_module(module), attribute)
    except Exception as error:  # ImportError, or a broken install raising anything else
        return f"cannot import {module}.{attribute} ({type(error).__name__}: {error})"
    return None


def _check_triton(device: torch.device) -> str | None:
    if not triton_available():
        return "triton is not installed"
    if device.type == "cuda" or (device.type == "cpu" and triton_interpret()):
        return None
    return f"the Triton kernel needs CUDA (or TRITON_INTERPRET=1 on CPU, for tests), got {device.type}"


def _check_flex(device: torch.device) -> str | None:
    missing = _import_error("torch.nn.attention.flex_attention", "flex_attention")
    if missing:
        return f"this torch {torch.__version__} has no FlexAttention: {missing}"
    if device.type not in ("cuda", "cpu"):
        return f"FlexAttention is not supported on {device.type}"
    return None


def _check_cuda_import(module: str, attribute: str, what: str) -> Callable[[torch.device], str | None]:
    def check(device: torch.device) -> str | None:
        if device.type != "cuda":
            return f"{what} needs a CUDA device, got {device.type}"
        missing = _import_error(module, attribute)
        return f"{what} is not importable: {missing}" if missing else None

    return check


def _always(device: torch.device) -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """One attention backend: its function, when it can run, and what it promises.

    Attributes:
        name: the table key.
        fn: ``fn(q, k, v, layout, softmax_scale) -> out``, inputs already validated.
        check: ``check(device)``: None when it can run there, else the reason.
        half_only: FlashAttention-style kernels that take fp16/bf16 inputs only.
        isolates_samples: a non-finite value in one sample never reaches another.
    """

    name: str
    fn: BackendFn
    check: Callable[[torch.device], str | None]
    half_only: bool = False
    isolates_samples: bool = True


# The one table (read-only); "auto" is not a backend but a rule over it (_AUTO_ORDER).
BACKENDS: Mapping[str, Backend] = types.MappingProxyType({b.name: b for b in (
    Backend("triton", _triton_backend, _check_triton),
    Backend("torch", _torch_backend, _always),
    Backend("flex", _flex_backend, _check_flex, isolates_samples=False),
    Backend("varlen_attn", _varlen_attn_backend,
            _check_cuda_import("torch.nn.attention.varlen", "varlen_attn", "torch.nn.attention.varlen.varlen_attn"),
            half_only=True),
    Backend("flash_attn", _flash_attn_backend,
            _check_cuda_import("flash_attn", "flash_attn_varlen_func", "flash-attn (pip install flash-attn)"),
            half_only=True),
    Backend("xformers", _xformers_backend,
            _check_cuda_import("xformers.ops", "memory_efficient_attention", "xformers (pip install xformers)")),
)})

# Preference order for "auto", fastest first. CPU: the batched SDPA path (the interpreter and
# the unfused CPU flex are for testing, not speed).
_AUTO_ORDER = {
    "cuda": ("triton", "flash_attn", "varlen_attn", "xformers", "torch"),
    "cpu": ("torch",),
}

# Names of 0.1.0 whose padded implementations moved to the benchmarks: same results via "torch".
_DEPRECATED = {"sdpa_masked": "torch", "padded": "torch"}

BACKEND_NAMES: tuple[str, ...] = (*BACKENDS, "auto")


def available_backends(device: torch.device | str = "cpu") -> dict[str, str | None]:
    """Every backend name (``auto`` excluded) -> ``None`` when it can run on ``device``, else why not.

    ``varlen_attn`` and ``flash_attn`` additionally need fp16/bf16 inputs (checked when resolved).
    """
    device = torch.device(device)
    return {name: backend.check(device) for name, backend in BACKENDS.items()}


def backend_name(name: object, argument: str = "backend") -> str:
    """``name`` checked: a name of `BACKEND_NAMES` (a deprecated one is mapped, with a warning).

    Raises (naming ``argument``, the caller's parameter):
        TypeError: ``name`` is not a string.  ValueError: an unknown name.
    """
    if not isinstance(name, str):
        raise TypeError(f"{argument}: attention backend must be a name (str), got {type(name).__name__}")
    if name in _DEPRECATED:
        warnings.warn(
            f"attention backend {name!r} is deprecated: the padded baselines moved to "
            f"elasticast_kernels.bench.padded; using {_DEPRECATED[name]!r} (same results, no padding)",
            DeprecationWarning, stacklevel=3,
        )
        return _DEPRECATED[name]
    if name not in BACKEND_NAMES:
        raise ValueError(f"{argument}: unknown attention backend {name!r}; choose one of {list(BACKEND_NAMES)}")
    return name


def resolve_backend(name: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The concrete backend ``name`` stands for on ``device`` (and ``dtype`` if given).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: unknown name, or a backend that cannot run there (the message says why).
    """
    name = backend_name(name)
    device = torch.device(device)
    if name == "auto":
        for candidate in _AUTO_ORDER.get(device.type, ("torch",)):
            backend = BACKENDS[candidate]
            needs_half = backend.half_only and dtype not in (torch.float16, torch.bfloat16)
            if backend.check(device) is None and not needs_half:
                return candidate
        return "torch"
    backend = BACKENDS[name]
    reason = backend.check(device)
    if reason is not None:
        usable = [n for n, why in available_backends(device).items() if why is None]
        raise ValueError(f"attention backend {name!r} is not available on {device}: {reason}. Available here: {usable}")
    if backend.half_only and dtype is not None and dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"attention backend {name!r} needs float16 or bfloat16 inputs, got {dtype} (use autocast)")
    return name


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: SeqLayout,
    softmax_scale: float,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-sample self-attention on the packed layout.

    Args:
        q, k, v: ``[total_tokens, heads, head_dim]``, same dtype and device (strided views are fine).
        layout: the segments (`SeqLayout`); ``layout.cu_seqlens`` on the same device.
        softmax_scale: finite number multiplying the scores before the softmax (ElasticAST uses 1.0).
        backend: a name of `BACKEND_NAMES`.

    Returns:
        ``[total_tokens, heads, head_dim]`` in q's dtype: ``out[t] = softmax(scale * q[t] K_s^T) V_s``
        over the tokens of t's own sample s.

    Raises:
        TypeError / ValueError: malformed inputs, a non-finite or non-numeric scale, an unknown
            or unavailable backend.
    """
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 3:
            raise ValueError(f"{name} must be [total_tokens, heads, head_dim], got shape {tuple(tensor.shape)}")
    for name, tensor in (("k", k), ("v", v)):
        if tensor.shape != q.shape or tensor.dtype != q.dtype or tensor.device != q.device:
            raise ValueError(
                f"{name} must match q: got {tuple(tensor.shape)} {tensor.dtype} {tensor.device}, "
                f"q is {tuple(q.shape)} {q.dtype} {q.device}"
            )
    if not isinstance(layout, SeqLayout):
        raise TypeError(f"layout must be a SeqLayout, got {type(layout).__name__}")
    if layout.device != q.device:
        raise ValueError(f"layout.cu_seqlens is on {layout.device} but q is on {q.device}")
    if layout.total_tokens != q.shape[0]:
        raise ValueError(f"layout covers {layout.total_tokens} tokens but q has {q.shape[0]}")
    scale = resolve_softmax_scale(softmax_scale, q.shape[-1], allow_none=False)
    return BACKENDS[resolve_backend(backend, q.device, q.dtype)].fn(q, k, v, layout, scale)
