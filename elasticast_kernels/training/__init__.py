"""Training beyond one process: the checkpoint/resume protocol, loss normalisation across ranks,
DDP/FSDP2 wrapping, keeping NaN out of a run, warm-up + cosine LR, scores and a JSONL metrics log.

- :class:`CheckpointManager`: saves and restores model, optimiser, scheduler, sampler, every
  rank's RNG states and the step, atomically, for a training loop of your own (DDP, FSDP2 or
  one process); optionally with a model card, so ``load_model`` rebuilds the model from it.
- :func:`resumable_batches`: the epochs of a run, with the sampler's position counted as the loop
  takes batches and the loader workers' seeds the same after a resume.
- :func:`init_distributed`, :class:`DistributedContext`: ``torchrun`` env or a plain process.
- :func:`global_mean_update` (on :func:`reduce_sums`, :func:`scale_to_global_mean`): one all-reduce
  of the step's sample count, so R ranks with unequal sample counts get the gradient one process
  would get over their union; a NaN/inf loss or gradient norm skips the update on every rank.
- :func:`wrap_model`, :func:`unwrap_model`, :func:`full_model_state`, :func:`full_training_state`,
  :func:`load_training_state`, :func:`unsharded_model`: DDP (default) or FSDP2 ``fully_shard``;
  full state dicts under the model's published keys.
- :class:`NonFiniteSteps`, :class:`NonFiniteError`, :func:`check_finite_state`: NaN/inf losses,
  gradients and weights stop a run naming the files, or skip the step; never reach a checkpoint.
- :class:`StopRequest`: SIGTERM as a flag the loop turns into a checkpoint and a clean exit.
- :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`capture_rng_state`,
  :func:`restore_rng_state`, :func:`seed_rng`: the file format and the RNG states underneath.
- :func:`warmup_cosine`, :class:`WarmupCosine`; :func:`accuracy`, :func:`mean_average_precision`,
  :func:`evaluate`; :class:`MetricsLog`, :class:`RunningTotals`.

``examples/train.py`` puts them together.
"""
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    seed_rng,
)
from .distributed import DistributedContext, gather_objects, init_distributed, reduce_sums, scale_to_global_mean
from .finite import NonFiniteError, NonFiniteSteps, check_finite_state, first_nonfinite
from .log import MetricsLog, RunningTotals
from .loop import resumable_batches
from .manager import CheckpointManager, Stateful, TrainingCheckpoint
from .metrics import accuracy, average_precision, evaluate, mean_average_precision
from .parallel import (full_model_state, full_training_state, load_training_state, unsharded_model, unwrap_model,
                       wrap_model)
from .lr_schedule import WarmupCosine, warmup_cosine
from .stop import StopRequest, ignore_sigterm
from .update import StepOutcome, global_mean_update

from . import checkpoint, distributed, finite, log, loop, lr_schedule, manager, metrics, parallel, stop, update

__all__ = [
    *manager.__all__,
    *loop.__all__,
    *update.__all__,
    *distributed.__all__,
    *parallel.__all__,
    *finite.__all__,
    *stop.__all__,
    *checkpoint.__all__,
    *lr_schedule.__all__,
    *metrics.__all__,
    *log.__all__,
]
