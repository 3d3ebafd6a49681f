"""Data-parallel wrapping (DDP or FSDP2) and full, unsharded training state for checkpoints.

Checkpoints hold the *full* model state dict under the model's own (published) keys, whatever
the wrapper: ``torch.distributed.checkpoint.state_dict`` strips DDP's ``module.`` prefix and
gathers FSDP shards, and keys the optimiser state by parameter name rather than by position.
A checkpoint written by N ranks under DDP therefore loads into a plain model with
``model.load_state_dict(ckpt["model"])``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel

from .distributed import DistributedContext

__all__ = ["wrap_model", "unwrap_model", "unsharded_model", "full_model_state", "full_training_state",
           "load_training_state"]


def wrap_model(model: nn.Module, ctx: DistributedContext, fsdp: bool = False) -> nn.Module:
    """Move ``model`` to ``ctx.device`` and wrap it for data parallelism.

    Without a process group the model is returned as it is (on the device). With one:
    ``DistributedDataParallel`` (``device_ids=None``: the caller moves each batch itself, so DDP
    never walks the ``PackedBatch``), or with ``fsdp=True`` FSDP2's ``fully_shard`` on every
    transformer block and then on the root (parameters become sharded DTensors; works on CPU
    with gloo and on CUDA with NCCL in torch >= 2.6).

    Every rank must build ``model`` from the same seed: FSDP does not broadcast the initial
    weights (DDP does).
    """
    model = model.to(ctx.device)
    if not ctx.distributed:
        return model
    if not fsdp:
        return DistributedDataParallel(model, device_ids=None)
    from torch.distributed.fsdp import fully_shard

    for block in _transformer_blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


def _transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks (the children of the first ``ModuleList`` in the model), each one FSDP unit."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            return list(module.children())
    return []


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (FSDP2 shards in place: the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def unsharded_model(model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module | None:
    """A plain model with the trained weights, for evaluation or export on rank 0.

    Under DDP (or in one process) that is the wrapped module itself, on every rank. Under FSDP2
    the full state is gathered (a collective: every rank calls this) and loaded into ``build()``
    on rank 0, moved to the device of the model's parameters; the other ranks get None.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return unwrap_model(model)
    state = full_model_state(model)
    if not state:
        return None
    plain = build()
    plain.load_state_dict(state)
    return plain.to(next(model.parameters()).device)


_FULL_ON_CPU = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model state dict on the CPU, under the model's own keys (no ``module.`` prefix).

    A collective under FSDP (every rank must call it); in a process group only rank 0 gets the
    tensors, the other ranks an empty dict (``cpu_offload`` gathers to rank 0).
    """
    return get_model_state_dict(model, options=_FULL_ON_CPU)


def full_training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """``(model_state, optimizer_state)`` as :func:`full_model_state`; the optimiser state is keyed
    by parameter name (portable between DDP, FSDP and a plain model). Same collective rules."""
    return full_model_state(model), get_optimizer_state_dict(model, optimizer, options=_FULL_ON_CPU)


def load_training_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict) -> None:
    """Load full state dicts (from :func:`full_training_state`) into a wrapped or plain model on every rank.

    Every rank passes the full dicts (each reads the checkpoint file); a collective under FSDP.

    Raises:
        RuntimeError: missing or unexpected keys (from ``load_state_dict``'s strict check).
    """
    options = StateDictOptions(full_state_dict=True, strict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
