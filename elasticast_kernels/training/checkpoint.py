"""Checkpoints that survive a kill, and the RNG states that make a resumed run repeat itself.

:func:`save_checkpoint` writes atomically with a content digest
(`elasticast_kernels.serialization`): a crash at any moment leaves either the previous complete
checkpoint or the new one under the target name, and a file corrupted afterwards is refused on
load. :func:`load_checkpoint` also checks a format marker and the keys a training state needs,
so a file that is not such a checkpoint, or lacks a part, is an error rather than a silent
half-resume.
"""
from __future__ import annotations

import os
import random
from typing import Any, Iterable

import numpy as np
import torch

from elasticast_kernels.serialization import CheckpointError, atomic_save, read_file

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "seed_rng",
]

#: Marker stored in every checkpoint: ``(name, version)``. Version 2 adds the content digest;
#: version 1 files (no digest) still load.
CHECKPOINT_FORMAT = ("elasticast-training-checkpoint", 2)
_READABLE_VERSIONS = (1, 2)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (plus the format marker and a content digest) to ``path`` atomically.

    Args:
        path: target file; its directory is created if needed. Other files in it are not touched
            except a leftover temporary file of this process.
        state: ``torch.save``-able dict of tensors and plain Python values (load it back with
            ``weights_only=True``: no arbitrary objects).

    Raises:
        TypeError: ``state`` is not a dict, or holds something other than tensors and plain
        values. OSError: from the file system (the target is then unchanged).
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    atomic_save(path, {**state, "format": CHECKPOINT_FORMAT})


def load_checkpoint(
    path: str | os.PathLike, required: Iterable[str] = (), map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``), digest verified.

    Args:
        path: the checkpoint file.
        required: keys the caller needs (e.g. ``"model", "optimizer", "step"``).
        map_location: where tensors are loaded.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated, corrupt (digest mismatch) or not a torch file,
            has no format marker or an unknown version, or lacks one of ``required`` (the
            message names the file and key).
    """
    state = read_file(path, "checkpoint", map_location, require_digest=lambda payload: (_version(payload) or 0) >= 2)
    if _version(state) not in _READABLE_VERSIONS:
        raise CheckpointError(f"{os.fspath(path)} is not a training checkpoint of format {CHECKPOINT_FORMAT} "
                              f"(found {state.get('format')!r})")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {os.fspath(path)} lacks {missing}")
    return state


def _version(state: dict) -> int | None:
    marker = state.get("format")
    if (isinstance(marker, (tuple, list)) and len(marker) == 2 and marker[0] == CHECKPOINT_FORMAT[0]
            and isinstance(marker[1], int)):
        return marker[1]
    return None


def capture_rng_state() -> dict[str, Any]:
    """This process's random states: torch CPU, every initialised CUDA device, numpy's global, Python's.

    Returns:
        A dict of tensors, ints and tuples only, so it loads with ``weights_only=True``.
    """
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_rng(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo everything drawn since :func:`capture_rng_state` returned ``state``.

    Raises:
        ValueError: ``state`` lacks a part (torch, numpy, python).
    """
    missing = [key for key in ("torch", "numpy", "python") if key not in state]
    if missing:
        raise ValueError(f"RNG state lacks {missing}")
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
        numpy_state["has_gauss"], numpy_state["cached_gaussian"],
    ))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
