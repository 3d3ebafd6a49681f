"""The models ``examples/train.py`` trains (``--model``), and how each one reads the clips.

- ``elasticast`` (default): a small ElasticAST from scratch, at several time resolutions, with
  features normalised by statistics estimated on the training set.
- ``packed-ast --hf-checkpoint DIR``: a Hugging Face AST fine-tuned padding-free
  (`elasticast_kernels.models.PackedAST.from_hf` of a local ``save_pretrained`` directory; nothing is
  downloaded, transformers need not be installed). The features are the ones the checkpoint was
  trained on (``DIR/preprocessor_config.json``, else ``ASTFeatureExtractor``'s defaults): 10 ms
  frames (quality 1 only), the extractor's normalisation (never re-estimated), every frame of a
  clip kept, 16x16 patches at stride 10. The head is the checkpoint's when the manifest's classes
  are its labels in the same order, else a new one for the manifest's classes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import torch

from elasticast_kernels.data import PackedCollator, num_tokens
from elasticast_kernels.models import ElasticAST, PackedAST
from elasticast_kernels.models.ast_features import ASTFeatures
from elasticast_kernels.packing import pack_lengths, pack_spectrograms
from elasticast_kernels.serialization import CheckpointError

MODELS = ("elasticast", "packed-ast")
PATCH, MEL_BINS = 16, 128  # ElasticAST's


def add_arguments(parser) -> None:
    parser.add_argument("--model", choices=MODELS, default="elasticast",
                        help="elasticast: a small ElasticAST from scratch (default); packed-ast: fine-tune the "
                             "Hugging Face AST checkpoint of --hf-checkpoint on the packed layout")
    parser.add_argument("--hf-checkpoint", metavar="DIR",
                        help="a local save_pretrained ASTForAudioClassification directory (--model packed-ast)")


def check_arguments(parser, args) -> None:
    """Refuse options that do not apply to the chosen model (before train.py fills in defaults)."""
    if args.model != "packed-ast":
        if args.hf_checkpoint:
            parser.error("--hf-checkpoint goes with --model packed-ast")
        return
    if not args.hf_checkpoint:
        parser.error("--model packed-ast needs --hf-checkpoint DIR (a local save_pretrained AST directory)")
    given = [f"--{name.replace('_', '-')}" for name in ("dim", "depth", "heads", "norm") if getattr(args, name)]
    if given or args.token_dropout:
        parser.error(f"{' '.join(given + ['--token-dropout'] * bool(args.token_dropout))}: a Hugging Face AST "
                     "checkpoint sets its size and feature normalisation, and has no token dropout")
    for name in ("train_qualities", "eval_qualities"):
        if getattr(args, name) not in (None, [1.0]):
            parser.error(f"--{name.replace('_', '-')}: AST checkpoints read 10 ms frames (quality 1) only")
        setattr(args, name, [1.0])


@dataclass(frozen=True)
class StridedCollator:
    """``(spectrogram [1, F, frames], label)`` items -> a `PackedBatch` of overlapping patches with
    ``labels`` in segment order (what `PackedAST` reads); a clip shorter than one patch is padded
    to ``patch_size`` frames with ``pad_value``, as `PackedAST` pads its list inputs. With
    ``max_tokens`` the step is split by in-order next-fit, as `PackedCollator` does."""

    patch_size: int
    stride: tuple[int, int]
    pad_value: float
    max_tokens: int | None = None

    def __call__(self, batch):
        specs = [torch.nn.functional.pad(spec, (0, max(0, self.patch_size - spec.shape[2])), value=self.pad_value)
                 for spec, _ in batch]
        plan = None
        if self.max_tokens is not None:
            tokens = [num_tokens(spec.shape[2], spec.shape[1], self.patch_size, self.stride) for spec in specs]
            plan = pack_lengths(tokens, self.max_tokens, "next_fit")
        packed = pack_spectrograms(specs, self.patch_size, plan, stride=self.stride)
        labels = [label for _, label in batch]
        stacked = torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.as_tensor(labels)
        return replace(packed, labels=stacked.index_select(0, packed.sample_index))


def build_model(args, num_classes: int, max_time_patches: int) -> ElasticAST:
    """A small ElasticAST trained from scratch: scores scaled by 1/sqrt(head_dim) and ViT-style init
    (std 0.02), since the published unscaled scores and std-1 tables assume pretrained weights."""
    model = ElasticAST(
        sample_size=(MEL_BINS, max_time_patches * PATCH), patch_size=PATCH, num_classes=num_classes, dim=args.dim,
        depth=args.depth, heads=args.heads, channels=1, dropout=args.dropout, attention_backend=args.backend,
        token_dropout_prob=args.token_dropout or None, softmax_scale=(args.dim // args.heads) ** -0.5)
    for name, param in model.named_parameters():
        if name.startswith("pos_embed") or name == "attn_pool_queries" or param.dim() == 2:
            torch.nn.init.trunc_normal_(param, std=0.02)
        elif name.endswith(".bias"):
            torch.nn.init.zeros_(param)
    return model


class ElasticASTRecipe:
    """ElasticAST from scratch: 16x16 tiles of 128-bin features, normalisation estimated."""

    num_mel_bins, normalize = MEL_BINS, None

    def __init__(self, args) -> None:
        self.args = args

    def dataset_options(self) -> dict:
        return {"num_mel_bins": MEL_BINS, "patch_size": PATCH}

    def token_lengths(self, dataset) -> np.ndarray:
        return dataset.token_lengths()

    def max_frames(self, max_tokens: int) -> int:
        """Most frames of a clip whose tokens fit in ``max_tokens`` (whole time patches)."""
        return max_tokens // (MEL_BINS // PATCH) * PATCH

    def collator(self, max_tokens: int | None) -> PackedCollator:
        return PackedCollator(patch_size=PATCH, max_tokens=max_tokens)

    def build(self, classes: tuple[str, ...], datasets) -> ElasticAST:
        """The model, its time table sized for the longest item of ``datasets``."""
        longest = max(int(self.token_lengths(dataset).max()) for dataset in datasets)
        return build_model(self.args, len(classes), longest // (MEL_BINS // PATCH))

    def describe(self, model) -> str:
        return f"ElasticAST dim={self.args.dim} depth={self.args.depth} heads={self.args.heads}"


class PackedASTRecipe:
    """A Hugging Face AST checkpoint: its features, overlapping patches, its weights. ``model``:
    the checkpoint's PackedAST, after `build` the one trained (token counts and collators read
    its geometry)."""

    def __init__(self, args) -> None:
        self.folder = folder = args.hf_checkpoint
        has_preprocessor = os.path.isfile(os.path.join(folder, "preprocessor_config.json"))
        self.features = ASTFeatures.from_pretrained(folder) if has_preprocessor else ASTFeatures()
        self.model = PackedAST.from_hf(folder, features=self.features, attention_backend=args.backend,
                                            hidden_dropout_prob=args.dropout)
        self.num_mel_bins = self.model.num_mel_bins
        if self.features.num_mel_bins != self.num_mel_bins:
            raise ValueError(f"{folder}: preprocessor_config.json has num_mel_bins={self.features.num_mel_bins}, "
                             f"the model reads {self.num_mel_bins}")
        self.normalize = self.features.settings().normalize

    def dataset_options(self) -> dict:
        # patch_size 1: the dataset keeps every frame (its crop to whole patches would drop frames
        # the stride-10 patches read); the collator pads clips shorter than one patch
        return {"num_mel_bins": self.num_mel_bins, "patch_size": 1}

    def token_lengths(self, dataset) -> np.ndarray:
        frames = dataset.token_lengths() // self.num_mel_bins  # 1x1 "patches": mel bins x frames
        return np.asarray(self.model.num_tokens(frames), dtype=np.int64)

    def max_frames(self, max_tokens: int) -> int:
        model = self.model
        time_patches = max(1, max_tokens // model.grid[0])
        return model.patch_size + (time_patches - 1) * model.stride[1]

    def collator(self, max_tokens: int | None) -> StridedCollator:
        model = self.model
        return StridedCollator(model.patch_size, model.stride, model.pad_value, max_tokens)

    def build(self, classes: tuple[str, ...], datasets) -> PackedAST:
        """The checkpoint's model; with a new head (ASTPreTrainedModel's init) unless ``classes``
        are its labels in order."""
        pretrained = self.model
        if tuple(classes) != pretrained.class_names:
            self.model = PackedAST(**{**pretrained.config, "num_classes": len(classes)})
            body = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("classifier.dense.")}
            missing, unknown = self.model.load_state_dict(body, strict=False)
            if unknown or any(not key.startswith("classifier.dense.") for key in missing):
                raise RuntimeError(f"new head: unexpected keys {unknown}, missing {missing}")
        return self.model.train()

    def describe(self, model) -> str:
        c = model.config
        head = "its head" if model.class_names else f"a new {c['num_classes']}-class head"
        return (f"PackedAST from {self.folder} (hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, "
                f"{c['num_attention_heads']} heads), {head}")


def recipe(args):
    """The recipe of ``args.model``.

    Raises:
        CheckpointError: an unusable ``--hf-checkpoint`` (missing, not an AST, bad weights or
            preprocessor config; the message names the directory and what is wrong).
    """
    if args.model != "packed-ast":
        return ElasticASTRecipe(args)
    try:
        return PackedASTRecipe(args)
    except (OSError, ValueError, ImportError) as error:
        raise CheckpointError(f"--hf-checkpoint {args.hf_checkpoint}: {error}") from None
