"""Suite settings: what each suite measures on each device.

The paper's settings are the defaults (128 mel bins, patch 16, 12 samples per step, 2048-token
packs, ViT-B for the model group). CPU runs keep the shapes that matter for the comparison but
shrink the model (dim 384, depth 4, 6 heads) so the quick suite finishes in minutes on two cores;
every CPU result is labelled as such in the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from elasticast_kernels.bench.workloads import PACK_TOKENS, SAMPLES_PER_STEP, WORKLOADS

# "static" compiles the kernels and reads their machine code (bench/static); it takes no BenchConfig.
# A BenchConfig's suite is "quick", "full" or "tiny" (tiny_config: tests and smoke runs).
SUITES = ("quick", "full", "static")
STRATEGIES = ("next_fit", "first_fit_decreasing", "best_fit_decreasing", "best_fit_window", "histogram")
GROUPS = ("packing", "attention", "pooling", "model", "end_to_end", "sweep", "hf_ast")
# Attention implementations compared in the attention group; "sdpa_masked" is the paper's way and
# the denominator of every speedup.
ATTENTION_BACKENDS = (
    "triton", "torch", "sdpa_masked", "sdpa_masked_math", "padded", "flex",
    "varlen_attn", "nested_sdpa", "flash_attn", "xformers",
)
BASELINE = "sdpa_masked"


@dataclass
class ModelSize:
    dim: int
    depth: int
    heads: int

    def as_dict(self) -> dict:
        return {"dim": self.dim, "depth": self.depth, "heads": self.heads}


@dataclass
class BenchConfig:
    """Everything a run needs; built by ``make_config`` and adjustable field by field (tests)."""

    suite: str
    device: str
    workloads: tuple[str, ...] = ("voxceleb",)
    seed: int = 0
    dtype: torch.dtype = torch.float32
    samples_per_step: int = SAMPLES_PER_STEP
    pack_tokens: int = PACK_TOKENS
    groups: tuple[str, ...] = GROUPS
    # timing
    warmup: int = 0  # CPU: the peak-memory call before the timed repeats is the warm-up
    repeats: int = 3
    min_time_s: float = 0.0
    # packing
    # about one VoxCeleb2 epoch of utterances; C++ and pure Python plan the same lengths
    packing_num_lengths: int = 1_000_000
    python_num_lengths: int = 1_000_000
    strategies: tuple[str, ...] = STRATEGIES
    # attention / pooling (one encoder block's shapes)
    heads: int = 6
    head_dim: int = 64
    attention_passes: tuple[str, ...] = ("fwd", "fwd_bwd")
    # CPU quick: the slow CPU fallbacks of FlexAttention and nested tensors only in the full suite
    attention_backends: tuple[str, ...] = tuple(b for b in ATTENTION_BACKENDS if b not in ("flex", "nested_sdpa"))
    seqlen_sweep: tuple[int, ...] = (64, 256, 1024, 2048)
    seqlen_sweep_tokens: int = 4096
    memory_batches: tuple[int, ...] = (4, 12)
    # model
    model: ModelSize = field(default_factory=lambda: ModelSize(384, 4, 6))
    train_model: ModelSize = field(default_factory=lambda: ModelSize(384, 2, 6))
    # CPU: our packed path, fused masked SDPA on padded rows, and the same under the MATH kernel
    # (explicit softmax, as the published model computes attention); the first one's logits are the
    # yardstick of the others.
    model_backends: tuple[str, ...] = ("torch", "sdpa_masked", "sdpa_masked_math")
    model_dtypes: tuple[str, ...] = ("fp32",)
    model_repeats: int = 2  # model and end-to-end calls are long: fewer repeats than the kernels
    num_classes: int = 527
    max_frames: int = 3072
    # sweep
    sweep_limits: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)
    sweep_steps: tuple[int, ...] = (4, 8, 12, 16, 32, 64)
    sweep_num_steps: int = 50
    sweep_timed_limits: tuple[int, ...] = (512, 2048)
    sweep_timed_steps: tuple[int, ...] = (4, 12)
    sweep_timed_strategies: tuple[str, ...] = ("next_fit", "best_fit_decreasing")

    @property
    def is_cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    @property
    def fast_backend(self) -> str:
        """Our packed path on this device: the Triton kernel on CUDA, the torch path on CPU."""
        return "triton" if self.is_cuda else "torch"

    def as_dict(self) -> dict:
        out = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, ModelSize):
                value = value.as_dict()
            elif isinstance(value, torch.dtype):
                value = str(value).replace("torch.", "")
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out


def make_config(suite: str = "quick", device: str | None = None, workload: str | None = None, seed: int = 0) -> BenchConfig:
    """Settings for ``suite`` ("quick" or "full") on ``device`` ("cpu", "cuda"; None: CUDA if present).

    Raises:
        ValueError: unknown suite, device or workload, or "cuda" without a CUDA device.
    """
    if suite not in ("quick", "full"):
        raise ValueError(f"suite must be 'quick' or 'full', got {suite!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    if workload is not None and workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
    cfg = BenchConfig(suite=suite, device=device, seed=seed)
    if torch.device(device).type == "cuda":
        cfg = replace(
            cfg,
            dtype=torch.bfloat16,
            warmup=3,
            attention_passes=("fwd", "bwd", "fwd_bwd"),
            attention_backends=ATTENTION_BACKENDS,
            repeats=10,
            min_time_s=0.05,
            heads=12,
            seqlen_sweep=(128, 256, 512, 1024, 2048),
            seqlen_sweep_tokens=16384,
            memory_batches=(4, 12, 24, 48),
            model=ModelSize(768, 12, 12),
            train_model=ModelSize(768, 12, 12),
            model_backends=("triton", "sdpa_masked"),
            model_dtypes=("bf16", "fp16"),
            model_repeats=5,
            sweep_num_steps=200,
            sweep_timed_limits=(512, 1024, 2048, 4096, 8192),
            sweep_timed_steps=(4, 12, 32, 64),
        )
        if suite == "quick":
            cfg = replace(cfg, model_dtypes=("bf16",), sweep_timed_limits=(512, 2048, 8192), sweep_timed_steps=(4, 12, 64))
    elif suite == "full":
        cfg = replace(
            cfg,
            repeats=5,
            model_repeats=3,
            memory_batches=(4, 12, 24),
            attention_passes=("fwd", "bwd", "fwd_bwd"),
            attention_backends=ATTENTION_BACKENDS,
            seqlen_sweep=(64, 128, 256, 512, 1024, 2048),
            sweep_num_steps=200,
            sweep_timed_limits=(512, 1024, 2048, 4096),
            sweep_timed_steps=(4, 12, 32),
        )
    if suite == "full":
        cfg = replace(cfg, workloads=WORKLOADS)
    if workload is not None:
        cfg = replace(cfg, workloads=(workload,))
    return cfg


def tiny_config(device: str = "cpu") -> BenchConfig:
    """A configuration small enough for unit tests and smoke runs (seconds on a laptop core); its
    suite is "tiny", whose figures mean nothing (no performance target is checked against them)."""
    return replace(
        make_config("quick", device),
        suite="tiny",
        repeats=1,
        warmup=0,
        packing_num_lengths=2000,
        python_num_lengths=2000,
        samples_per_step=4,
        heads=2,
        head_dim=32,
        attention_passes=("fwd", "fwd_bwd"),
        # the cheap contenders plus the GPU-only ones (which skip at once on CPU)
        attention_backends=("triton", "torch", "sdpa_masked", "varlen_attn", "flash_attn", "xformers"),
        seqlen_sweep=(32, 64),
        seqlen_sweep_tokens=128,
        memory_batches=(2, 4),
        model=ModelSize(64, 1, 2),
        train_model=ModelSize(64, 1, 2),
        num_classes=10,
        model_repeats=1,
        sweep_limits=(512, 2048),
        sweep_steps=(4, 8),
        sweep_num_steps=5,
        sweep_timed_limits=(2048,),
        sweep_timed_steps=(4,),
        sweep_timed_strategies=("next_fit",),
    )
