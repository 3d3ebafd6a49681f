"""Training beyond one process: loss normalisation across ranks, DDP/FSDP2 wrapping, atomic
checkpoints with every rank's RNG state, warm-up + cosine LR, scores and a JSONL metrics log.

- :func:`init_distributed`, :class:`DistributedContext`: ``torchrun`` env or a plain process.
- :func:`reduce_sums`, :func:`scale_to_global_mean`: one all-reduce of the step's sample count, so
  R ranks with unequal sample counts get the gradient one process would get over their union.
- :func:`wrap_model`, :func:`unwrap_model`, :func:`full_model_state`, :func:`full_training_state`,
  :func:`load_training_state`: DDP (default) or FSDP2 ``fully_shard``; full state dicts under
  the model's published keys.
- :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`capture_rng_state`,
  :func:`restore_rng_state`: atomic writes (temporary file, fsync, ``os.replace``).
- :func:`warmup_cosine`, :class:`WarmupCosine`; :func:`accuracy`, :func:`mean_average_precision`;
  :class:`MetricsLog`.

``examples/train.py`` puts them together.
"""
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .distributed import DistributedContext, init_distributed, reduce_sums, scale_to_global_mean
from .log import MetricsLog
from .metrics import accuracy, average_precision, mean_average_precision
from .parallel import full_model_state, full_training_state, load_training_state, unwrap_model, wrap_model
from .schedule import WarmupCosine, warmup_cosine

from . import checkpoint, distributed, log, metrics, parallel, schedule

__all__ = [
    *distributed.__all__,
    *parallel.__all__,
    *checkpoint.__all__,
    *schedule.__all__,
    *metrics.__all__,
    *log.__all__,
]
