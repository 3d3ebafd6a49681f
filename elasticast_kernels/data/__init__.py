"""Training-side packing: samplers, collate, and Kaldi-compatible features.

- :class:`PackedBatchSampler` / :class:`DistributedPackedBatchSampler`: steps of sample indices
  whose packs fit a token budget, deterministic per ``(seed, epoch)``, balanced across ranks.
- :func:`collate_packed` / :class:`PackedCollator`: ``(spectrogram, label)`` samples to a
  :class:`~elasticast_kernels.packing.PackedBatch` in the data-loader worker.
- :func:`fbank`, :func:`audio_to_spectrogram`, :func:`num_frames`, :func:`num_tokens`: features
  as the AST / ElasticAST recipes compute them, with the quality (time-resolution) multiplier.
- :class:`ManifestDataset`: wav/flac files listed in a CSV or JSONL manifest (``path`` +
  ``label`` or ``labels``), features computed in the loader workers; :class:`ManifestError`
  lists every unusable line (:class:`ManifestProblem`).
- :func:`estimate_normalization`: the ``(mean, std)`` of a training set's features, checked finite.
"""
from .collate import PackedCollator, collate_packed
from .features import AUDIOSET_NORM, audio_to_spectrogram, fbank, mel_filterbank, num_frames, num_tokens
from .manifest import ManifestDataset, ManifestEntry, ManifestError, ManifestProblem
from .normalization import estimate_normalization
from .samplers import DistributedPackedBatchSampler, EpochStats, PackedBatchSampler

__all__ = [
    "PackedBatchSampler",
    "DistributedPackedBatchSampler",
    "EpochStats",
    "collate_packed",
    "PackedCollator",
    "fbank",
    "audio_to_spectrogram",
    "num_frames",
    "num_tokens",
    "mel_filterbank",
    "AUDIOSET_NORM",
    "ManifestDataset",
    "ManifestEntry",
    "ManifestError",
    "ManifestProblem",
    "estimate_normalization",
]
