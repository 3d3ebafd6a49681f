"""Batch samplers that turn variable-length samples into fixed-token-budget steps.

A step is one or more *packs*; a pack is a set of samples whose token counts sum to at most
``max_tokens`` (the model's ``group_max_seq_len``). Each epoch the sampler

1. shuffles the sample order (``shuffle=True``) from ``(seed, epoch)`` alone,
2. packs it with :func:`elasticast_kernels.packing.pack_lengths` (``strategy``),
3. shuffles the packs, and groups them into steps of at most ``packs_per_step`` packs,
4. in the distributed sampler, hands every rank the same number of steps with balanced tokens.

Every rank computes the steps of every rank from the seed, so no communication is needed, and a rank
keeps only its own steps. A step is yielded as a list of sample indices, pack after pack, which is
what ``torch.utils.data.DataLoader(batch_sampler=...)`` expects; :func:`collate_packed` turns the
fetched samples into a :class:`~elasticast_kernels.packing.PackedBatch`.

Resuming mid-epoch: a ``DataLoader`` with workers draws ``num_workers * prefetch_factor`` steps
ahead of the training loop, so the sampler cannot tell from its own iteration which steps were
*used*. The loop says so: :meth:`~PackedBatchSampler.advance` after every finished step. The
samplers follow torch's ``Stateful`` protocol (``state_dict()`` / ``load_state_dict(state)``, as
`torch.distributed.checkpoint` and `elasticast_kernels.training.CheckpointManager` call them):
the state is the epoch and the steps the loop finished, and after :meth:`load_state_dict` the
next pass over that epoch yields exactly the steps that were not used yet::

    sampler.set_epoch(epoch)
    for batch in loader:
        train_step(batch)
        sampler.advance()                  # this step's samples are used
        checkpoint["sampler"] = sampler.state_dict()
    ...
    sampler.load_state_dict(checkpoint["sampler"])  # then set_epoch(same epoch) and iterate

(Counting what the loop consumed, rather than what the sampler yielded minus the loader's
prefetch depth, stays right at the end of an epoch, where the loader prefetches less, and for
any loader; the samples of any step are known from the seed, see :meth:`step_indices`.)

Samples longer than ``max_tokens`` get a pack of their own by default (``oversize="own_pack"``):
the pack exceeds the budget, and nothing is cropped or lost; ``"drop"`` leaves them out and
``"error"`` refuses them.
"""
from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from elasticast_kernels._checks import check_int
from elasticast_kernels.packing import pack_lengths

from ._balance import balanced_groups, split_pack

__all__ = ["EpochStats", "PackedBatchSampler", "DistributedPackedBatchSampler"]

_OVERSIZE_MODES = ("own_pack", "drop", "error")
_STATE_VERSION = 1
# Options that shape the steps: a state only resumes a sampler built with the same ones.
_STEP_OPTIONS = ("max_tokens", "strategy", "shuffle", "seed", "drop_last", "packs_per_step", "oversize", "window")


@dataclass(frozen=True)
class EpochStats:
    """What one epoch's steps look like, over all ranks.

    Attributes:
        epoch: the epoch it describes.
        num_steps: steps per rank (the same on every rank).
        num_packs: packs over all ranks.
        num_samples: samples in the steps of all ranks.
        num_dropped: samples in no step this epoch: longer than ``max_tokens`` (``oversize="drop"``)
            plus those in packs left out by ``drop_last`` or by the equal-steps rule.
        num_oversize_packs: packs holding one sample longer than ``max_tokens`` (``oversize="own_pack"``).
        rank_tokens: tokens per rank, ``num_replicas`` entries.
        token_imbalance: ``max(rank_tokens) / mean(rank_tokens) - 1`` (0 = perfectly balanced).
        step_imbalance: mean over steps of ``max / mean - 1`` of the ranks' tokens in that step: the
            fraction of a step that the average rank waits for the slowest one.
        efficiency: ``tokens / (num_packs * max_tokens)``, how full the packs are (an oversize pack
            counts all its tokens).
    """

    epoch: int
    num_steps: int
    num_packs: int
    num_samples: int
    num_dropped: int
    rank_tokens: tuple[int, ...]
    token_imbalance: float
    step_imbalance: float
    efficiency: float
    num_oversize_packs: int = 0


@dataclass(frozen=True)
class _EpochSteps:
    epoch: int
    steps: list[list[list[np.ndarray]]]  # [rank][step] -> packs (int64 index arrays)
    stats: EpochStats


def _as_lengths(lengths: object) -> np.ndarray:
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.detach().cpu().numpy()
    array = np.asarray(lengths)
    if array.ndim != 1:
        raise ValueError(f"lengths must be 1-D (one token count per sample), got shape {array.shape}")
    if array.size == 0:
        raise ValueError("lengths is empty: the dataset has no samples")
    # ValueError for a wrong value, as packing.as_lengths raises for the same mistakes
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            bad = int(np.flatnonzero(~np.isfinite(array) | (array != np.round(array)))[0])
            raise ValueError(f"lengths must hold whole token counts, but lengths[{bad}] = {array[bad]}")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"lengths must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.min() < 1:
        bad = int(np.flatnonzero(array < 1)[0])
        raise ValueError(f"lengths must be >= 1 token, but lengths[{bad}] = {array[bad]}")
    return array


_STATE_COUNTS = ("version", "epoch", "consumed_steps", "num_replicas")


def _checked_state(state: object, identity: dict, num_oversize: int) -> tuple[int, int, int]:
    """Validate a sampler state against what this sampler's steps depend on.

    Returns ``(epoch, consumed_steps, num_replicas)``. Raises TypeError / ValueError naming the
    field: a restored state passes the same checks as the arguments of a new sampler.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict from PackedBatchSampler.state_dict(), got {type(state).__name__}")
    expected = set(_STATE_COUNTS) | set(identity)
    missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected, key=repr)
    if missing or unknown:
        raise ValueError(f"state is not a sampler state_dict: missing fields {missing}, unknown fields {unknown}")
    counts = {name: check_int(f"state[{name!r}]", state[name], minimum)
              for name, minimum in zip(_STATE_COUNTS, (0, 0, 0, 1))}
    if counts["version"] != _STATE_VERSION:
        raise ValueError(f"state has version {counts['version']}; this sampler reads version {_STATE_VERSION}")
    for name, value in identity.items():
        if name == "oversize" and num_oversize == 0:
            continue  # no sample is oversize: every mode gives the same steps
        saved = state[name]
        if type(saved) is not type(value) or saved != value:  # True == 1, but a bool is not an int here
            raise ValueError(f"state was saved with {name}={saved!r}, this sampler has {value!r}: "
                             "resuming would follow other steps")
    return counts["epoch"], counts["consumed_steps"], counts["num_replicas"]


class PackedBatchSampler(Sampler[list[int]]):
    """Yields steps of sample indices whose packs each hold at most ``max_tokens`` tokens.

    Args:
        lengths: ``[num_samples]`` token count of each sample (list, numpy array or tensor of
            whole numbers >= 1); for spectrograms use
            ``features.num_tokens(features.num_frames(...))`` or ``(F // p) * (T // p)``.
        max_tokens: token budget of one pack (the model's ``group_max_seq_len``).
        strategy: any strategy of :func:`~elasticast_kernels.packing.pack_lengths`.
        shuffle: shuffle samples before packing and packs before stepping, from ``(seed, epoch)``.
        seed: non-negative int; the steps are a pure function of ``(seed, epoch)``.
        drop_last: drop the final step when it has fewer than ``packs_per_step`` packs (its
            samples are counted in :attr:`stats`); with ``packs_per_step=1`` nothing is dropped.
        packs_per_step: packs per step (gradient-accumulation-free larger steps); each step has
            between 1 and ``packs_per_step`` packs.
        oversize: what to do with samples longer than ``max_tokens`` (see :attr:`oversize_indices`):
            ``"own_pack"`` (each gets a pack of its own, over the budget), ``"drop"`` (left out of
            every epoch, with one warning) or ``"error"`` (ValueError).
        window: look-ahead window of the windowed strategies.

    Every kept index appears exactly once per epoch. Call :meth:`set_epoch` before each epoch.
    ``len(sampler)`` is the number of steps of the current epoch (the pack count can change a
    little between epochs because the shuffled order packs differently). :meth:`advance`,
    :meth:`state_dict` and :meth:`load_state_dict` resume an epoch where training stopped (see
    the module docstring).

    Raises:
        ValueError / TypeError: empty or malformed ``lengths``, bad options, every sample oversize
            with ``oversize="drop"``.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray | torch.Tensor,
        max_tokens: int,
        strategy: str = "best_fit_window",
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        packs_per_step: int = 1,
        oversize: str = "own_pack",
        *,
        window: int = 256,
    ) -> None:
        self.lengths = _as_lengths(lengths)
        self.max_tokens = check_int("max_tokens", max_tokens, 1)
        self.packs_per_step = check_int("packs_per_step", packs_per_step, 1)
        self.window = check_int("window", window, 1)
        seed = check_int("seed", seed, 0)
        if oversize not in _OVERSIZE_MODES:
            raise ValueError(f"oversize must be one of {_OVERSIZE_MODES}, got {oversize!r}")
        if not isinstance(strategy, str):
            raise TypeError(f"strategy must be a str, got {type(strategy).__name__}")
        self.strategy = strategy
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.oversize = oversize
        self.epoch = 0
        self._start_step = 0  # first step of the current epoch the next pass yields
        self._consumed = 0  # steps of the current epoch the training loop has finished
        self._crc32: int | None = None
        self._cached: _EpochSteps | None = None

        too_long = np.flatnonzero(self.lengths > self.max_tokens)
        if too_long.size and oversize == "error":
            first = int(too_long[0])
            raise ValueError(
                f"{too_long.size} sample(s) are longer than max_tokens={self.max_tokens} "
                f"(e.g. lengths[{first}] = {self.lengths[first]}); raise max_tokens, crop them, "
                f"or pass oversize='own_pack' or 'drop'"
            )
        if too_long.size == self.lengths.size and oversize == "drop":
            raise ValueError(f"every sample is longer than max_tokens={self.max_tokens}; nothing to sample")
        if too_long.size and oversize == "drop":
            warnings.warn(
                f"dropping {too_long.size} of {self.lengths.size} samples longer than max_tokens={self.max_tokens}",
                stacklevel=2,
            )
        #: indices of the samples longer than ``max_tokens`` (own packs, or dropped: see ``oversize``)
        self.oversize_indices = too_long
        self._kept = np.flatnonzero(self.lengths <= self.max_tokens)
        self.num_replicas, self.rank = self._replicas()
        self._epoch_steps(self.epoch)  # fail early on a bad strategy or too few packs

    # ------------------------------------------------------------------ setup
    def _replicas(self) -> tuple[int, int]:
        """``(num_replicas, rank)``: one process here; the distributed sampler has its own."""
        return 1, 0

    @property
    def num_oversize(self) -> int:
        """Samples longer than ``max_tokens`` (in packs of their own, or dropped: see ``oversize``)."""
        return int(self.oversize_indices.size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose steps ``__iter__`` and ``__len__`` use (the same on every rank).

        Another epoch starts at its first step; the same epoch again continues after the steps
        counted by :meth:`advance` (or restored by :meth:`load_state_dict`).
        """
        epoch = check_int("epoch", epoch, 0)
        if epoch != self.epoch:
            self._consumed = 0  # a resume point belongs to the epoch it was saved in
        self.epoch = epoch
        self._start_step = self._consumed

    @property
    def start_step(self) -> int:
        """Index of the first step the next pass over the current epoch yields (0 unless resumed)."""
        return self._start_step

    @property
    def consumed_steps(self) -> int:
        """Steps of the current epoch the training loop has finished (:meth:`advance`)."""
        return self._consumed

    def advance(self, steps: int = 1) -> None:
        """Record that the training loop finished ``steps`` more steps of the current epoch.

        Call it after each step whose samples were used (trained on, or skipped on purpose);
        :meth:`state_dict` saves this count, so steps the loader prefetched but the loop did not
        reach are yielded again after a resume.

        Raises:
            TypeError / ValueError: ``steps`` not an int >= 0, or more steps than the epoch has.
        """
        steps = check_int("steps", steps, 0)
        num_steps = self._epoch_steps(self.epoch).stats.num_steps
        if self._consumed + steps > num_steps:
            raise ValueError(f"advance({steps}) after {self._consumed} steps passes the end of epoch {self.epoch} "
                             f"({num_steps} steps)")
        self._consumed += steps

    def state_dict(self, consumed_steps: int | None = None) -> dict:
        """Where training stands in the current epoch (``Stateful``), for :meth:`load_state_dict`.

        Args:
            consumed_steps: deprecated: the count :meth:`advance` keeps (pass nothing).

        Returns:
            A dict of plain Python values (``torch.save``/JSON friendly): the epoch, the steps the
            loop finished, and the options and a CRC of ``lengths`` that the steps depend on.
        """
        consumed = self._consumed
        if consumed_steps is not None:
            warnings.warn("state_dict(consumed_steps=...) is deprecated: call sampler.advance() after each step "
                          "and state_dict() without arguments", DeprecationWarning, stacklevel=2)
            num_steps = self._epoch_steps(self.epoch).stats.num_steps
            consumed = check_int("consumed_steps", consumed_steps, 0)
            if consumed > num_steps:
                raise ValueError(f"consumed_steps must be in [0, {num_steps}] (steps in epoch {self.epoch}), "
                                 f"got {consumed}")
        return {
            "version": _STATE_VERSION,
            "epoch": self.epoch,
            "consumed_steps": consumed,
            "num_replicas": self.num_replicas,
            **self._steps_identity(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`: select its epoch and skip the steps it consumed.

        The next pass over that epoch yields exactly the steps an uninterrupted run would still
        have yielded (``len()`` counts only those); :meth:`set_epoch` with the same epoch keeps
        the resume point, another epoch drops it.

        Raises:
            TypeError: ``state`` is not a dict, or a field has the wrong type (names the field;
                a bool is not an int). ValueError: missing or unknown fields, a count out of
                range, a state built for other lengths or options (the steps would differ),
                or another ``num_replicas`` unless the state is at an epoch's start.
        """
        epoch, consumed, replicas = _checked_state(state, self._steps_identity(), self.num_oversize)
        if replicas != self.num_replicas and consumed != 0:
            raise ValueError(
                f"state was saved on num_replicas={replicas} in the middle of epoch {epoch}; this sampler has "
                f"num_replicas={self.num_replicas}, whose steps differ (resume on the same world size, "
                "or from a state saved at the start of an epoch)"
            )
        num_steps = self._epoch_steps(epoch).stats.num_steps
        if consumed > num_steps:
            raise ValueError(f"state has consumed_steps={consumed}, but epoch {epoch} has {num_steps} steps")
        self.epoch = epoch
        self._start_step = self._consumed = consumed

    def _steps_identity(self) -> dict:
        """What the steps depend on: the lengths (count and CRC) and the step options."""
        if self._crc32 is None:
            self._crc32 = zlib.crc32(np.ascontiguousarray(self.lengths).tobytes())
        return {"num_samples": int(self.lengths.size), "lengths_crc32": self._crc32,
                **{name: getattr(self, name) for name in _STEP_OPTIONS}}

    # ------------------------------------------------------------------ public
    def __iter__(self) -> Iterator[list[int]]:
        for step in self._epoch_steps(self.epoch).steps[self.rank][self._start_step :]:
            yield np.concatenate(step).tolist()

    def __len__(self) -> int:
        """Steps the next pass yields: the epoch's steps, less those consumed before a resume."""
        return self._epoch_steps(self.epoch).stats.num_steps - self._start_step

    @property
    def stats(self) -> EpochStats:
        """:class:`EpochStats` of the current epoch (all ranks)."""
        return self._epoch_steps(self.epoch).stats

    def packs(self, epoch: int | None = None) -> list[list[list[int]]]:
        """This rank's steps for ``epoch`` (default: current) as ``[step][pack] -> indices``."""
        steps = self._epoch_steps(self.epoch if epoch is None else epoch).steps[self.rank]
        return [[pack.tolist() for pack in step] for step in steps]

    def step_indices(self, step: int, epoch: int | None = None) -> list[int]:
        """The sample indices of this rank's ``step`` (0-based, counted from the epoch's first
        step) in ``epoch`` (default: current): what ``__iter__`` yields for it. The steps are a
        function of the seed, so this names the samples of any step without the loader.

        Raises:
            TypeError / ValueError: ``step`` not an int in ``[0, steps in the epoch)``.
        """
        steps = self._epoch_steps(self.epoch if epoch is None else check_int("epoch", epoch, 0)).steps[self.rank]
        step = check_int("step", step, 0)
        if step >= len(steps):
            raise ValueError(f"step must be in [0, {len(steps)}), got {step}")
        return np.concatenate(steps[step]).tolist()

    # ------------------------------------------------------------------ steps
    def _plan_packs(self, rng: np.random.Generator) -> list[np.ndarray]:
        """All packs of one epoch as arrays of dataset indices, in (shuffled) pack order; with
        ``oversize="own_pack"`` each sample longer than ``max_tokens`` is a pack of its own."""
        order = rng.permutation(self._kept) if self.shuffle else self._kept
        plan = pack_lengths(self.lengths[order], self.max_tokens, self.strategy, window=self.window)
        packs = [order[np.asarray(b, dtype=np.int64)] for b in plan.bins if len(b)]
        if self.oversize == "own_pack":
            packs += [self.oversize_indices[i : i + 1] for i in range(self.num_oversize)]
        if self.shuffle:
            packs = [packs[i] for i in rng.permutation(len(packs))]
        return packs

    def _epoch_steps(self, epoch: int) -> _EpochSteps:
        if self._cached is not None and self._cached.epoch == epoch:
            return self._cached
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        packs = self._plan_packs(rng)
        packs, num_steps, left_out = self._fit_to_ranks(packs, epoch)
        if self.num_replicas == 1:
            steps = [[packs[i : i + self.packs_per_step] for i in range(0, len(packs), self.packs_per_step)]]
        else:
            steps = self._assign_ranks(packs, num_steps, rng)
        self._cached = _EpochSteps(epoch, steps, self._stats(epoch, steps, left_out))
        return self._cached

    def _fit_to_ranks(self, packs: list[np.ndarray], epoch: int) -> tuple[list[np.ndarray], int, int]:
        """Make the packs fill ``num_replicas * num_steps`` steps. -> (packs, steps per rank, samples left out)."""
        replicas, per_step = self.num_replicas, self.packs_per_step
        if len(packs) < replicas:
            raise ValueError(
                f"num_replicas={replicas} is larger than the number of packs ({len(packs)}) in epoch {epoch}: "
                f"use fewer ranks, a smaller max_tokens, or more data"
            )
        if self.drop_last:
            num_steps = len(packs) // (replicas * per_step)
            if num_steps == 0:
                raise ValueError(
                    f"drop_last=True leaves no step: {len(packs)} packs < num_replicas * packs_per_step "
                    f"= {replicas * per_step} in epoch {epoch}"
                )
            kept, dropped = packs[: replicas * num_steps * per_step], packs[replicas * num_steps * per_step :]
            return kept, num_steps, sum(len(p) for p in dropped)

        num_steps = math.ceil(len(packs) / (replicas * per_step))
        if replicas == 1:
            return packs, num_steps, 0
        # Every step needs at least one pack: split the fullest multi-sample packs until there
        # are replicas * num_steps of them (only happens for a remainder smaller than replicas).
        packs = list(packs)
        while len(packs) < replicas * num_steps:
            splittable = [i for i, p in enumerate(packs) if len(p) > 1]
            if not splittable:
                break
            fullest = max(splittable, key=lambda i: (int(self.lengths[packs[i]].sum()), -i))
            first, second = split_pack(packs[fullest], self.lengths)
            packs[fullest : fullest + 1] = [first, second]
        if len(packs) >= replicas * num_steps:
            return packs, num_steps, 0
        # Only single-sample packs and too few of them: fewer steps, leaving out the smallest packs.
        num_steps = len(packs) // replicas
        keep = replicas * num_steps * per_step
        if keep >= len(packs):
            return packs, num_steps, 0
        by_size = sorted(range(len(packs)), key=lambda i: -int(self.lengths[packs[i]].sum()))
        kept_ids = sorted(by_size[:keep])
        dropped = [packs[i] for i in by_size[keep:]]
        num_left_out = sum(len(p) for p in dropped)
        warnings.warn(
            f"epoch {epoch}: {len(packs)} single-sample packs cannot fill the same number of steps on "
            f"{replicas} ranks; leaving out {num_left_out} sample(s) this epoch",
            stacklevel=4,
        )
        return [packs[i] for i in kept_ids], num_steps, num_left_out

    def _assign_ranks(self, packs: list[np.ndarray], num_steps: int, rng: np.random.Generator) -> list[list[list[np.ndarray]]]:
        """Balance packs over ranks, then over each rank's steps, then align step sizes across ranks."""
        pack_tokens = np.array([int(self.lengths[p].sum()) for p in packs], dtype=np.int64)
        per_rank = balanced_groups(pack_tokens, self.num_replicas, num_steps, num_steps * self.packs_per_step)
        # One permutation shared by every rank, so step s is the s-th largest step everywhere:
        # ranks run steps of similar size side by side and wait less for each other.
        step_order = rng.permutation(num_steps) if self.shuffle else np.arange(num_steps)
        steps = []
        for rank_packs in per_rank:
            ids = np.asarray(rank_packs, dtype=np.int64)
            groups = balanced_groups(pack_tokens[ids], num_steps, 1, self.packs_per_step)
            groups.sort(key=lambda g: -int(pack_tokens[ids[g]].sum()))
            steps.append([[packs[ids[j]] for j in groups[s]] for s in step_order])
        return steps

    def _stats(self, epoch: int, steps: list[list[list[np.ndarray]]], left_out: int) -> EpochStats:
        step_tokens = np.array(
            [[sum(int(self.lengths[p].sum()) for p in step) for step in rank_steps] for rank_steps in steps],
            dtype=np.int64,
        )  # [rank, step]
        rank_tokens = step_tokens.sum(axis=1)
        num_packs = sum(len(step) for rank_steps in steps for step in rank_steps)
        num_samples = sum(len(p) for rank_steps in steps for step in rank_steps for p in step)
        mean_step = step_tokens.mean(axis=0)
        step_imbalance = float(np.mean(step_tokens.max(axis=0) / np.maximum(mean_step, 1) - 1)) if step_tokens.size else 0.0
        return EpochStats(
            epoch=epoch,
            num_steps=int(step_tokens.shape[1]),
            num_packs=num_packs,
            num_samples=num_samples,
            num_dropped=(self.num_oversize if self.oversize == "drop" else 0) + left_out,
            rank_tokens=tuple(int(t) for t in rank_tokens),
            token_imbalance=float(rank_tokens.max() / max(rank_tokens.mean(), 1) - 1),
            step_imbalance=step_imbalance,
            efficiency=float(rank_tokens.sum() / (num_packs * self.max_tokens)),
            num_oversize_packs=sum(int(self.lengths[p[0]]) > self.max_tokens
                                   for rank_steps in steps for step in rank_steps for p in step if len(p) == 1),
        )


class DistributedPackedBatchSampler(PackedBatchSampler):
    """:class:`PackedBatchSampler` for data parallelism: each rank gets its own share of the packs.

    Every rank computes every rank's steps from ``(seed, epoch)`` and keeps its own: no index is
    on two ranks, and every rank has the same number of steps (so collective ops stay in step).
    Packs are spread by tokens (largest first to the rank with the fewest tokens), and steps are
    aligned so that step ``s`` is about the same size on every rank; :attr:`stats` reports the
    remaining imbalance (``token_imbalance``, ``step_imbalance``).

    When the pack count does not divide evenly, the fullest multi-sample packs are split in two
    so that every step has at least one pack (no sample is repeated or dropped); only if that is
    impossible (too few samples) are the smallest packs left out, with a warning. With
    ``drop_last=True`` the trailing packs that do not fill a whole round of steps are left out.

    Args:
        num_replicas, rank: world size and this process's rank; default to
            ``torch.distributed``'s when it is initialised.
        Others: as :class:`PackedBatchSampler`.

    Raises:
        ValueError: ``num_replicas`` larger than the number of packs, a bad rank, or the errors of
            :class:`PackedBatchSampler`.
    """

    def __init__(self, *args, num_replicas: int | None = None, rank: int | None = None, **kwargs) -> None:
        if num_replicas is None or rank is None:
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                raise ValueError("pass num_replicas and rank, or initialise torch.distributed first")
            num_replicas = torch.distributed.get_world_size() if num_replicas is None else num_replicas
            rank = torch.distributed.get_rank() if rank is None else rank
        num_replicas = check_int("num_replicas", num_replicas, 1)
        self._requested = (num_replicas, check_int("rank", rank, 0, num_replicas - 1))
        super().__init__(*args, **kwargs)

    def _replicas(self) -> tuple[int, int]:
        return self._requested
