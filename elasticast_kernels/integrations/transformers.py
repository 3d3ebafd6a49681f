"""Our varlen attention inside Hugging Face ``transformers`` models: ``attn_implementation="elasticast"``.

    from elasticast_kernels.integrations.transformers import register
    register()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="elasticast")

`register` adds an attention function to ``transformers.AttentionInterface`` and, under the same
name, a mask function to ``AttentionMaskInterface`` (transformers' flash-attention one: it hands the
attention function the 2-D padding mask, or None when there is no padding; without a registered
mask function transformers would pass no mask at all and padding would be silently ignored).

Every batch layout a model can be given works, and none of them makes the attention layers wait
for the device (no host sync; each layout is derived once per forward and reused by every layer):

- **padding-free** batches from ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``:
  ``cu_seq_lens_q``/``cu_seq_lens_k`` (and ``max_length_q``/``max_length_k``, or the
  ``max_seqlen_q``/``max_seqlen_k`` spelling) go straight to `varlen_attention`.
- **packed rows without those kwargs** (``position_ids`` restarting per sequence): sequence starts
  are found on the device (a position that does not continue the previous one) and turned into
  offsets of one sample per token, almost all empty, so no count has to be read back.
- **padded batches** (``attention_mask``): each row becomes three samples (padding before, the
  real tokens, padding after), so left and right padding both work without gathering tokens; the
  padding positions of the output are 0. The real tokens of a row must be contiguous (true of
  tokenizer padding; checked on the CPU, where reading the mask is free).
- plain batches: every row one sample.

transformers itself may still read values back once per forward outside the attention layers
(its mask preparation inspects ``position_ids`` when no mask is given, and a padding mask's
``all()``); those are transformers' and the same for every attention implementation.

Causality comes from ``is_causal`` (or the module), ``sliding_window`` from the model (a window of
``w`` keys back, as transformers' flash and SDPA paths define it), ``softcap`` from models that use
it; grouped-query attention needs no repeated keys. Attention dropout and attention sinks
(``s_aux``) are refused with ``NotImplementedError``; ``output_attentions`` returns no weights.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch

from elasticast_kernels._optional import import_optional
from elasticast_kernels.ops._common import use_triton
from elasticast_kernels.ops.flash_attn_interface import flash_attn_func
from elasticast_kernels.ops.varlen_attention import LaunchSchedule, launch_schedule, varlen_attention

__all__ = ["ATTENTION_NAME", "register", "elasticast_attention_forward"]

ATTENTION_NAME = "elasticast"


def register(name: str = ATTENTION_NAME) -> str:
    """Register the attention and mask functions with transformers under ``name``; returns it.

    Idempotent. Pass ``attn_implementation=name`` to ``from_pretrained``/``from_config`` after.

    Raises:
        ImportError: transformers is not installed (the message names the ``hf`` extra).
    """
    import_optional("transformers", "the Hugging Face integration")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(name, elasticast_attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name


# --- layouts ------------------------------------------------------------------------------------
# Each derived layout is cached against the tensor it comes from (the same object reaches every
# layer of one forward), keyed also by its version counter, so a buffer refilled in place (a
# static input of a CUDA graph, a reused collate buffer) is never served a stale layout.
_layouts: dict[int, tuple] = {}  # id(source) -> (weak ref to source, key, layout, keep_alive)


def _forget(ref: weakref.ref, source_id: int, table: dict) -> None:
    entry = table.get(source_id)
    if entry is not None and entry[0] is ref:
        del table[source_id]


def _cached(source: torch.Tensor, key: tuple, build, keep_alive: Any = None) -> tuple:
    """``build()`` -> (cu_seqlens_q, cu_seqlens_k, schedule or None), once per ``source`` and ``key``.
    ``keep_alive``: another tensor the key names by id (held, so the id cannot be reused)."""
    if torch.compiler.is_compiling():  # a traced graph builds it once anyway
        return build()
    key = (*key, source._version)
    entry = _layouts.get(id(source))
    if entry is not None and entry[0]() is source and entry[1] == key:
        return entry[2]
    layout = build()
    source_id = id(source)
    # the table is bound now: at interpreter exit the module's globals may already be gone
    ref = weakref.ref(source, lambda dead, i=source_id, table=_layouts: _forget(dead, i, table))
    _layouts[source_id] = (ref, key, layout, keep_alive)
    return layout


def _with_schedule(cu_q: torch.Tensor, cu_k: torch.Tensor, device_tensor: torch.Tensor) -> tuple:
    schedule = launch_schedule(cu_q, cu_k) if use_triton(device_tensor) else None
    return cu_q, cu_k, schedule


def _as_offsets(cu: Any, name: str) -> torch.Tensor:
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of sequence offsets, got {type(cu).__name__}")
    return cu if cu.dtype == torch.int32 else cu.to(torch.int32)


def _offsets_from_flash_kwargs(kwargs: dict, query: torch.Tensor) -> tuple:
    cu_q = kwargs["cu_seq_lens_q"]
    cu_k = kwargs.get("cu_seq_lens_k")

    def build():
        offsets_q = _as_offsets(cu_q, "cu_seq_lens_q")
        offsets_k = offsets_q if cu_k is None or cu_k is cu_q else _as_offsets(cu_k, "cu_seq_lens_k")
        return _with_schedule(offsets_q, offsets_k, query)

    versions = ("flash_kwargs", id(cu_k), getattr(cu_k, "_version", None))
    return _cached(cu_q, versions, build, keep_alive=cu_k)


def _offsets_from_positions(position_ids: torch.Tensor, batch: int, seqlen: int, query: torch.Tensor) -> tuple:
    """One sample per token: sample ``t`` spans from the start of the sequence holding token ``t``
    to the start of the next sequence if one begins at ``t + 1``, else nothing. A sequence starts at
    a row start or where a position does not continue the previous one (any first position works)."""

    def build():
        positions = position_ids.expand(batch, seqlen).reshape(-1)
        total = batch * seqlen
        starts = torch.ones(total, dtype=torch.bool, device=positions.device)
        starts[1:] = positions[1:] != positions[:-1] + 1
        starts[::seqlen] = True
        index = torch.arange(total, device=positions.device)
        first = torch.where(starts, index, 0).cummax(0).values
        cu = torch.cat([first, index.new_full((1,), total)]).to(torch.int32)
        return _with_schedule(cu, cu, query)

    return _cached(position_ids, ("positions", batch, seqlen, query.device), build)


def _row_segments(mask: torch.Tensor) -> torch.Tensor:
    """int32 offsets of three samples per row of a bool ``[rows, length]`` mask: the padding
    before the row's real tokens, the real tokens, the padding after."""
    rows, length = mask.shape
    count = mask.sum(1)
    first = torch.where(count > 0, mask.to(torch.int8).argmax(1), 0)
    row_start = torch.arange(rows, device=mask.device) * length
    bounds = torch.stack([row_start, row_start + first, row_start + first + count], 1).reshape(-1)
    return torch.cat([bounds, bounds.new_full((1,), rows * length)]).to(torch.int32)


def _check_contiguous_rows(mask: torch.Tensor) -> None:
    if mask.device.type != "cpu" or torch.compiler.is_compiling():
        return  # reading the mask would wait for the device: padding masks are contiguous in practice
    count = mask.sum(1)
    first = mask.to(torch.int8).argmax(1)
    last = mask.shape[1] - 1 - mask.flip(1).to(torch.int8).argmax(1)
    holes = (count > 0) & (last - first + 1 != count)
    if bool(holes.any()):
        row = int(holes.nonzero()[0])
        raise ValueError(f"attention_mask row {row} has padding between real tokens; the elasticast attention "
                         "needs each row's real tokens contiguous (left or right padding)")


def _offsets_from_mask(attention_mask: torch.Tensor, seqlen_q: int, query: torch.Tensor) -> tuple:
    def build():
        mask = attention_mask.to(torch.bool)
        _check_contiguous_rows(mask)
        cu_k = _row_segments(mask)
        # queries are the last seqlen_q positions of the keys' row (transformers' convention)
        cu_q = cu_k if seqlen_q == mask.shape[1] else _row_segments(mask[:, -seqlen_q:])
        return _with_schedule(cu_q, cu_k, query)

    return _cached(attention_mask, ("mask", seqlen_q, query.device), build)


def _int_hint(value: Any) -> int | None:
    # a max length given as a tensor is only a hint: never read it back (that would sync)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# --- the attention function ---------------------------------------------------------------------


def elasticast_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                 value: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float = 0.0,
                                 scaling: float | None = None, sliding_window: int | None = None,
                                 softcap: float | None = None, is_causal: bool | None = None, **kwargs: Any
                                 ) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: ``query`` ``[batch, heads, seq_q, head_dim]``,
    ``key``/``value`` ``[batch, heads_k, seq_k, head_dim]``; returns ``([batch, seq_q, heads,
    head_dim], None)``. See the module docstring for the batch layouts it understands.

    Raises:
        NotImplementedError: attention dropout in training, or attention sinks (``s_aux``).
        ValueError: a 2-D ``attention_mask`` whose rows are not contiguous runs (CPU only), or
            anything `varlen_attention` rejects.
    """
    if dropout:
        raise NotImplementedError(f"dropout={dropout}: the elasticast attention has no attention dropout "
                                  "(set the model's attention_dropout to 0.0)")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("s_aux: attention sinks are not supported by the elasticast attention")
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    window = (sliding_window - 1, sliding_window - 1) if sliding_window else (-1, -1)
    batch, heads, seqlen_q, head_dim = query.shape
    seqlen_k = key.shape[2]
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # [batch, seq, heads, head_dim]
    options = dict(softmax_scale=scaling, causal=causal, window_size=window, softcap=softcap or 0.0)

    position_ids = kwargs.get("position_ids")
    max_q = _int_hint(kwargs.get("max_length_q", kwargs.get("max_seqlen_q")))
    max_k = _int_hint(kwargs.get("max_length_k", kwargs.get("max_seqlen_k")))
    if attention_mask is not None:  # transformers' order: a padding mask wins over varlen kwargs
        if attention_mask.dim() != 2:
            raise ValueError(f"the elasticast attention takes a 2-D padding mask, got shape {tuple(attention_mask.shape)} "
                             "(register() installs the mask function that provides it)")
        layout = _offsets_from_mask(attention_mask, seqlen_q, query)
        max_q = max_k = None
    elif kwargs.get("cu_seq_lens_q") is not None:
        layout = _offsets_from_flash_kwargs(kwargs, query)
    elif isinstance(position_ids, torch.Tensor) and seqlen_q == seqlen_k and seqlen_q > 1:
        layout = _offsets_from_positions(position_ids, batch, seqlen_q, query)
        max_q = max_k = None
    else:
        out = flash_attn_func(q, k, v, **options)
        return out, None
    cu_q, cu_k, schedule = layout
    out = varlen_attention(q.reshape(-1, heads, head_dim), k.reshape(-1, k.shape[2], head_dim),
                           v.reshape(-1, v.shape[2], head_dim), cu_q, max_q, cu_seqlens_k=cu_k, max_seqlen_k=max_k,
                           schedule=schedule if isinstance(schedule, LaunchSchedule) else None, **options)
    out = out.view(batch, seqlen_q, heads, head_dim)
    if attention_mask is not None:
        # padding positions attended among themselves: give them 0, as transformers' flash path does
        keep = attention_mask[:, -seqlen_q:].to(torch.bool)[:, :, None, None]
        out = torch.where(keep, out, out.new_zeros(()))
    return out, None
