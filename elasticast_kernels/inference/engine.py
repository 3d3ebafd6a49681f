"""The predictor: audio in, per-file scores out, many files packed into forwards of a token budget.

Data flow, one input at a time (the inputs may be a generator of millions of paths)::

    path / waveform --decode, mono, resample--> waveform at the card's rate
      --whole: one spectrogram | window: one per window (made lazily)--> segments
      --buffer of a few token budgets--> pack_lengths (first fit decreasing) into packs of at most
      ``max_tokens`` tokens (a longer segment: a pack of its own) --> model.embed + head per pack
      --> softmax (sigmoid if multi-label) per segment --> per file: its scores (window mode: the
      mean of its windows' scores), in input order

What is held at once is the buffered segments (a few budgets of tokens), the waveform of the
file being cut into windows, and the scores of the files not yet returned: peak memory follows
the token budget and the longest file, not the number of files.
"""
from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from elasticast_kernels._checks import check_int, check_number
from elasticast_kernels.data.audio import AudioError
from elasticast_kernels.inference.inputs import as_input, input_name, load_input
from elasticast_kernels.inference.results import Prediction, WindowScores
from elasticast_kernels.inference.spectrograms import spectrogram, window_bounds
from elasticast_kernels.models import PackedAST
from elasticast_kernels.packing import pack_lengths
from elasticast_kernels.saved_model import FeatureSettings, ModelCard, load_model

__all__ = ["LONG_MODES", "Predictor", "resolve_device"]

#: How a file is scored: ``whole`` (one sequence) or ``window`` (overlapping windows, mean score).
LONG_MODES = ("whole", "window")
#: Segments are buffered up to this many token budgets before they are packed: enough for the
#: packer to fill packs well, few enough to keep memory and the delay to the first result small.
_BUFFER_BUDGETS = 4


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; otherwise the device named.

    Raises:
        ValueError: an unknown device string, a device type other than cpu/cuda, or CUDA asked
            for where torch sees no CUDA device (the message says which).
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r} ({error})") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU build" if torch.version.cuda is None else "torch sees no CUDA device or driver"
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here ({why}); use 'cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return resolved


@dataclass
class _Segment:
    """One sequence for the model: a whole file or one of its windows."""

    file: "_FileState"
    index: int  # the window's index in its file (0 for a whole file)
    spec: torch.Tensor  # the model's input: [1, F, T] (ElasticAST) or [frames, mel] (PackedAST)
    tokens: int


class _ModelFeed:
    """What differs between the architectures a predictor runs: their input, head and table.

    ElasticAST reads ``[1, F, T]`` spectrograms cut to whole ``p x p`` tiles; `PackedAST` reads
    ``[frames, mel]`` features with every frame kept (its patches overlap, stride 10), as
    ``ASTFeatureExtractor`` gives them without the padding. Both take ``embed(rows,
    group_samples=False)``; the head is ``head`` (a Linear) or ``classifier`` (LayerNorm + Linear).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.frames_in = isinstance(model, PackedAST)
        if self.frames_in:
            self.head, self.num_classes = model.classifier, model.num_classes
            self.dim, self.table_frames = model.config["hidden_size"], model.config["max_length"]
        else:
            for attribute in ("embed", "head", "patch_size", "pos_embed_time"):
                if not hasattr(model, attribute):
                    raise TypeError(f"model must be a PackedAST or an ElasticAST-like module with .{attribute}, "
                                    f"got {type(model).__name__}")
            self.head, self.num_classes, self.dim = model.head, model.head.out_features, model.head.in_features
            self.table_frames = model.pos_embed_time.shape[0] * model.patch_size

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights, which its inputs must have."""
        return (self.head.dense if self.frames_in else self.head).weight.dtype

    def segment(self, waveform: torch.Tensor, features: FeatureSettings, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        """``(model input, its tokens)`` of one waveform piece."""
        if self.frames_in:
            clip = spectrogram(waveform, features, 1)[0].t().to(dtype)  # 1-frame "patches": no frame dropped
            return clip, self.model.num_tokens(clip.shape[0])
        patch = self.model.patch_size
        spec = spectrogram(waveform, features, patch).to(dtype)
        return spec, (spec.shape[1] // patch) * (spec.shape[2] // patch)


class _FileState:
    """Scores of one input's segments as they come back from the packs (in any order)."""

    def __init__(self, prediction: Prediction, bounds_s: list[tuple[float, float]] | None, num_segments: int,
                 dim: int | None) -> None:
        self.prediction, self.bounds_s = prediction, bounds_s
        self.remaining = num_segments
        self.scores = np.zeros((num_segments, len(prediction.classes)), np.float32)
        self.embeddings = None if dim is None else np.zeros((num_segments, dim), np.float32)

    @property
    def complete(self) -> bool:
        return self.remaining == 0 or self.prediction.error is not None

    def add(self, index: int, scores: np.ndarray, embedding: np.ndarray | None) -> None:
        if self.prediction.error is not None:  # another window of it was refused: nothing to add
            return
        self.scores[index] = scores
        if self.embeddings is not None:
            self.embeddings[index] = embedding
        self.remaining -= 1

    def finish(self) -> Prediction:
        result = self.prediction
        if result.error is None:
            result.scores = self.scores.mean(axis=0)
            if self.embeddings is not None:
                result.embedding = self.embeddings.mean(axis=0)
            if self.bounds_s is not None:
                result.windows = [WindowScores(start, end, row) for (start, end), row in zip(self.bounds_s, self.scores)]
        self.scores = self.embeddings = None
        return result


class Predictor:
    """A saved (or in-memory) classifier ready to score audio files and waveforms.

    Args:
        model: an ElasticAST (anything with ``embed``, ``head``, ``patch_size`` and
            ``pos_embed_time``) or a `PackedAST`; it is put in eval mode and moved to ``device``.
        card: its :class:`~elasticast_kernels.saved_model.ModelCard` (class names, multi-label,
            feature settings).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        max_tokens: token budget of one forward: segments are packed into forwards of at most
            this many tokens (a longer one gets a forward of its own), which bounds the memory
            of the activations.
        long: ``"window"`` (default: overlapping windows, the file's score is the mean of the
            window scores, per-window scores kept) or ``"whole"`` (one sequence per file).
        window_s: window length in seconds (default: the time positional table's extent, i.e.
            the longest clip the model was built for; a file no longer than one window is one
            window, scored exactly as in whole mode).
        hop_s: seconds between window starts (default: half a window); at most ``window_s``.
        bf16: bf16 autocast on CUDA (the CPU always computes in the weights' dtype).

    Raises:
        ValueError / TypeError: bad options (the message names the option).
    """

    def __init__(self, model: nn.Module, card: ModelCard, *, device: str | torch.device = "auto",
                 max_tokens: int = 4096, long: str = "window", window_s: float | None = None,
                 hop_s: float | None = None, bf16: bool = True) -> None:
        if not isinstance(card, ModelCard):
            raise TypeError(f"card must be a ModelCard, got {type(card).__name__}")
        feed = _ModelFeed(model)
        check_int("max_tokens", max_tokens, 1)
        if long not in LONG_MODES:
            raise ValueError(f"long must be one of {LONG_MODES}, got {long!r}")
        self.device = resolve_device(device)
        self.model, self._feed = model.to(self.device).eval(), feed
        self.card, self.features = card, card.features
        self.max_tokens, self.long, self.bf16 = max_tokens, long, bool(bf16)
        self.classes = card.classes or tuple(str(i) for i in range(feed.num_classes))
        frames = feed.table_frames
        self.window_s = check_number("window_s", window_s if window_s is not None
                                     else frames * self.features.frame_shift_ms * self.features.quality / 1000,
                                     positive=True)
        self.hop_s = check_number("hop_s", hop_s if hop_s is not None else self.window_s / 2, positive=True)
        if self.hop_s > self.window_s:
            raise ValueError(f"hop_s={self.hop_s} must not exceed window_s={self.window_s} (audio would be skipped)")
        rate = self.features.sample_rate
        self._window = max(1, round(self.window_s * rate))
        self._hop = min(self._window, max(1, round(self.hop_s * rate)))
        if self._window < self.features.frame_length_ms * rate / 1000:
            raise ValueError(f"window_s={self.window_s} is shorter than one {self.features.frame_length_ms} ms analysis frame")

    @classmethod
    def from_file(cls, path, *, device: str | torch.device = "auto", backend: str = "auto", **options) -> "Predictor":
        """Load a model file (`elasticast_kernels.saved_model.save_model`) or a training
        checkpoint that carries a model card, and wrap it. ``backend``: the attention backend
        (``"auto"``: the fastest for the device; the one the card was trained with may not run
        here). Other keywords: as the constructor.

        Raises:
            FileNotFoundError, CheckpointError: see `elasticast_kernels.saved_model.load_model`.
        """
        device = resolve_device(device)
        model, card = load_model(path, map_location=device, attention_backend=backend)
        return cls(model, card, device=device, **options)

    # ------------------------------------------------------------------------------------------
    def predict(self, inputs: Iterable, *, embeddings: bool = False, on_error: str = "raise") -> Iterator[Prediction]:
        """Score ``inputs`` (paths, :class:`~elasticast_kernels.inference.Waveform` s or
        ``(samples, sample_rate)`` pairs; any iterable, consumed lazily): one
        :class:`~elasticast_kernels.inference.Prediction` per input, in input order, each as soon
        as it is complete.

        Args:
            embeddings: also return every input's pooled embedding.
            on_error: ``"raise"`` (the first unusable input raises) or ``"return"`` (its
                Prediction carries ``error`` and no scores, and the others go on).

        Raises:
            AudioError: an unusable input (missing, corrupt, empty, NaN/inf, bad layout) with
                ``on_error="raise"``; names the input.
            ValueError: the model refuses an input (the message names it), with ``on_error="raise"``.
            TypeError: an input of an unknown kind.
        """
        if on_error not in ("raise", "return"):
            raise ValueError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        dim = self._feed.dim if embeddings else None
        pending: deque[_FileState] = deque()
        buffer: list[_Segment] = []
        buffered = 0
        for position, item in enumerate(inputs):
            state, segments = self._open(as_input(item, position), dim, on_error)
            pending.append(state)
            for segment in segments:
                buffer.append(segment)
                buffered += segment.tokens
                if buffered >= _BUFFER_BUDGETS * self.max_tokens:
                    self._run(buffer, on_error)
                    buffer, buffered = [], 0
                    yield from _completed(pending)
            yield from _completed(pending)
        self._run(buffer, on_error)
        yield from _completed(pending)

    def predict_all(self, inputs: Iterable, *, embeddings: bool = False, on_error: str = "raise") -> list[Prediction]:
        """``list(self.predict(...))``."""
        return list(self.predict(inputs, embeddings=embeddings, on_error=on_error))

    # ------------------------------------------------------------------------------------------
    def _open(self, item, dim: int | None, on_error: str) -> tuple[_FileState, Iterator[_Segment]]:
        """Decode ``item``; its state and a generator of its segments (empty when it failed)."""
        name = input_name(item)
        try:
            waveform, duration_s = load_input(item, self.features.sample_rate)
        except AudioError as error:
            if on_error == "raise":
                raise
            return _FileState(Prediction(name, 0.0, self.classes, error=error.reason), None, 0, dim), iter(())
        prediction = Prediction(name, duration_s, self.classes)
        wave = torch.from_numpy(waveform).to(self.device)
        rate = self.features.sample_rate
        if self.long == "whole":
            bounds = [(0, wave.shape[0])]
        else:
            bounds = window_bounds(wave.shape[0], self._window, self._hop)
        bounds_s = None if self.long == "whole" else [(start / rate, end / rate) for start, end in bounds]
        state = _FileState(prediction, bounds_s, len(bounds), dim)
        return state, self._segments(state, wave, bounds)

    def _segments(self, state: _FileState, wave: torch.Tensor, bounds) -> Iterator[_Segment]:
        dtype = self._feed.dtype
        last = len(bounds) - 1
        for index, (start, end) in enumerate(bounds):
            piece = wave[start:end]
            if index == last:  # let the waveform go before the last segment's forward
                wave = None
            spec, tokens = self._feed.segment(piece, self.features, dtype)
            del piece
            yield _Segment(state, index, spec, tokens)

    def _run(self, buffer: list[_Segment], on_error: str) -> None:
        """Pack the buffered segments by the token budget and score every pack."""
        if not buffer:
            return
        lengths = np.array([segment.tokens for segment in buffer], dtype=np.int64)
        fits = np.flatnonzero(lengths <= self.max_tokens)
        packs = [[int(i)] for i in np.flatnonzero(lengths > self.max_tokens)]  # over budget: alone
        if fits.size:
            plan = pack_lengths(lengths[fits], self.max_tokens, strategy="first_fit_decreasing")
            packs += [[int(fits[j]) for j in pack] for pack in plan.bins]
        for pack in packs:
            self._score([buffer[i] for i in pack], on_error)

    def _score(self, segments: list[_Segment], on_error: str) -> None:
        try:
            scores, embeddings = self._forward([segment.spec for segment in segments], segments[0].file.embeddings is not None)
        except ValueError as error:  # the model refuses an input: find which, score the others
            if len(segments) > 1:
                for segment in segments:
                    self._score([segment], on_error)
                return
            source = segments[0].file.prediction.source
            hint = "; --long window / long='window' scores it in windows" if self.long == "whole" else ""
            if on_error == "raise":
                raise ValueError(f"{source}: the model refused it: {error}") from error
            segments[0].file.prediction.error = f"the model refused it: {error}{hint}"
            return
        for row, segment in enumerate(segments):
            segment.file.add(segment.index, scores[row], None if embeddings is None else embeddings[row])

    def _forward(self, specs: list[torch.Tensor], want_embeddings: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """One pack: ``(scores [n, classes], embeddings [n, dim] or None)`` as float32 numpy."""
        autocast = (torch.autocast("cuda", torch.bfloat16) if self.device.type == "cuda" and self.bf16
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            embedded = self.model.embed([specs], group_samples=False)
            logits = self._feed.head(embedded).float()
        scores = torch.sigmoid(logits) if self.card.multi_label else torch.softmax(logits, dim=-1)
        return scores.cpu().numpy(), embedded.float().cpu().numpy() if want_embeddings else None


def _completed(pending: deque) -> Iterator[Prediction]:
    while pending and pending[0].complete:
        yield pending.popleft().finish()
