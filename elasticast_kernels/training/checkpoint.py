"""Checkpoints that survive a kill, and the RNG states that make a resumed run repeat itself.

:func:`save_checkpoint` writes to a temporary file in the same directory, flushes and fsyncs it,
then renames it over the target with ``os.replace`` (atomic on POSIX and Windows) and fsyncs the
directory. A crash at any moment therefore leaves either the previous complete checkpoint or the
new complete one under the target name, never a partial file. :func:`load_checkpoint` also checks
a format marker and the keys a training state needs, so a file that is not such a checkpoint, or
lacks a part, is an error rather than a silent half-resume.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from typing import Any, Iterable

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
]

#: Marker stored in every checkpoint: ``(name, version)``.
CHECKPOINT_FORMAT = ("elasticast-training-checkpoint", 1)


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, truncated, of another format, or lacks a required part."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (plus the format marker) to ``path`` atomically.

    Args:
        path: target file; its directory is created if needed. Other files in it are not touched
            except a leftover temporary file of this process.
        state: ``torch.save``-able dict of tensors and plain Python values (load it back with
            ``weights_only=True``: no arbitrary objects).

    Raises:
        TypeError: ``state`` is not a dict. OSError: from the file system (the target is then
        unchanged).
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; a checkpoint is an ordinary file
        with os.fdopen(handle, "wb") as stream:
            torch.save({**state, "format": CHECKPOINT_FORMAT}, stream)
            stream.flush()
            os.fsync(stream.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)  # the rename itself survives a power loss


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; the rename is durable there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | os.PathLike, required: Iterable[str] = (), map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Args:
        path: the checkpoint file.
        required: keys the caller needs (e.g. ``"model", "optimizer", "step"``).
        map_location: where tensors are loaded.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated or not a torch file, has no format marker or
            another version, or lacks one of ``required`` (the message names the file and key).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated: {error}") from None
    if not isinstance(state, dict) or tuple(state.get("format", ())) != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a training checkpoint of format {CHECKPOINT_FORMAT} (found {found!r})")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    return state


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
