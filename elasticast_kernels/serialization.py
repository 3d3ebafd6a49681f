"""Files that hold tensors: atomic writes, a content digest checked on load, one error type.

Every file this package writes (training checkpoints, exported models) goes through
:func:`atomic_save` and every such file is read through :func:`read_file`:

- **Atomic.** The bytes go to a temporary file in the target's folder, are flushed and fsynced,
  then renamed over the target (``os.replace``) and the folder is fsynced. A crash at any moment
  leaves either the previous complete file or the new one, never a partial file.
- **Checked.** The payload carries a SHA-256 :func:`state_digest` of its content under
  ``"digest"``. ``torch.load`` happily loads a file with a flipped bit inside a tensor; the
  digest does not match then, and the file is refused.
- **One error.** A missing, unreadable, truncated, foreign or corrupt file raises
  :class:`CheckpointError` naming the file (a ``ValueError``, so callers that catch those keep
  working), never a bare ``KeyError``/``UnicodeDecodeError``/``IndexError`` from deep inside.

Files load with ``torch.load(weights_only=True)``: tensors and plain Python values only.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from typing import Any, Callable

import torch

from elasticast_kernels._checks import check_path

__all__ = ["CheckpointError", "atomic_save", "read_file", "state_digest", "DIGEST_KEY"]

#: Key of the content digest inside a saved payload.
DIGEST_KEY = "digest"


class CheckpointError(ValueError):
    """A checkpoint or model file is missing, unreadable, truncated, corrupt, of another format,
    or lacks a part. The message names the file."""


# ------------------------------------------------------------------------------------------------
# digest
# ------------------------------------------------------------------------------------------------
def state_digest(state: Any) -> str:
    """SHA-256 (hex) of a nested structure of dicts, lists, tuples, tensors and plain scalars.

    The hash covers every tensor's dtype, shape and bytes and every key and value, walked in a
    fixed order (dict keys sorted by their repr), so the same content gives the same digest
    whatever the insertion order or the device it was on.

    Raises:
        TypeError: a value of another type (an arbitrary object could not be loaded with
            ``weights_only=True`` anyway).
    """
    hasher = hashlib.sha256()
    _feed(hasher, state)
    return hasher.hexdigest()


def _feed(hasher: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        header = f"T{flat.dtype}{tuple(value.shape)}".encode()
        hasher.update(struct.pack("<Q", len(header)) + header)
        data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        hasher.update(struct.pack("<Q", len(data)))
        hasher.update(data)
    elif isinstance(value, dict):
        hasher.update(b"D" + struct.pack("<Q", len(value)))
        for key in sorted(value, key=repr):
            _feed(hasher, key)
            _feed(hasher, value[key])
    elif isinstance(value, (list, tuple)):
        hasher.update((b"L" if isinstance(value, list) else b"U") + struct.pack("<Q", len(value)))
        for item in value:
            _feed(hasher, item)
    elif value is None or isinstance(value, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        text = f"{type(value).__name__}:{value!r}".encode()
        hasher.update(b"S" + struct.pack("<Q", len(text)) + text)
    else:
        raise TypeError(f"cannot digest a {type(value).__name__}: use tensors and plain Python values")


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def atomic_save(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` plus its :func:`state_digest` (under :data:`DIGEST_KEY`) to ``path`` atomically.

    Args:
        path: target file; its folder is created if needed. Nothing else in it is touched
            except a leftover temporary file of this process.
        payload: a ``torch.save``-able dict of tensors and plain Python values.

    Raises:
        TypeError: ``payload`` is not a dict, or holds a value that is not a tensor or a plain
            Python value. OSError: from the file system (the target is then unchanged).
    """
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
    if DIGEST_KEY in payload:
        raise ValueError(f"payload must not hold the reserved key {DIGEST_KEY!r}")
    signed = {**payload, DIGEST_KEY: state_digest(payload)}
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; this is an ordinary file
        with os.fdopen(handle, "wb") as stream:
            torch.save(signed, stream)
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


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
def read_file(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu",
              require_digest: bool | Callable[[dict], bool] = True) -> dict[str, Any]:
    """Load a file written by :func:`atomic_save` and verify its digest.

    Args:
        path: the file.
        what: how messages call it ("checkpoint", "model file").
        map_location: where tensors are loaded (``torch.load``'s argument).
        require_digest: refuse a payload without a digest; False accepts files written before
            digests existed (a digest is verified whenever there is one); a callable decides
            from the payload (e.g. by its format version).

    Returns:
        The payload without its digest.

    Raises:
        TypeError: ``path`` is not a path.
        FileNotFoundError: nothing at ``path``.
        CheckpointError: a directory, an unreadable, truncated or non-torch file, a payload
            that is not a dict, no digest (when required), or a digest that does not match
            (the file was corrupted after it was written).
    """
    path = check_path(f"{what} path", path)
    if os.path.isdir(path):
        raise CheckpointError(f"{what} {path} is a directory, not a file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # zip, pickle, unicode and EOF errors come in many types
        # torch's first line says what failed; its further paragraphs advise weights_only=False,
        # which is exactly what must not be done with a file one cannot trust
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(
            f"{what} {path} is unreadable, truncated or not a torch file ({type(error).__name__}: {reason})"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{what} {path} holds a {type(payload).__name__}, not a dict")
    digest = payload.pop(DIGEST_KEY, None)
    if digest is None:
        if require_digest(payload) if callable(require_digest) else require_digest:
            raise CheckpointError(f"{what} {path} has no content digest: it was not written by elasticast-kernels")
        return payload
    try:
        actual = state_digest(payload)
    except TypeError as error:
        raise CheckpointError(f"{what} {path} holds unexpected content: {error}") from None
    if not isinstance(digest, str) or digest != actual:
        raise CheckpointError(f"{what} {path} is corrupt: its content does not match the digest stored with it")
    return payload
