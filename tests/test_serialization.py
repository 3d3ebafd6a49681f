"""Atomic files with a content digest: what is written is what loads, and anything else is one
CheckpointError naming the file."""
from __future__ import annotations

import os
import zipfile

import pytest
import torch

from elasticast_kernels.serialization import CheckpointError, atomic_save, read_file, state_digest
from elasticast_kernels.training import load_checkpoint, save_checkpoint


def payload() -> dict:
    return {"model": {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8), "b": torch.ones(3, dtype=torch.bfloat16)},
            "step": 7, "names": ["a", "b"], "norm": (1.5, 2.0), "none": None}


def test_round_trip_and_digest_is_content_only(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save(path, payload())
    loaded = read_file(path)
    assert loaded.keys() == payload().keys()
    assert torch.equal(loaded["model"]["w"], payload()["model"]["w"])
    reordered = {"step": 7, "none": None, "norm": (1.5, 2.0), "names": ["a", "b"],
                 "model": {"b": torch.ones(3, dtype=torch.bfloat16), "w": payload()["model"]["w"].clone()}}
    assert state_digest(reordered) == state_digest(payload())


@pytest.mark.parametrize("change", [
    lambda p: p["model"]["w"].__setitem__((0, 0), 1.0),
    lambda p: p.__setitem__("step", 8),
    lambda p: p["names"].append("c"),
    lambda p: p.__setitem__("norm", [1.5, 2.0]),  # a list is not a tuple
    lambda p: p["model"].__setitem__("b", torch.ones(3, dtype=torch.float16)),  # same bytes? other dtype
    lambda p: p["model"].__setitem__("w", p["model"]["w"].reshape(4, 16)),  # same bytes, other shape
], ids=["tensor-value", "int", "list-length", "list-vs-tuple", "dtype", "shape"])
def test_digest_sees_every_change(change):
    changed = payload()
    change(changed)
    assert state_digest(changed) != state_digest(payload())


def test_digest_refuses_arbitrary_objects():
    with pytest.raises(TypeError, match="cannot digest a object"):
        state_digest({"x": object()})


def _flip_a_tensor_bit(path) -> None:
    """Flip one bit inside a tensor's storage record of the torch zip file (a silent corruption:
    torch.load still loads it)."""
    with zipfile.ZipFile(path) as archive:
        data_names = [info for info in archive.infolist() if "/data/" in info.filename and info.file_size > 0]
        target = max(data_names, key=lambda info: info.file_size)
        offset = target.header_offset
    raw = bytearray(path.read_bytes())
    # local file header: 30 bytes + name + extra field, then the (stored, uncompressed) bytes
    name_length = int.from_bytes(raw[offset + 26:offset + 28], "little")
    extra_length = int.from_bytes(raw[offset + 28:offset + 30], "little")
    raw[offset + 30 + name_length + extra_length + 5] ^= 0x10
    path.write_bytes(bytes(raw))


def test_a_flipped_bit_in_a_tensor_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload())
    _flip_a_tensor_bit(path)
    torch.load(path, weights_only=True)  # torch itself does not notice
    with pytest.raises(CheckpointError, match="last.pt is corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [
    b"", b"not a zip file at all", b"PK\x03\x04" + b"\x00" * 40, bytes(range(256)) * 8,
    "\u00e9t\u00e9".encode("latin-1"),
], ids=["empty", "text", "zip-header-only", "binary", "latin-1"])
def test_garbage_files_are_one_error_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="bad.pt"):
        read_file(path)


def test_truncation_at_every_tenth_is_refused(tmp_path):
    path = tmp_path / "full.pt"
    save_checkpoint(path, payload())
    data = path.read_bytes()
    for tenth in range(1, 10):
        cut = tmp_path / f"cut{tenth}.pt"
        cut.write_bytes(data[: len(data) * tenth // 10])
        with pytest.raises(CheckpointError, match=f"cut{tenth}.pt"):
            load_checkpoint(cut)


def test_foreign_payloads(tmp_path):
    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        read_file(listed)
    unsigned = tmp_path / "unsigned.pt"
    torch.save({"model": {}}, unsigned)
    with pytest.raises(CheckpointError, match="no content digest"):
        read_file(unsigned)
    assert read_file(unsigned, require_digest=False) == {"model": {}}
    wrong_digest = tmp_path / "wrong.pt"
    torch.save({"model": {}, "digest": 42}, wrong_digest)
    with pytest.raises(CheckpointError, match="is corrupt"):
        read_file(wrong_digest)
    with pytest.raises(CheckpointError, match="is a directory"):
        read_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        read_file(tmp_path / "absent.pt")
    with pytest.raises(TypeError, match="path must be a str"):
        read_file(3)


def test_a_version_one_checkpoint_without_digest_still_loads(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"model": {"w": torch.ones(2)}, "step": 3, "format": ("elasticast-training-checkpoint", 1)}, path)
    assert load_checkpoint(path, required=("model", "step"))["step"] == 3
    stripped = tmp_path / "stripped.pt"
    torch.save({"model": {}, "step": 3, "format": ("elasticast-training-checkpoint", 2)}, stripped)
    with pytest.raises(CheckpointError, match="no content digest"):
        load_checkpoint(stripped)


def test_reserved_key_and_non_dict(tmp_path):
    with pytest.raises(ValueError, match="reserved key 'digest'"):
        atomic_save(tmp_path / "x.pt", {"digest": "mine"})
    with pytest.raises(TypeError, match="payload must be a dict"):
        atomic_save(tmp_path / "x.pt", [1])
    assert not os.path.exists(tmp_path / "x.pt")
