"""Hugging Face AST group: ``ASTForAudioClassification`` on the extractor's padded batch vs
`PackedAST` on the unpadded features, same weights.

One eval forward over ``samples_per_step`` clips of 1-10 s (durations seeded uniform, 16 kHz
frames): the HF model on what ``ASTFeatureExtractor`` gives it (every clip padded to 1024 frames
with the normalised padding), `PackedAST` on one ``[frames, 128]`` tensor per clip. AST's geometry
(128 mel bins, 16x16 patches at stride 10, 1024 frames) at the model group's size, random weights
seeded by the config. Checked: on a 1024-frame clip both give the same logits (the same function
of the same weights). ``speedup_vs_baseline`` = HF median / PackedAST median. Needs transformers
(the ``hf`` extra); without it both cases are listed as skipped, saying so.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from elasticast_kernels.bench.config import BenchConfig
from elasticast_kernels.bench.groups._common import Case, Shared, Task, Timed, Unavailable, add_speedups, close_to
from elasticast_kernels.bench.groups.model import logits_tolerance

GROUP = "hf_ast"
HF_PADDED, PACKED = "hf_padded", "packed_ast"
WORKLOAD = "clips_1-10s"
MAX_LENGTH, MEL, PATCH, STRIDE = 1024, 128, 16, 10


def clip_frames(clips: int, seconds: tuple[float, float] = (1.0, 10.0), seed: int = 0) -> list[int]:
    """Frames of ``clips`` clips with durations uniform in ``seconds`` (16 kHz, 25 ms / 10 ms)."""
    from elasticast_kernels.data import num_frames

    durations = np.random.default_rng(seed).uniform(*seconds, size=clips)
    return [int(num_frames(int(d * 16000), 16000)) for d in durations]


def make_inputs(frames: list[int], seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(unpadded [frames, 128] features, the extractor's padded [clips, 1024, 128] batch)``:
    random features (the time does not depend on them), padded with the extractor's normalised
    padding and cut at 1024 frames as it does."""
    from elasticast_kernels.models.ast_features import ASTFeatures

    generator = torch.Generator().manual_seed(seed)
    clips = [torch.randn(n, MEL, generator=generator) for n in frames]
    padded = torch.full((len(clips), MAX_LENGTH, MEL), ASTFeatures().pad_value)
    for row, clip in zip(padded, clips):
        row[: min(len(clip), MAX_LENGTH)] = clip[:MAX_LENGTH]
    return clips, padded


def encoder_tokens(frames: list[int]) -> tuple[int, int]:
    """``(tokens the HF model's encoder sees, tokens PackedAST's sees)``, 2 special tokens per clip
    included."""
    from elasticast_kernels.data import num_tokens

    def count(n: int) -> int:
        return num_tokens(n, MEL, PATCH, STRIDE) + 2

    return len(frames) * count(MAX_LENGTH), sum(count(n) for n in frames)


def build_models(hidden_size: int, layers: int, heads: int, num_labels: int, seed: int, device: str = "cpu",
                 backend: str = "auto"):
    """``(ASTForAudioClassification, PackedAST.from_hf of it)``: same weights, eval mode.

    Raises:
        Unavailable: transformers is not installed.
    """
    try:
        from transformers import ASTConfig, ASTForAudioClassification
    except ImportError:
        raise Unavailable("transformers is not installed (pip install 'elasticast-kernels[hf]')") from None
    from elasticast_kernels.models import PackedAST

    torch.manual_seed(seed)
    config = ASTConfig(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=4 * hidden_size, num_labels=num_labels, max_length=MAX_LENGTH,
                       num_mel_bins=MEL)
    hf = ASTForAudioClassification(config).to(device).eval()
    return hf, PackedAST.from_hf(hf, attention_backend=backend)


def _autocast(cfg: BenchConfig) -> contextlib.AbstractContextManager:
    if not cfg.is_cuda:
        return contextlib.nullcontext()
    return torch.autocast("cuda", torch.bfloat16)


def _case(cfg: BenchConfig, variant: str, models: Shared, inputs: Shared, frames: list[int]) -> Case:
    def setup() -> Timed:
        hf, packed = models()
        clips, padded = inputs()
        padded_tokens, packed_tokens = encoder_tokens(frames)
        with torch.inference_mode(), _autocast(cfg):  # the same function: equal logits at 1024 frames
            full = hf(input_values=padded[:1]).logits.float()
            max_diff = close_to(packed([padded[0]]), full, logits_tolerance("bf16" if cfg.is_cuda else "fp32"),
                                "PackedAST vs ASTForAudioClassification at 1024 frames")

        def run() -> torch.Tensor:
            with torch.inference_mode(), _autocast(cfg):
                return hf(input_values=padded).logits if variant == HF_PADDED else packed(clips)

        def check(logits: torch.Tensor) -> dict:
            if tuple(logits.shape) != (len(frames), cfg.num_classes) or not bool(torch.isfinite(logits).all()):
                raise AssertionError(f"logits of shape {tuple(logits.shape)} or not finite")
            return {"max_abs_logit_diff_at_1024_frames": max_diff}

        tokens = padded_tokens if variant == HF_PADDED else packed_tokens
        return Timed(run, check, rates=lambda s: {"samples_per_s": len(frames) / s, "tokens_per_s": tokens / s},
                     info={"total_tokens": tokens, "padding_fraction": 1.0 - packed_tokens / tokens},
                     warmup=min(cfg.warmup, 2), repeats=cfg.model_repeats)

    return Case(GROUP, "eval", variant, WORKLOAD, dict(cfg.model.as_dict(), samples=len(frames)), setup)


def tasks(cfg: BenchConfig) -> list[Task]:
    frames = clip_frames(cfg.samples_per_step, seed=cfg.seed)
    size = cfg.model

    def make_inputs_on_device():
        clips, padded = make_inputs(frames, cfg.seed)
        return [clip.to(cfg.device) for clip in clips], padded.to(cfg.device)

    models = Shared(lambda: build_models(size.dim, size.depth, size.heads, cfg.num_classes, cfg.seed, cfg.device,
                                         cfg.fast_backend))
    inputs = Shared(make_inputs_on_device)
    cases = [_case(cfg, variant, models, inputs, frames) for variant in (PACKED, HF_PADDED)]
    return [Task(GROUP, f"HF AST padded vs PackedAST [{WORKLOAD}]", cases, None,
                 lambda results: add_speedups(results, HF_PADDED))]
