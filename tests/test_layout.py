"""SeqLayout: the one description of the packed layout, checked once when built."""
from __future__ import annotations

import copyreg
import pickle

import pytest
import torch

from elasticast_kernels.layout import SeqLayout, pack_token_counts, segment_ids


def test_derived_facts():
    layout = SeqLayout((5, 12, 1, 9), (0, 2, 4))
    assert layout.cu_seqlens.tolist() == [0, 5, 17, 18, 27] and layout.cu_seqlens.dtype == torch.int32
    assert (layout.max_seqlen, layout.total_tokens, layout.num_samples, layout.num_packs) == (12, 27, 4, 2)
    assert layout.pack_tokens() == (17, 10)
    assert layout.segment_starts() == (0, 5, 17, 18)
    assert layout.segment_ids().tolist() == [0] * 5 + [1] * 12 + [2] + [3] * 9
    assert pack_token_counts([5, 12, 1, 9], [0, 2, 4]).tolist() == [17, 10]


def test_empty_layout():
    layout = SeqLayout(())
    assert layout.cu_seqlens.tolist() == [0] and layout.max_seqlen == 0 and layout.pack_tokens() == (0,)
    assert segment_ids(layout.cu_seqlens, 0).numel() == 0


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(seqlens=(3, -1)), ValueError, r"seqlens\[1\] = -1 is negative"),
    (dict(seqlens=(3, 1.5)), TypeError, r"seqlens\[1\] must be an int"),
    (dict(seqlens=(3, True)), TypeError, r"seqlens\[1\] must be an int, got bool"),
    (dict(seqlens=5), TypeError, "seqlens must be a sequence"),
    (dict(seqlens=(2**31 - 1, 1)), ValueError, r"seqlens hold 2147483648 tokens in all, more than int32"),
    (dict(seqlens=(2**62,) * 3), ValueError, r"seqlens\[0\] = 4611686018427387904 is more than int32"),
    (dict(seqlens=(2**30,) * 4), ValueError, r"seqlens hold 4294967296 tokens in all"),
    (dict(seqlens=(5, 2**63 + 5)), ValueError, r"seqlens\[1\] = 9223372036854775813 is more than int32"),
    (dict(seqlens=(3, 2), pack_offsets=(0, 3)), ValueError, "pack_offsets must rise from 0 to num_samples=2"),
    (dict(seqlens=(3, 2), pack_offsets=(0, 2, 1, 2)), ValueError, "pack_offsets"),
    (dict(seqlens=(3, 2), cu_seqlens=torch.tensor([0, 3, 5])), ValueError, "must be int32"),
    (dict(seqlens=(3, 2), cu_seqlens=torch.tensor([0, 3], dtype=torch.int32)), ValueError, r"shape \(3,\)"),
    (dict(seqlens=(3, 2), cu_seqlens=torch.tensor([0, 2, 5], dtype=torch.int32)), ValueError,
     r"cu_seqlens disagrees with seqlens: cu_seqlens\[1\] = 2"),
    (dict(seqlens=(3, 2), cu_seqlens=[0, 3, 5]), TypeError, "cu_seqlens must be a torch.Tensor"),
])
def test_invariants_are_checked_when_built(kwargs, error, match):
    with pytest.raises(error, match=match):
        SeqLayout(**kwargs)


def test_pickles_without_its_cache():
    layout = SeqLayout((3, 4), (0, 1, 2))
    layout.segment_ids()
    copy = pickle.loads(pickle.dumps(layout))
    assert copy.seqlens == layout.seqlens and copy.pack_offsets == layout.pack_offsets
    assert torch.equal(copy.cu_seqlens, layout.cu_seqlens) and copy._cache == {}


def tampered(obj: object, **changes) -> bytes:
    """A pickle of ``obj`` with entries of its state replaced (or removed, with None), as a hostile
    or corrupted file would hold it."""
    state = {k: v for k, v in {**obj.__getstate__(), **changes}.items() if v is not None}

    class Forged:
        def __reduce__(self):
            return copyreg._reconstructor, (type(obj), object, None), state

    return pickle.dumps(Forged())


@pytest.mark.parametrize("changes, match", [
    (dict(seqlens=(5, 4)), r"cu_seqlens disagrees with seqlens"),
    (dict(seqlens=(3, -4)), r"seqlens\[1\] = -4 is negative"),
    (dict(seqlens=(2**62, 2**62)), r"seqlens\[0\] = 4611686018427387904 is more than int32"),
    (dict(seqlens="ab"), r"seqlens\[0\] must be an int"),
    (dict(pack_offsets=(0, 3)), r"pack_offsets must rise from 0 to num_samples=2"),
    (dict(cu_seqlens=torch.tensor([0, 3, 7])), r"cu_seqlens must be int32"),
    (dict(cu_seqlens=[0, 3, 7]), r"cu_seqlens must be a torch.Tensor"),
    (dict(cu_seqlens=None), r"a pickled SeqLayout must hold"),
    (dict(extra=1), r"a pickled SeqLayout must hold"),
])
def test_a_restored_layout_passes_the_same_checks(changes, match):
    layout = SeqLayout((3, 4), (0, 1, 2))
    with pytest.raises((ValueError, TypeError), match=match):
        pickle.loads(tampered(layout, **changes))
    copy = pickle.loads(tampered(layout))
    assert copy.seqlens == (3, 4) and copy.cu_seqlens.tolist() == [0, 3, 7]


def test_to_keeps_host_facts_and_is_frozen():
    layout = SeqLayout((3, 4))
    assert layout.to("cpu") is layout
    with pytest.raises(AttributeError):
        layout.seqlens = (1, 2)
