"""Packing plans: which samples share a pack of at most ``max_tokens`` tokens.

The strategies run in C++ (``elasticast_kernels._C``) when the extension is built and in pure
Python otherwise; both give identical plans. Rules (ties included) are documented in
``csrc/pack_plans.h``.
"""
from __future__ import annotations

import collections.abc
import functools
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import layout as _layout
from .._checks import check_int
from . import _fallback
from ._native import native

STRATEGIES = ("next_fit", "first_fit_decreasing", "best_fit_decreasing", "best_fit_window", "histogram")
MAX_TOKENS_LIMIT = 2**31 - 1  # cu_seqlens are int32
WINDOW_LIMIT = 2**63 - 1  # the native window is an int64
_NOT_GIVEN: Any = object()  # marks pack_lengths(seed=...) as not passed


@dataclass(frozen=True, repr=False, eq=False, init=False)
class PackPlan:
    """A partition of samples into packs.

    A plan is stored flat, as the packers produce it: ``order`` (the sample indices pack by pack)
    and ``pack_offsets`` (where each pack starts in ``order``). The per-pack ``bins`` list is built
    on first access and cached, so planning millions of lengths costs no Python object per pack
    unless a caller asks for one.

    Build one with ``PackPlan(bins, lengths, max_tokens, strategy)`` or, without per-pack arrays,
    ``PackPlan.from_order(order, offsets, lengths, max_tokens, strategy)``. Both copy their array
    input, so changing the caller's arrays afterwards never changes the plan. Construction checks
    only that the arrays hold integers (TypeError / ValueError naming the argument); call
    :meth:`validate` for the partition and capacity rules.

    Attributes:
        bins: one int64 array of sample indices per pack, in pack order; ascending inside a pack
            for plans of :func:`pack_lengths`. Read-only views into ``order`` (built lazily).
        lengths: int64 ``[num_samples]`` (read-only, the plan's own copy): tokens per sample.
        max_tokens: capacity of every pack.
        strategy: the strategy that made the plan.

    The plan is immutable: attributes cannot be reassigned and ``lengths``, ``order`` and
    ``pack_offsets`` (hence ``bins``) are read-only arrays the plan owns. Compared by identity
    (``==`` on lists of arrays has no single truth value).
    """

    lengths: np.ndarray
    max_tokens: int
    strategy: str
    _order: np.ndarray = field(repr=False)
    _offsets: np.ndarray = field(repr=False)

    def __init__(self, bins: Sequence[Any], lengths: Any, max_tokens: int, strategy: str) -> None:
        """Plan from per-pack index arrays (any integer sequences; copied to int64). Errors as for
        :meth:`from_order`, naming ``bins[p]`` or ``lengths``."""
        arrays = [_int64_array(f"bins[{p}]", b, ndim=None).reshape(-1) for p, b in enumerate(bins)]
        order = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in arrays], out=offsets[1:])
        self._set(order, offsets, _plan_lengths(lengths), max_tokens, strategy)

    @classmethod
    def from_order(cls, order: Any, offsets: Any, lengths: Any, max_tokens: int, strategy: str) -> "PackPlan":
        """Plan from its flat form (what :func:`pack_order` returns); the arrays are copied.

        Args:
            order: 1-D ints ``[sum of pack sizes]``, sample indices pack by pack.
            offsets: 1-D ints ``[num_packs + 1]``; pack p is ``order[offsets[p]:offsets[p + 1]]``.
            lengths: 1-D ints ``[num_samples]``, each in ``[0, 2**31 - 1]``.
            max_tokens: an int in ``[1, 2**31 - 1]``.
            strategy: a str.
        Raises:
            TypeError: an argument that is not array-like (a generator, a set) or is a meta or
                half-precision tensor; ``max_tokens`` not an int, ``strategy`` not a str.
            ValueError: ``order``, ``offsets`` or ``lengths`` not 1-D, ``offsets`` empty, a
                non-integer dtype, a non-integral or out-of-range value (naming the index).
        """
        return cls._from_owned(*_flat_arrays(order, offsets, lengths), max_tokens, strategy)

    @classmethod
    def _from_owned(cls, order: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, max_tokens: int,
                    strategy: str) -> "PackPlan":
        """Plan from int64 arrays nobody else holds (fresh copies or native outputs): no copy."""
        plan = cls.__new__(cls)
        plan._set(order, offsets, lengths, max_tokens, strategy)
        return plan

    def _set(self, order: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, max_tokens: int, strategy: str) -> None:
        # The arrays are the plan's own (copied by every public constructor); read-only, so the
        # cached bins and every derived count stay true for the plan's lifetime.
        max_tokens = check_int("max_tokens", max_tokens, 1, MAX_TOKENS_LIMIT)
        if not isinstance(strategy, str):
            raise TypeError(f"strategy must be a str, got {type(strategy).__name__}")
        for name, array in (("order", order), ("offsets", offsets), ("lengths", lengths)):
            if array.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
            array.flags.writeable = False
        for name, value in (("lengths", lengths), ("max_tokens", max_tokens), ("strategy", strategy),
                            ("_order", order), ("_offsets", offsets)):
            object.__setattr__(self, name, value)  # the frozen dataclass way of initialising

    def __getstate__(self) -> dict:
        # The flat arrays only: the cached bins would come back as copies, not views of ``order``.
        return {name: getattr(self, name) for name in ("lengths", "max_tokens", "strategy", "_order", "_offsets")}

    def __setstate__(self, state: Any) -> None:
        # A pickle is input like any other: the restored plan passes the constructors' checks.
        keys = ("lengths", "max_tokens", "strategy", "_order", "_offsets")
        if not isinstance(state, dict) or set(state) != set(keys):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"a pickled PackPlan must hold {list(keys)}, got {got}")
        arrays = _flat_arrays(state["_order"], state["_offsets"], state["lengths"])
        self._set(*arrays, state["max_tokens"], state["strategy"])

    @functools.cached_property
    def bins(self) -> list[np.ndarray]:
        """One read-only int64 array per pack (views into ``order``); built once, on first use."""
        bounds = self._offsets.tolist()
        # Plain slicing is ~10x faster than np.split for 10^5+ packs.
        return [self._order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    @property
    def num_packs(self) -> int:
        return len(self._offsets) - 1

    @property
    def num_samples(self) -> int:
        return len(self.lengths)

    @property
    def efficiency(self) -> float:
        """sum(lengths) / (num_packs * max_tokens); 0.0 for an empty plan."""
        if self.num_packs == 0:
            return 0.0
        return float(self.lengths.sum()) / (self.num_packs * self.max_tokens)

    @property
    def order(self) -> np.ndarray:
        """int64 ``[sum of bin sizes]`` (read-only): the bins concatenated (segment order of a
        packed batch)."""
        return self._order

    @property
    def pack_offsets(self) -> np.ndarray:
        """int64 ``[num_packs + 1]`` (read-only): pack p is ``order[pack_offsets[p]:pack_offsets[p + 1]]``."""
        return self._offsets

    def pack_tokens(self) -> np.ndarray:
        """int64 ``[num_packs]``: tokens in each pack (the layout's shared rule, over the plan's
        segments in pack order)."""
        return _layout.pack_token_counts(self.lengths[self._order], self._offsets)

    def layout(self, device: torch.device | str = "cpu") -> _layout.SeqLayout:
        """The packed layout this plan describes: segment ``j`` holds sample ``order[j]`` (its
        ``lengths`` tokens), pack ``p`` the segments ``pack_offsets[p]:pack_offsets[p + 1]``;
        ``cu_seqlens`` on ``device``, copied there without a host-device sync.

        Raises ValueError when the plan holds more than 2^31 - 1 tokens (int32 ``cu_seqlens``)."""
        return _layout.SeqLayout(self.lengths[self._order].tolist(), self._offsets.tolist(), device=device)

    def cu_seqlens(self, i: int) -> torch.Tensor:
        """int32 CPU ``[len(bins[i]) + 1]``: cumulative token counts of pack ``i``'s samples.

        Raises IndexError for ``i`` outside ``[-num_packs, num_packs)``, ValueError when the pack
        holds more than 2^31 - 1 tokens (the int32 counts would wrap).
        """
        i = operator.index(i)
        if not -self.num_packs <= i < self.num_packs:
            raise IndexError(f"pack index {i} out of range for {self.num_packs} packs")
        if i < 0:
            i += self.num_packs
        members = self._order[self._offsets[i]:self._offsets[i + 1]]
        cu = np.zeros(len(members) + 1, dtype=np.int64)  # lengths < 2**31: an int64 sum cannot wrap
        np.cumsum(self.lengths[members], out=cu[1:])
        if cu[-1] > MAX_TOKENS_LIMIT:
            raise ValueError(f"pack {i} holds {int(cu[-1])} tokens, more than int32 cu_seqlens allow (2**31 - 1)")
        return torch.from_numpy(cu.astype(np.int32))

    def validate(self) -> None:
        """Raise ValueError unless every sample is in exactly one pack and no pack overflows (a
        pack holding one sample longer than ``max_tokens`` and nothing else is within the rules)."""
        order, offsets, n = self._order, self._offsets, len(self.lengths)
        if (len(order) != n or offsets[0] != 0 or offsets[-1] != len(order) or (np.diff(offsets) < 0).any()
                or not np.array_equal(np.sort(order), np.arange(n))):
            raise ValueError("plan bins are not a partition of the samples")
        tokens = self.pack_tokens()
        sizes = np.diff(offsets)
        bad = (sizes == 0) | ((tokens > self.max_tokens) & (sizes > 1))
        if bad.any():
            p = int(np.argmax(bad))  # the first bad pack, as a loop over the bins would find it
            if sizes[p] == 0:
                raise ValueError(f"bins[{p}] is empty")
            raise ValueError(f"bins[{p}] holds {int(tokens[p])} tokens > max_tokens={self.max_tokens} "
                             "(only a pack of one sample may be longer)")

    def __repr__(self) -> str:
        return (
            f"PackPlan(strategy={self.strategy!r}, num_samples={self.num_samples}, num_packs={self.num_packs}, "
            f"max_tokens={self.max_tokens}, efficiency={self.efficiency:.4f})"
        )


# Containers np.asarray would turn into a 0-d object array (or a wrong one) rather than the values.
_NOT_ARRAY_LIKE = (collections.abc.Set, collections.abc.Mapping, collections.abc.MappingView,
                   collections.abc.Iterator, str, bytes, bytearray)
# Half-precision floats cannot hold every length exactly: refused rather than trusted.
_HALF_TENSOR_DTYPES = (torch.float16, torch.bfloat16)


def _private_numpy(name: str, values: Any) -> np.ndarray:
    """A numpy copy of ``values`` (sequence, numpy array or tensor) that nobody else can write."""
    if isinstance(values, torch.Tensor):
        if values.device.type == "meta":
            raise TypeError(f"{name} is a meta tensor, which holds no values")
        if values.layout != torch.strided:
            raise TypeError(f"{name} must be a dense tensor, got layout {values.layout}")
        if values.dtype in _HALF_TENSOR_DTYPES:
            raise TypeError(f"{name} must hold integers (or float32/float64), got {values.dtype}, "
                            "which cannot represent every length exactly")
        values = values.detach().cpu().numpy()
    elif isinstance(values, _NOT_ARRAY_LIKE):
        raise TypeError(f"{name} must be a sequence, numpy array or tensor of integers, got {type(values).__name__}"
                        + (" (pass a list)" if isinstance(values, collections.abc.Iterator) else ""))
    try:
        arr = np.array(values)  # always a copy: the checks below must see the values that get used
    except (ValueError, TypeError, OverflowError) as err:
        raise ValueError(f"{name} must be a 1-D sequence of integers: {err}") from None
    if arr.dtype == np.float16:
        raise TypeError(f"{name} must hold integers (or float32/float64), got float16, "
                        "which cannot represent every length exactly")
    return arr


def _object_to_int64(name: str, arr: np.ndarray, low: int, high: int, bounds: str) -> np.ndarray:
    """Element by element, for object arrays (Python ints beyond int64, mixed types)."""
    out = np.empty(arr.shape, dtype=np.int64)
    for i, value in enumerate(arr.reshape(-1).tolist()):
        if isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name}[{i}] = {value!r} is not an integer")
        try:
            number = operator.index(value)
        except TypeError:
            if not isinstance(value, float) or not value.is_integer():
                raise ValueError(f"{name}[{i}] = {value!r} is not an integer") from None
            number = int(value)
        if not low <= number <= high:
            raise ValueError(f"{name}[{i}] = {number} is outside {bounds}")
        out.reshape(-1)[i] = number
    return out


def _integer_array(name: str, values: Any, low: int, high: int, bounds: str, ndim: int | None = None) -> np.ndarray:
    """A private, C-contiguous int64 copy of integer data whose values all lie in ``[low, high]``.

    Floats are accepted when they are finite and integral. Raises TypeError for a container that
    is not array-like (a generator, a set), a meta or half-precision tensor; ValueError naming the
    first offending index for a non-integer or a value outside ``bounds`` (checked before the cast
    to int64, so huge values cannot wrap), or not ``ndim``-D when ``ndim`` is given.
    """
    arr = _private_numpy(name, values)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.int64)
    if arr.dtype == object:
        return _object_to_int64(name, arr, low, high, bounds)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    flat = arr.reshape(-1)
    floating = np.issubdtype(arr.dtype, np.floating)
    if floating:
        bad = ~np.isfinite(flat) | (flat != np.floor(flat))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name}[{i}] = {float(flat[i])!r} is not an integer")
    # float(2**63 - 1) rounds up to 2**63: for floats, ">= high + 1" is the exact test
    bad = (flat < low) | ((flat >= float(high) + 1.0) if floating else (flat > high))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {int(flat[i])} is outside {bounds}")
    return np.ascontiguousarray(arr.astype(np.int64, copy=False))


def _int64_array(name: str, values: Any, ndim: int | None = 1) -> np.ndarray:
    """A private int64 copy of the integers in ``values`` (any int64 value)."""
    return _integer_array(name, values, -(2**63), 2**63 - 1, "the int64 range", ndim)


def _plan_lengths(values: Any) -> np.ndarray:
    """A plan's private copy of its token counts, each in ``[0, 2**31 - 1]``: no sum over fewer than
    2^32 of them can wrap int64."""
    return _integer_array("lengths", values, 0, MAX_TOKENS_LIMIT, "[0, 2**31 - 1]", ndim=1)


def _flat_arrays(order: Any, offsets: Any, lengths: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked private copies of a plan's flat form (see `PackPlan.from_order`)."""
    order = _int64_array("order", order)
    offsets = _int64_array("offsets", offsets)
    if len(offsets) == 0:
        raise ValueError(f"offsets must be 1-D with num_packs + 1 >= 1 entries, got shape {offsets.shape}")
    return order, offsets, _plan_lengths(lengths)


def as_lengths(lengths: Any, max_tokens: Any = None) -> np.ndarray:
    """Validate ``lengths`` (1-D ints: sequence, numpy array or tensor) -> a private, contiguous
    int64 numpy array (always a copy: later changes to the caller's data do not reach it).

    Every length must be in ``[1, 2**31 - 1]`` (a pack's tokens are counted in int32); a length
    above a plan's budget is allowed (it gets a pack of its own), so ``max_tokens`` is not used
    (passing it warns).

    Raises:
        TypeError: ``lengths`` is not array-like (a generator, a set, a mapping), a meta tensor,
            or half-precision floats.
        ValueError: not 1-D, a non-integer (non-finite or fractional float, non-numeric dtype) or a
            length outside ``[1, 2**31 - 1]``, naming the first offending index.
    """
    if max_tokens is not None:
        warnings.warn("as_lengths(lengths, max_tokens): max_tokens is ignored, a length above it gets a pack "
                      "of its own", DeprecationWarning, stacklevel=2)
    return _integer_array("lengths", lengths, 1, MAX_TOKENS_LIMIT, "[1, 2**31 - 1]", ndim=1)


def _python_plan(strategy: str, lengths: np.ndarray, max_tokens: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    fn: Callable[..., _fallback.Assignment] = getattr(_fallback, strategy)
    assignment = fn(lengths, max_tokens, window) if strategy == "best_fit_window" else fn(lengths, max_tokens)
    return _fallback.finalize(*assignment)


def _check_options(max_tokens: Any, strategy: Any, window: Any, backend: Any) -> tuple[int, int]:
    max_tokens = check_int("max_tokens", max_tokens, 1, MAX_TOKENS_LIMIT)
    window = check_int("window", window, 1, WINDOW_LIMIT)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if backend not in ("auto", "native", "python"):
        raise ValueError(f"backend must be 'auto', 'native' or 'python', got {backend!r}")
    return max_tokens, window


def _plan_arrays(
    arr: np.ndarray, max_tokens: int, strategy: str, window: int, backend: str
) -> tuple[np.ndarray, np.ndarray]:
    ext = native() if backend != "python" else None
    if backend == "native" and ext is None:
        raise RuntimeError("the native extension elasticast_kernels._C is not available")
    if ext is None:
        return _python_plan(strategy, arr, max_tokens, window)
    if strategy == "best_fit_window":
        return ext.best_fit_window(arr, max_tokens, window)
    return getattr(ext, strategy)(arr, max_tokens)


def pack_order(
    lengths: Any, max_tokens: int, strategy: str = "next_fit", *, window: int = 256, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """The flat form of a plan, without building one array per pack (the fast path for big inputs).

    Returns:
        order: int64 ``[num_samples]``, sample indices pack by pack (ascending inside a pack).
        offsets: int64 ``[num_packs + 1]``; pack p is ``order[offsets[p]:offsets[p + 1]]``.

    Arguments and errors as for :func:`pack_lengths`; ``backend``: "auto" (C++ when built),
    "native" (C++, RuntimeError if missing) or "python".
    """
    max_tokens, window = _check_options(max_tokens, strategy, window, backend)
    return _plan_arrays(as_lengths(lengths), max_tokens, strategy, window, backend)


def pack_lengths(
    lengths: Any,
    max_tokens: int,
    strategy: str = "next_fit",
    *,
    window: int = 256,
    seed: Any = _NOT_GIVEN,
    backend: str = "auto",
) -> PackPlan:
    """Partition samples with the given token ``lengths`` into packs of at most ``max_tokens``.

    A sample longer than ``max_tokens`` gets a pack of its own (in every strategy; where the
    strategy's rule puts it, see ``csrc/pack_plans.h``), so any length can be planned: a caller
    that wants such samples dropped or cropped does that before planning.

    Args:
        lengths: 1-D integers (list, numpy array or CPU tensor), each in ``[1, 2**31 - 1]``.
        max_tokens: pack capacity, in ``[1, 2**31 - 1]``.
        strategy: ``"next_fit"`` (the published ElasticAST grouping: in order, a new pack when the
            next sample would overflow), ``"first_fit_decreasing"``, ``"best_fit_decreasing"``,
            ``"best_fit_window"`` (streaming best fit with ``window`` pending samples) or
            ``"histogram"`` (exact-fill patterns on the length histogram; fastest and fullest).
        window: pending samples of ``best_fit_window``, in ``[1, 2**63 - 1]``.
        seed: deprecated (DeprecationWarning when passed): every strategy is deterministic and
            always ignored it.
        backend: "auto" (C++ when built), "native" or "python".

    Returns:
        A :class:`PackPlan` holding the flat ``order``/``pack_offsets`` arrays; its per-pack
        ``bins`` list is built on first access. The same inputs always give the same plan, on
        either backend.

    Raises:
        ValueError: a length < 1, > 2**31 - 1 or not an integer (naming its index), lengths not
            1-D, max_tokens or window out of range, an unknown strategy or backend.
        TypeError: max_tokens or window not an int; lengths not array-like (a generator, a set),
            a meta or half-precision tensor (see :func:`as_lengths`).
    """
    if seed is not _NOT_GIVEN:
        check_int("seed", seed, -(2**63))
        warnings.warn("pack_lengths(seed=...) is deprecated and has no effect: every strategy is deterministic "
                      "and always ignored the seed", DeprecationWarning, stacklevel=2)
    max_tokens, window = _check_options(max_tokens, strategy, window, backend)
    arr = as_lengths(lengths)  # a private copy: what the packer reads is what was checked
    order, offsets = _plan_arrays(arr, max_tokens, strategy, window, backend)
    # Kept flat: PackPlan.bins (one array per pack) is built only if someone asks for it. All three
    # arrays are fresh (the copy above, the packer's outputs), so the plan takes them as they are.
    return PackPlan._from_owned(order, offsets, arr, max_tokens, strategy)
