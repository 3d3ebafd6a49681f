"""Self-attention on the packed varlen layout, with one registry of interchangeable backends.

Every backend computes the same thing: for each sample (segment of ``cu_seqlens``), softmax
attention among that sample's tokens only, on packed ``[total_tokens, heads, head_dim]`` tensors.
They differ in how they get there, which is what the benchmarks compare:

==============  ==================================================================================
``triton``      our varlen kernel (``elasticast_kernels.ops.varlen_attention``); CUDA, or CPU
                under ``TRITON_INTERPRET=1`` (slow, for testing only)
``torch``       one ``scaled_dot_product_attention`` call per sample; exact, no padding, any device
``sdpa_masked`` the published ElasticAST way: pad every pack to the longest pack, dense
                block-diagonal bool mask, one SDPA call (the benchmark baseline)
``padded``      AST style: pad every sample to the longest sample, key-padding mask
``flex``        ``torch.nn.attention.flex_attention`` with a document mask (compiled on CUDA; on
                CPU it runs eagerly, unfused, materialising ``[heads, total, total]`` scores,
                and has no backward there: inference only on CPU)
``varlen_attn`` ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention; CUDA, fp16/bf16 only)
``flash_attn``  ``flash_attn.flash_attn_varlen_func`` when the package is importable (CUDA)
``xformers``    ``xformers.ops.memory_efficient_attention`` with a ``BlockDiagonalMask`` (CUDA)
``auto``        the fastest available correct one for the tensors' device and dtype
==============  ==================================================================================

Layout facts that live on the host (segment lengths, pack boundaries) travel in a `SeqLayout`, so
no backend needs a device-to-host sync. Masks and index tensors a backend derives from the layout
are cached on the layout object, so the encoder builds them once per forward, not once per layer.
"""
from __future__ import annotations

import functools
import importlib
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F

from elasticast_kernels.ops._common import triton_available, triton_interpret

if TYPE_CHECKING:  # pragma: no cover
    from elasticast_kernels.packing import PackedBatch

BackendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "SeqLayout", float], torch.Tensor]

__all__ = [
    "SeqLayout",
    "attention",
    "available_backends",
    "resolve_backend",
    "BACKENDS",
    "BACKEND_NAMES",
    "ROW_PADDED_BACKENDS",
    "row_padded",
    "host_to_device",
]


def host_to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy a small CPU tensor of host facts to ``device`` without a host-device sync.

    A plain ``.to("cuda")`` from pageable memory waits for the stream (every queued kernel);
    a copy from pinned memory with ``non_blocking=True`` just queues (the caching host allocator
    keeps the pinned block alive until the copy is done).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass(frozen=True)
class SeqLayout:
    """The packed varlen layout a backend needs, with the host-side facts kept on the host.

    Attributes:
        cu_seqlens: int32 ``[num_samples + 1]`` segment offsets, on the data's device.
        max_seqlen: longest segment, a Python int.
        seqlens: per-segment token counts (host copy of ``diff(cu_seqlens)``).
        pack_offsets: segment offsets of the packs, ``num_packs + 1`` entries: segments
            ``pack_offsets[p]:pack_offsets[p + 1]`` share pack ``p`` (only ``sdpa_masked`` cares).
    """

    cu_seqlens: torch.Tensor
    max_seqlen: int
    seqlens: tuple[int, ...]
    pack_offsets: tuple[int, ...]
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.seqlens) + 1 != self.cu_seqlens.shape[0]:
            raise ValueError(
                f"seqlens has {len(self.seqlens)} entries but cu_seqlens has {self.cu_seqlens.shape[0]} (expected one more)"
            )
        if self.max_seqlen < max(self.seqlens, default=0):
            raise ValueError(f"max_seqlen={self.max_seqlen} is below the longest segment {max(self.seqlens)}")
        offsets = self.pack_offsets
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(self.seqlens) or any(
            b < a for a, b in zip(offsets, offsets[1:])
        ):
            raise ValueError(
                f"pack_offsets must rise from 0 to num_samples={len(self.seqlens)}, got {offsets}"
            )

    @classmethod
    def from_packed(cls, batch: "PackedBatch") -> "SeqLayout":
        """The layout of a `PackedBatch` (no device sync: its host facts are copied)."""
        return cls(
            cu_seqlens=batch.cu_seqlens,
            max_seqlen=int(batch.max_seqlen),
            seqlens=tuple(int(n) for n in batch.seqlens),
            pack_offsets=tuple(int(o) for o in batch.pack_offsets),
        )

    @classmethod
    def from_seqlens(
        cls,
        seqlens: Sequence[int],
        device: torch.device | str = "cpu",
        pack_offsets: Sequence[int] | None = None,
    ) -> "SeqLayout":
        """Build a layout from host segment lengths; ``pack_offsets=None`` means one pack holds all."""
        lengths = tuple(int(n) for n in seqlens)
        if any(n < 0 for n in lengths):
            raise ValueError(f"seqlens must be non-negative, got {list(lengths)}")
        cu = [0]
        for n in lengths:
            cu.append(cu[-1] + n)
        offsets = (0, len(lengths)) if pack_offsets is None else tuple(int(o) for o in pack_offsets)
        return cls(
            cu_seqlens=host_to_device(torch.tensor(cu, dtype=torch.int32), device),
            max_seqlen=max(lengths, default=0),
            seqlens=lengths,
            pack_offsets=offsets,
        )

    @property
    def total_tokens(self) -> int:
        return sum(self.seqlens)

    @property
    def num_samples(self) -> int:
        return len(self.seqlens)

    def cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """``build()`` once per layout and key (masks, index tensors shared by every layer)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


# ------------------------------------------------------------------------------------------------
# Helpers shared by the padding backends
# ------------------------------------------------------------------------------------------------
def _segment_ids(layout: SeqLayout, device: torch.device) -> torch.Tensor:
    """int32 ``[total_tokens]``: which segment each packed token belongs to."""

    def build() -> torch.Tensor:
        ids = torch.repeat_interleave(
            torch.arange(layout.num_samples, dtype=torch.int32), torch.tensor(layout.seqlens, dtype=torch.int64)
        )
        return host_to_device(ids, device)

    return layout.cached(("segment_ids", device), build)


def _pad_index(row_lengths: Sequence[int], row_len: int, device: torch.device) -> torch.Tensor:
    """int64 ``[sum(row_lengths)]``: flat position ``row * row_len + offset`` of each packed token,
    when consecutive runs of ``row_lengths`` tokens are laid out as rows padded to ``row_len``."""
    lengths = torch.tensor(list(row_lengths), dtype=torch.int64)
    row = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    row_start = torch.cumsum(lengths, 0) - lengths  # first packed token of each row
    index = torch.arange(int(lengths.sum())) - row_start[row] + row * row_len
    return host_to_device(index, device)


def _to_rows(x: torch.Tensor, index: torch.Tensor, rows: int, row_len: int) -> torch.Tensor:
    """Packed ``[total, heads, head_dim]`` -> zero-padded ``[rows, heads, row_len, head_dim]``."""
    padded = x.new_zeros(rows * row_len, *x.shape[1:])
    padded.index_copy_(0, index, x)
    return padded.view(rows, row_len, *x.shape[1:]).transpose(1, 2)


def _from_rows(out: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Inverse of `_to_rows`: ``[rows, heads, row_len, head_dim]`` -> packed ``[total, heads, head_dim]``."""
    rows, heads, row_len, head_dim = out.shape
    return out.transpose(1, 2).reshape(rows * row_len, heads, head_dim).index_select(0, index)


# ------------------------------------------------------------------------------------------------
# Backends: each one is fn(q, k, v, layout, softmax_scale) -> [total_tokens, heads, head_dim]
# ------------------------------------------------------------------------------------------------
def _torch_backend(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    # One SDPA per sample on [1, heads, n, head_dim] views: exact, no padding, no mask. The
    # batch axis matters: the CPU flash kernel only takes 4-D inputs (3-D falls back to the
    # unfused math path, about 6x slower). The loop is short: one call per sample.
    outs = []
    for q_s, k_s, v_s in zip(q.split(layout.seqlens), k.split(layout.seqlens), v.split(layout.seqlens)):
        if q_s.shape[0] == 0:
            outs.append(q_s)
            continue
        out = F.scaled_dot_product_attention(
            q_s.transpose(0, 1).unsqueeze(0),
            k_s.transpose(0, 1).unsqueeze(0),
            v_s.transpose(0, 1).unsqueeze(0),
            scale=softmax_scale,
        )
        outs.append(out.squeeze(0).transpose(0, 1))
    return torch.cat(outs) if outs else torch.empty_like(q)


def _pack_token_counts(layout: SeqLayout) -> list[int]:
    offsets = layout.pack_offsets
    return [sum(layout.seqlens[offsets[p] : offsets[p + 1]]) for p in range(len(offsets) - 1)]


def _sdpa_masked_backend(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    # The published model's way: each pack is one row, padded to the longest pack, with a dense
    # [rows, row_len, row_len] mask that lets a token see only its own sample. Padding tokens form
    # a block of their own so that no row of the mask is empty (an empty row gives NaN).
    device = q.device
    pack_lengths = _pack_token_counts(layout)
    rows, row_len = len(pack_lengths), max(pack_lengths, default=0)
    already_rows = all(n == row_len for n in pack_lengths)  # the model padded the rows itself

    def build() -> tuple[torch.Tensor | None, torch.Tensor]:
        ids = torch.full((rows, row_len), -1, dtype=torch.int32)
        offsets = layout.pack_offsets
        for p in range(rows):
            start = 0
            for segment in range(offsets[p], offsets[p + 1]):
                n = layout.seqlens[segment]
                ids[p, start : start + n] = segment
                start += n
        mask = (ids[:, :, None] == ids[:, None, :]).unsqueeze(1)  # [rows, 1, row_len, row_len]
        index = None if already_rows else _pad_index(pack_lengths, row_len, device)
        return index, host_to_device(mask, device)

    index, mask = layout.cached(("sdpa_masked", device), build)
    if index is None:
        to_rows = lambda x: x.view(rows, row_len, *x.shape[1:]).transpose(1, 2)  # noqa: E731
    else:
        to_rows = lambda x: _to_rows(x, index, rows, row_len)  # noqa: E731
    out = F.scaled_dot_product_attention(to_rows(q), to_rows(k), to_rows(v), attn_mask=mask, scale=softmax_scale)
    if index is None:
        return out.transpose(1, 2).reshape(q.shape)
    return _from_rows(out, index)


# Backends that stand for a whole model running on padded rows (the published ElasticAST): the
# model pads its encoder input with `row_padded` before the blocks, so every layer pays for the
# padding as the published model does, not only the attention.
ROW_PADDED_BACKENDS = frozenset({"sdpa_masked"})


def row_padded(layout: SeqLayout, device: torch.device | str) -> tuple[SeqLayout, torch.Tensor]:
    """The published model's layout of a packed batch: each pack one row, padded to the longest.

    Returns:
        ``(rows_layout, index)``: ``rows_layout`` covers ``num_packs * row_len`` tokens, with each
        row's padding as one extra segment (padding attends only to padding, so its values never
        reach a real token); ``index`` (int64 ``[total_tokens]``, on ``device``) is where every
        packed token sits in the padded buffer (``padded[index] = packed``).
    """
    device = torch.device(device)

    def build() -> tuple[SeqLayout, torch.Tensor]:
        pack_lengths = _pack_token_counts(layout)
        row_len = max(pack_lengths, default=0)
        seqlens, offsets = [], [0]
        for p, used in enumerate(pack_lengths):
            seqlens.extend(layout.seqlens[layout.pack_offsets[p] : layout.pack_offsets[p + 1]])
            if used < row_len:
                seqlens.append(row_len - used)
            offsets.append(len(seqlens))
        rows_layout = SeqLayout.from_seqlens(seqlens, device, offsets)
        return rows_layout, _pad_index(pack_lengths, row_len, device)

    return layout.cached(("row_padded", device), build)


def _padded_backend(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    # AST style: every sample is its own row, padded to the longest sample; a key-padding mask.
    device = q.device
    rows, row_len = layout.num_samples, layout.max_seqlen

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor(layout.seqlens, dtype=torch.int64)
        key_valid = torch.arange(row_len)[None, :] < lengths[:, None]  # [rows, row_len]
        key_mask = host_to_device(key_valid[:, None, None, :].contiguous(), device)
        return _pad_index(layout.seqlens, row_len, device), key_mask

    index, key_mask = layout.cached(("padded", device), build)
    out = F.scaled_dot_product_attention(
        _to_rows(q, index, rows, row_len),
        _to_rows(k, index, rows, row_len),
        _to_rows(v, index, rows, row_len),
        attn_mask=key_mask,
        scale=softmax_scale,
    )
    return _from_rows(out, index)


@functools.lru_cache(maxsize=None)
def _compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _flex_backend(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    device, total = q.device, q.shape[0]
    segment_ids = _segment_ids(layout, device)

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
        out = flex(
            q.transpose(0, 1).unsqueeze(0),
            k.transpose(0, 1).unsqueeze(0),
            v.transpose(0, 1).unsqueeze(0),
            block_mask=block_mask,
            scale=softmax_scale,
        )
    return out.squeeze(0).transpose(0, 1)


def _varlen_attn_backend(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    if not q.is_cuda:
        raise NotImplementedError("torch.nn.attention.varlen.varlen_attn runs on CUDA only; use backend='torch' on CPU")
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
    from elasticast_kernels.ops.varlen_attention import varlen_attention

    return varlen_attention(q, k, v, layout.cu_seqlens, layout.max_seqlen, softmax_scale=softmax_scale)


# ------------------------------------------------------------------------------------------------
# Availability: None when usable on the device, else the reason
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _import_error(module: str, attribute: str | None = None) -> str | None:
    """None when ``module`` (and ``module.attribute``) imports, else why not."""
    try:
        imported = importlib.import_module(module)
        if attribute is not None:
            getattr(imported, attribute)
    except Exception as error:  # ImportError, or a broken install raising anything else
        what = module if attribute is None else f"{module}.{attribute}"
        return f"cannot import {what} ({type(error).__name__}: {error})"
    return None


def _needs_cuda(device: torch.device, what: str) -> str | None:
    return None if device.type == "cuda" else f"{what} needs a CUDA device, got {device.type}"


def _check_triton(device: torch.device) -> str | None:
    if not triton_available():
        return "triton is not installed"
    missing = _import_error("elasticast_kernels.ops.varlen_attention", "varlen_attention")
    if missing:
        return missing
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


def _check_varlen_attn(device: torch.device) -> str | None:
    missing = _import_error("torch.nn.attention.varlen", "varlen_attn")
    if missing:
        return f"this torch {torch.__version__} has no varlen_attn: {missing}"
    return _needs_cuda(device, "torch.nn.attention.varlen.varlen_attn")


def _check_package(module: str, attribute: str, package: str) -> Callable[[torch.device], str | None]:
    def check(device: torch.device) -> str | None:
        missing = _needs_cuda(device, package)
        if missing:
            return missing
        missing = _import_error(module, attribute)
        return f"{package} is not importable: {missing} (pip install {package})" if missing else None

    return check


def _always(device: torch.device) -> str | None:
    return None


@dataclass(frozen=True)
class _Backend:
    fn: BackendFn
    check: Callable[[torch.device], str | None]
    half_only: bool = False  # FlashAttention-style kernels: fp16/bf16 inputs only


_REGISTRY: dict[str, _Backend] = {
    "triton": _Backend(_triton_backend, _check_triton),
    "torch": _Backend(_torch_backend, _always),
    "sdpa_masked": _Backend(_sdpa_masked_backend, _always),
    "padded": _Backend(_padded_backend, _always),
    "flex": _Backend(_flex_backend, _check_flex),
    "varlen_attn": _Backend(_varlen_attn_backend, _check_varlen_attn, half_only=True),
    "flash_attn": _Backend(
        _flash_attn_backend, _check_package("flash_attn", "flash_attn_varlen_func", "flash-attn"), half_only=True
    ),
    "xformers": _Backend(_xformers_backend, _check_package("xformers.ops", "memory_efficient_attention", "xformers")),
}

# Preference order for "auto", fastest first. CPU: the per-sample SDPA loop (the interpreter
# and the unfused CPU flex are for testing, not speed).
_AUTO_ORDER = {
    "cuda": ("triton", "flash_attn", "varlen_attn", "xformers", "torch"),
    "cpu": ("torch",),
}

BACKEND_NAMES: tuple[str, ...] = (*_REGISTRY, "auto")


def _device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def available_backends(device: torch.device | str = "cpu") -> dict[str, str | None]:
    """Every backend name (``auto`` excluded) -> ``None`` when it can run on ``device``, else why not.

    ``varlen_attn`` and ``flash_attn`` additionally need fp16/bf16 inputs (checked when called).
    """
    device = _device(device)
    return {name: backend.check(device) for name, backend in _REGISTRY.items()}


def resolve_backend(name: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The concrete backend ``name`` stands for on ``device`` (and ``dtype`` if given).

    Raises:
        ValueError: unknown name, or a backend that cannot run there (the message says why).
    """
    device = _device(device)
    if name == "auto":
        for candidate in _AUTO_ORDER.get(device.type, ("torch",)):
            backend = _REGISTRY[candidate]
            needs_half = backend.half_only and dtype not in (torch.float16, torch.bfloat16)
            if backend.check(device) is None and not needs_half:
                return candidate
        return "torch"
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {list(BACKEND_NAMES)}")
    reason = _REGISTRY[name].check(device)
    if reason is not None:
        usable = [n for n, why in available_backends(device).items() if why is None]
        raise ValueError(f"attention backend {name!r} is not available on {device}: {reason}. Available here: {usable}")
    if _REGISTRY[name].half_only and dtype is not None and dtype not in (torch.float16, torch.bfloat16):
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
        softmax_scale: multiplies the scores before the softmax (ElasticAST uses 1.0).
        backend: a name of `BACKEND_NAMES`.

    Returns:
        ``[total_tokens, heads, head_dim]`` in q's dtype: ``out[t] = softmax(scale * q[t] K_s^T) V_s``
        over the tokens of t's own sample s.

    Raises:
        TypeError / ValueError: malformed inputs, an unknown or unavailable backend.
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
    if layout.cu_seqlens.device != q.device:
        raise ValueError(f"layout.cu_seqlens is on {layout.cu_seqlens.device} but q is on {q.device}")
    if not torch.compiler.is_compiling() and layout.total_tokens != q.shape[0]:
        raise ValueError(f"layout covers {layout.total_tokens} tokens but q has {q.shape[0]}")
    return BACKENDS[backend](q, k, v, layout, float(softmax_scale))


def _auto_backend(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
    return _REGISTRY[resolve_backend("auto", q.device, q.dtype)].fn(q, k, v, layout, softmax_scale)


def _checked(name: str) -> BackendFn:
    backend = _REGISTRY[name]

    def run(q, k, v, layout: SeqLayout, softmax_scale: float) -> torch.Tensor:
        resolve_backend(name, q.device, q.dtype)  # clear error if it cannot run here
        return backend.fn(q, k, v, layout, softmax_scale)

    run.__name__ = f"{name}_attention"
    run.__doc__ = f"The {name!r} backend (see elasticast_kernels.backends)."
    return run


BACKENDS: dict[str, BackendFn] = {name: _checked(name) for name in _REGISTRY}
BACKENDS["auto"] = _auto_backend
