"""The batches of a run that can be resumed: epochs, the sampler's position, the loader's seeds.

A resumable loop must (1) select each epoch on the sampler, (2) count a step as used only once
the loop has it, never when a loader worker prefetches it, (3) roll over to the next epoch when
one runs out, including one a resume left with no step to go, and (4) give the loader workers
the same seeds on a resume as in the uninterrupted run (their augmentation draws depend on them).
:func:`resumable_batches` does all four, so the loop body only trains and checkpoints::

    for step, epoch, batch in resumable_batches(loader, sampler, total_steps, start_step, generator, seed):
        train_step(batch)
        manager.save(step)            # the sampler already counts this batch as used
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

__all__ = ["resumable_batches"]


def resumable_batches(loader: Iterable[Any], sampler: Any, total_steps: int, start_step: int = 0,
                      generator: torch.Generator | None = None, seed: int = 0,
                      rank: int = 0) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(step, epoch, batch)`` for steps ``start_step + 1`` .. ``total_steps``, epoch after epoch.

    Args:
        loader: a ``DataLoader`` whose ``batch_sampler`` is ``sampler`` (any iterable of batches
            in the sampler's order).
        sampler: a :class:`~elasticast_kernels.data.PackedBatchSampler` (``epoch``, ``set_epoch``,
            ``advance``), restored from a checkpoint on a resume.
        total_steps: the step to stop after. start_step: steps already done (the checkpoint's).
        generator: the loader's ``generator``; reseeded at each epoch from ``(seed, epoch, rank)``,
            so loader workers draw the same numbers whether or not the run was resumed.
        seed, rank: see ``generator``.

    A batch counts as used (``sampler.advance()``) when it is handed to the loop: a checkpoint
    saved in the loop body after the step resumes at the next batch. Stop early with ``break``.
    """
    step = start_step
    while step < total_steps:
        epoch = sampler.epoch
        sampler.set_epoch(epoch)  # the same epoch again keeps a restored position
        if generator is not None:
            generator.manual_seed((seed * 7919 + epoch * 104729 + rank) % 2**63)
        for batch in loader:
            sampler.advance()
            step += 1
            yield step, epoch, batch
            if step >= total_steps:
                return
        sampler.set_epoch(epoch + 1)  # the epoch ran out: the next one starts at its first step
