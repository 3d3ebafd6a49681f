"""Weight transfer into `ElasticAST` from local checkpoint files (nothing is downloaded).

Three sources, each mapped as the published model does:

- `from_timm_vit`: an ImageNet ViT (timm layout: ``patch_embed.proj``, ``pos_embed`` with a cls
  token, ``blocks.{i}.attn.qkv``, ...). ``qkv`` is split into ``to_q`` (first ``dim`` rows) and
  ``to_kv`` (the rest); the RGB patch filters are summed to one channel and flattened; the grid of
  position embeddings is cut from the middle or bilinearly resized to ``(F/p, T/p)`` and then
  averaged over time (``pos_embed_freq``) and over frequency (``pos_embed_time``); ``attn_pool``
  starts from the blocks' attention weights summed and divided by ``6 * depth`` (what the published
  code does: one sixth of the mean; ``attn_pool_init="mean"`` divides by ``depth``). The classifier
  head, ``attn_pool_queries`` and ``mlp_norm`` keep their initial values.
- `from_ssast`: an SSAST (or AST) checkpoint: the same mapping with a cls and a distillation token
  and a non-square grid (SSAST 16x16 patches: 8 x 64); ``mlp_norm`` starts from ``norm``.
- `from_elasticast`: a published ElasticAST checkpoint, loaded with ``strict=True``.

Checkpoints load with ``torch.load(..., weights_only=True)`` or, for ``*.safetensors``, with the
optional ``safetensors`` package. Every mismatch raises a ValueError naming the key and shapes; a
``model`` that is not an `ElasticAST` raises TypeError.
Unlike the published code, any ``dim``/``depth`` works as long as source and model agree.
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Union

import torch
import torch.nn.functional as F

from ._checks import check_int
from .models import ElasticAST

StateDict = dict[str, torch.Tensor]
Checkpoint = Union[str, "os.PathLike[str]", Mapping[str, torch.Tensor]]

ATTN_POOL_INITS = ("published", "mean")
_ATTENTION_TENSORS = ("to_q.weight", "to_q.bias", "to_kv.weight", "to_kv.bias", "proj.weight", "proj.bias")
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module")

__all__ = [
    "load_checkpoint",
    "timm_vit_to_elasticast",
    "ssast_to_elasticast",
    "from_timm_vit",
    "from_ssast",
    "from_elasticast",
]


# ------------------------------------------------------------------------------------------------
# Reading checkpoints
# ------------------------------------------------------------------------------------------------
def load_checkpoint(checkpoint: Checkpoint) -> StateDict:
    """A flat ``{name: tensor}`` dict from a file path or an in-memory mapping.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` containers and strips a ``module.``
    prefix (DataParallel) shared by every key.

    Raises:
        FileNotFoundError: the path does not exist.
        ImportError: a ``.safetensors`` file without the ``safetensors`` package.
        ValueError: the path is a directory (pass the checkpoint file inside it), the file is not a
            checkpoint (corrupt, truncated, foreign; the message names it), or it holds something
            other than tensors (named).
    """
    if isinstance(checkpoint, Mapping):
        state, where = checkpoint, "the given mapping"
    elif isinstance(checkpoint, (str, os.PathLike)):
        path, where = os.fspath(checkpoint), os.fspath(checkpoint)
        if os.path.isdir(path):
            raise ValueError(f"checkpoint {path!r} is a directory, not a checkpoint file (pass the file inside it)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        if path.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file
            except ImportError as error:
                raise ImportError(f"reading {path!r} needs the safetensors package (pip install safetensors)") from error
            try:
                state = load_file(path, device="cpu")
            except Exception as error:  # safetensors raises its own SafetensorError (and OSError)
                raise ValueError(f"{path!r} is not a readable safetensors file: {type(error).__name__}: {error}") from error
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # unpickling errors come in many types
                raise ValueError(f"{path!r} is not a loadable torch checkpoint: {type(error).__name__}: {error}") from error
    else:
        raise TypeError(f"checkpoint must be a path or a mapping of tensors, got {type(checkpoint).__name__}")

    while isinstance(state, Mapping):
        inner = [key for key in _CONTAINER_KEYS if isinstance(state.get(key), Mapping)]
        if not inner:
            break
        state = state[inner[0]]
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{where} holds no state dict (got {type(state).__name__})")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"{where}: entry {key!r} is a {type(value).__name__}, not a tensor")
    state = dict(state)
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


# ------------------------------------------------------------------------------------------------
# The ViT -> ElasticAST mapping
# ------------------------------------------------------------------------------------------------
def _vit_root(state: Mapping[str, torch.Tensor]) -> str:
    """The prefix in front of the ViT keys ('' for timm, 'v.' for SSAST/AST)."""
    roots = sorted(key[: -len("patch_embed.proj.weight")] for key in state if key.endswith("patch_embed.proj.weight"))
    if not roots:
        raise ValueError("checkpoint has no 'patch_embed.proj.weight': not a ViT / SSAST state dict")
    return roots[0]


def _take(state: Mapping[str, torch.Tensor], key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"checkpoint is missing {key!r}")
    tensor = state[key]
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"checkpoint {key!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    return tensor.detach().to(torch.float32)


def _fit_axis(grid: torch.Tensor, size: int, axis: int) -> torch.Tensor:
    """Cut ``size`` rows from the middle of ``grid`` [D, H, W] along ``axis`` (1 or 2), or
    bilinearly resize to ``size`` when the grid is shorter (the AST recipe)."""
    have = grid.shape[axis]
    if size <= have:
        start = have // 2 - size // 2
        return grid.narrow(axis, start, size)
    target = (size, grid.shape[2]) if axis == 1 else (grid.shape[1], size)
    return F.interpolate(grid.unsqueeze(0), size=target, mode="bilinear", align_corners=False).squeeze(0)


def _require_elasticast(model: object) -> None:
    # The mappings read ElasticAST's own attributes (blocks.modules_list, patch_size, ...): any
    # other module would fail deep inside with an AttributeError or KeyError.
    if not isinstance(model, ElasticAST):
        raise TypeError(f"model must be an elasticast_kernels.models.ElasticAST, got {type(model).__name__}")


def _model_facts(model: ElasticAST) -> dict[str, int]:
    state = model.state_dict()
    dim = state["norm.weight"].shape[0]
    depth = len(model.blocks.modules_list)
    patch_dim = state["patch_embed.0.weight"].shape[1]
    return dict(
        dim=dim,
        depth=depth,
        patch=model.patch_size,
        channels=patch_dim // (model.patch_size * model.patch_size),
        freq=state["pos_embed_freq"].shape[0],
        time=state["pos_embed_time"].shape[0],
    )


def _grid(grid: object) -> tuple[int, int]:
    """``grid`` as a pair of positive ints; TypeError / ValueError naming it otherwise."""
    if not isinstance(grid, (tuple, list)) or len(grid) != 2:
        raise TypeError(f"grid must be a pair of ints (frequency patches, time patches), got {grid!r}")
    return check_int("grid[0]", grid[0], 1), check_int("grid[1]", grid[1], 1)


def _vit_to_elasticast(
    state: Mapping[str, torch.Tensor],
    model: ElasticAST,
    *,
    prefix_tokens: int,
    grid: tuple[int, int] | None,
    attn_pool_init: str,
    norm_to_mlp_norm: bool,
) -> StateDict:
    if attn_pool_init not in ATTN_POOL_INITS:
        raise ValueError(f"attn_pool_init must be one of {ATTN_POOL_INITS}, got {attn_pool_init!r}")
    facts = _model_facts(model)
    dim, depth, p = facts["dim"], facts["depth"], facts["patch"]
    root = _vit_root(state)
    key = lambda name: root + name  # noqa: E731

    out: StateDict = {}
    # Patch embedding: a conv [dim, C_in, p, p] becomes a linear over (c, p1, p2)-flattened pixels.
    conv = _take(state, key("patch_embed.proj.weight"))
    if conv.dim() != 4 or conv.shape[0] != dim or conv.shape[2:] != (p, p):
        raise ValueError(
            f"checkpoint {key('patch_embed.proj.weight')!r} has shape {tuple(conv.shape)}, "
            f"expected ({dim}, C, {p}, {p}) for dim={dim}, patch_size={p}"
        )
    if facts["channels"] == 1:
        conv = conv.sum(dim=1, keepdim=True)  # RGB filters summed to one channel
    elif conv.shape[1] != facts["channels"]:
        raise ValueError(f"checkpoint has {conv.shape[1]} input channels, the model {facts['channels']}")
    out["patch_embed.0.weight"] = conv.reshape(dim, -1)
    out["patch_embed.0.bias"] = _take(state, key("patch_embed.proj.bias"), (dim,))

    # Positions: the grid without its prefix tokens, fitted to (F/p, T/p), then factorised.
    pos = _take(state, key("pos_embed"))
    if pos.dim() == 3 and pos.shape[0] == 1:
        pos = pos[0]
    tokens = pos.shape[0] - prefix_tokens if pos.dim() == 2 else 0
    if pos.dim() != 2 or pos.shape[1] != dim or tokens < 1:
        raise ValueError(f"checkpoint {key('pos_embed')!r} has shape {tuple(state[key('pos_embed')].shape)}, "
                         f"expected (1, {prefix_tokens} + H*W, {dim})")
    if grid is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"checkpoint {key('pos_embed')!r} has {tokens} grid tokens, not a square: pass grid=(H, W)")
        grid = (side, side)
    if grid[0] * grid[1] != tokens:
        raise ValueError(f"checkpoint {key('pos_embed')!r} has {tokens} grid tokens but grid={grid} needs {grid[0] * grid[1]}")
    positions = pos[prefix_tokens:].t().reshape(dim, grid[0], grid[1])
    positions = _fit_axis(_fit_axis(positions, facts["time"], axis=2), facts["freq"], axis=1)
    out["pos_embed_freq"] = positions.mean(dim=2).t().contiguous()
    out["pos_embed_time"] = positions.mean(dim=1).t().contiguous()

    # Blocks: timm's fused qkv -> to_q (first dim rows) + to_kv (k then v).
    block_prefix = key("blocks.")
    source_depth = len({k[len(block_prefix) :].split(".")[0] for k in state if k.startswith(block_prefix)})
    if source_depth != depth:
        raise ValueError(f"checkpoint has {source_depth} blocks but the model has depth={depth}")
    for i in range(depth):
        src, dst = key(f"blocks.{i}."), f"blocks.modules_list.{i}."
        for norm in ("norm1", "norm2"):
            out[dst + f"{norm}.weight"] = _take(state, src + f"{norm}.weight", (dim,))
            out[dst + f"{norm}.bias"] = _take(state, src + f"{norm}.bias", (dim,))
        qkv_weight = _take(state, src + "attn.qkv.weight", (3 * dim, dim))
        qkv_bias = _take(state, src + "attn.qkv.bias", (3 * dim,))
        out[dst + "attn.to_q.weight"], out[dst + "attn.to_kv.weight"] = qkv_weight[:dim], qkv_weight[dim:]
        out[dst + "attn.to_q.bias"], out[dst + "attn.to_kv.bias"] = qkv_bias[:dim], qkv_bias[dim:]
        out[dst + "attn.proj.weight"] = _take(state, src + "attn.proj.weight", (dim, dim))
        out[dst + "attn.proj.bias"] = _take(state, src + "attn.proj.bias", (dim,))
        out[dst + "mlp.fc1.weight"] = _take(state, src + "mlp.fc1.weight", (4 * dim, dim))
        out[dst + "mlp.fc1.bias"] = _take(state, src + "mlp.fc1.bias", (4 * dim,))
        out[dst + "mlp.fc2.weight"] = _take(state, src + "mlp.fc2.weight", (dim, 4 * dim))
        out[dst + "mlp.fc2.bias"] = _take(state, src + "mlp.fc2.bias", (dim,))
    out["norm.weight"] = _take(state, key("norm.weight"), (dim,))
    out["norm.bias"] = _take(state, key("norm.bias"), (dim,))
    if norm_to_mlp_norm:
        out["mlp_norm.weight"], out["mlp_norm.bias"] = out["norm.weight"].clone(), out["norm.bias"].clone()

    # Attention pool: the blocks' attention weights summed, divided by 6*depth (published) or depth.
    divisor = 6 * depth if attn_pool_init == "published" else depth
    for name in _ATTENTION_TENSORS:
        total = sum(out[f"blocks.modules_list.{i}.attn.{name}"] for i in range(depth))
        out[f"attn_pool.{name}"] = total / divisor
    return out


def _prefix_tokens(state: Mapping[str, torch.Tensor]) -> int:
    root = _vit_root(state)
    return sum(root + name in state for name in ("cls_token", "dist_token"))


def timm_vit_to_elasticast(
    state: Mapping[str, torch.Tensor], model: ElasticAST, *, attn_pool_init: str = "published"
) -> StateDict:
    """Map a timm-layout ViT state dict onto ``model``'s keys (see the module docstring).

    Returns the transferred tensors (float32, shaped like the model's); ``head``,
    ``attn_pool_queries`` and ``mlp_norm`` are not among them. TypeError unless ``model`` is an
    `ElasticAST`.
    """
    _require_elasticast(model)
    return _vit_to_elasticast(state, model, prefix_tokens=_prefix_tokens(state), grid=None,
                              attn_pool_init=attn_pool_init, norm_to_mlp_norm=False)


def ssast_to_elasticast(
    state: Mapping[str, torch.Tensor],
    model: ElasticAST,
    *,
    grid: tuple[int, int] = (8, 64),
    attn_pool_init: str = "published",
) -> StateDict:
    """Map an SSAST/AST state dict (keys under ``v.``, cls + distillation tokens) onto ``model``.

    ``grid``: the checkpoint's (frequency, time) patch grid: (8, 64) for SSAST with 16x16
    patches, (12, 101) for AudioSet AST. ``mlp_norm`` is initialised from ``norm``. TypeError
    unless ``model`` is an `ElasticAST` or ``grid`` a pair of ints; ValueError for a grid that is
    not positive or does not match the checkpoint's position table.
    """
    _require_elasticast(model)
    return _vit_to_elasticast(state, model, prefix_tokens=_prefix_tokens(state), grid=_grid(grid),
                              attn_pool_init=attn_pool_init, norm_to_mlp_norm=True)


# ------------------------------------------------------------------------------------------------
# Loading into a model
# ------------------------------------------------------------------------------------------------
def _check_against(model: ElasticAST, mapped: Mapping[str, torch.Tensor]) -> None:
    target = model.state_dict()
    for key, tensor in mapped.items():
        if key not in target:
            raise ValueError(f"{key!r} is not a parameter of the model")
        if tensor.shape != target[key].shape:
            raise ValueError(f"{key!r}: checkpoint gives shape {tuple(tensor.shape)}, the model has {tuple(target[key].shape)}")


def _load_partial(model: ElasticAST, mapped: Mapping[str, torch.Tensor]) -> list[str]:
    _check_against(model, mapped)
    result = model.load_state_dict(dict(mapped), strict=False)
    if result.unexpected_keys:  # pragma: no cover - _check_against already caught these
        raise ValueError(f"unexpected keys {result.unexpected_keys}")
    return sorted(result.missing_keys)


def from_timm_vit(model: ElasticAST, checkpoint: Checkpoint, *, attn_pool_init: str = "published") -> list[str]:
    """Load an ImageNet ViT (timm layout) into ``model`` in place.

    Returns the model keys left at their initial values (``attn_pool_queries``, ``mlp_norm.*``,
    ``head.*``). Raises ValueError naming the key or shape that does not fit, TypeError unless
    ``model`` is an `ElasticAST`.
    """
    _require_elasticast(model)
    mapped = timm_vit_to_elasticast(load_checkpoint(checkpoint), model, attn_pool_init=attn_pool_init)
    return _load_partial(model, mapped)


def from_ssast(
    model: ElasticAST,
    checkpoint: Checkpoint,
    *,
    grid: tuple[int, int] = (8, 64),
    attn_pool_init: str = "published",
) -> list[str]:
    """Load an SSAST (default grid 8x64) or AST (``grid=(12, 101)``) checkpoint into ``model`` in place.

    Returns the model keys left at their initial values (``attn_pool_queries``, ``head.*``).
    TypeError unless ``model`` is an `ElasticAST`.
    """
    _require_elasticast(model)
    grid = _grid(grid)  # before reading a large file
    return _load_partial(
        model, ssast_to_elasticast(load_checkpoint(checkpoint), model, grid=grid, attn_pool_init=attn_pool_init)
    )


def from_elasticast(model: ElasticAST, checkpoint: Checkpoint) -> None:
    """Load a published ElasticAST checkpoint with ``strict=True``.

    Raises:
        TypeError: ``model`` is not an `ElasticAST`.
        ValueError: keys missing from or unexpected in the checkpoint, or a shape mismatch
            (the message lists them).
    """
    _require_elasticast(model)
    state = load_checkpoint(checkpoint)
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing keys {missing}, unexpected keys {unexpected}")
    for key, tensor in state.items():
        if tensor.shape != target[key].shape:
            raise ValueError(f"{key!r}: checkpoint has shape {tuple(tensor.shape)}, the model has {tuple(target[key].shape)}")
    model.load_state_dict(state, strict=True)
