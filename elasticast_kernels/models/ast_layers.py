"""The modules of the Audio Spectrogram Transformer (AST) on the packed layout.

Module and parameter names and shapes are those of transformers 5's ``ASTForAudioClassification``
(``audio_spectrogram_transformer.layers.N.attention.q_proj`` ...), so a `PackedAST`'s state dict
loads into that class unchanged and back. The math is AST's: pre-norm ViT blocks
(``x + o_proj(attn(layernorm_before(x)))``, then ``x + fc2(act(fc1(layernorm_after(x))))``) with
separate q/k/v projections (bias: ``qkv_bias``; ``o_proj`` always has one), scores scaled by
``1 / sqrt(head_dim)``, LayerNorm eps from the config, dropout (``hidden_dropout_prob``) on the
embeddings and after ``o_proj`` and ``fc2``. Everything but the attention is per token and runs
once on the packed ``[total_tokens, hidden]`` tensor; the attention is a backend function
``attend(q, k, v, layout, softmax_scale)`` (`elasticast_kernels.backends`).

`elasticast_kernels.models.layers` holds ElasticAST's blocks, whose names (``to_q``, fused
``to_kv``, ``norm1``), LayerNorm eps and dropout placement differ: reusing them would need a
state-dict translation at every save and load, and the HF layout would no longer round-trip.
"""
from __future__ import annotations

import torch
from torch import nn

from elasticast_kernels.backends import BackendFn
from elasticast_kernels.layout import SeqLayout

__all__ = ["ACTIVATIONS", "ASTBackbone", "ASTHead", "activation"]


class _QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (transformers' ``quick_gelu``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


#: ``hidden_act`` names of transformers' ``ACT2FN`` supported here -> the torch module.
ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),  # erf GELU, what every AST checkpoint uses
    "gelu_python": lambda: nn.GELU(),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu_python_tanh": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": _QuickGELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    """The module of ``hidden_act`` ``name``; ValueError naming the supported ones otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act={name!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class _PatchEmbeddings(nn.Module):
    """AST's ``Conv2d(1, hidden, kernel=p, stride=(stride_f, stride_t))``, applied as a Linear on
    packed patches: `pack_spectrograms` lays each patch out as the Conv2d's weight does."""

    def __init__(self, hidden_size: int, patch_size: int, stride: tuple[int, int]) -> None:
        super().__init__()
        self.projection = nn.Conv2d(1, hidden_size, kernel_size=(patch_size, patch_size), stride=stride)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``patches [total_tokens, p*p]`` -> ``[total_tokens, hidden]``."""
        return nn.functional.linear(patches, self.projection.weight.flatten(1), self.projection.bias)


class _Embeddings(nn.Module):
    """[CLS] and distillation tokens, the position table ``[1, 2 + f*t, hidden]`` (the two special
    tokens' rows first, then the ``[f, t]`` grid with time fastest) and the patch projection."""

    def __init__(self, hidden_size: int, patch_size: int, stride: tuple[int, int], grid: tuple[int, int],
                 dropout: float) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.patch_embeddings = _PatchEmbeddings(hidden_size, patch_size, stride)
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid[0] * grid[1] + 2, hidden_size))
        self.dropout = nn.Dropout(dropout)
        self.grid = grid
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.distillation_token, std=0.02)
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)

    def special_tokens(self) -> torch.Tensor:
        """``[2, hidden]``: [CLS] and distillation tokens with their positions (rows 0 and 1)."""
        tokens = torch.cat([self.cls_token[0], self.distillation_token[0]])
        return tokens + self.position_embeddings[0, :2]

    def time_major_grid(self) -> torch.Tensor:
        """The patch rows of the position table as ``[t, f, hidden]`` (time first, so the time
        axis can be cut or interpolated along its first dimension)."""
        freq, time = self.grid
        return self.position_embeddings[0, 2:].view(freq, time, -1).transpose(0, 1)


class _Attention(nn.Module):
    def __init__(self, hidden_size: int, heads: int, head_dim: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.scaling = head_dim ** -0.5
        self.q_proj = nn.Linear(hidden_size, heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(heads * head_dim, hidden_size, bias=True)

    def forward(self, x: torch.Tensor, layout: SeqLayout, attend: BackendFn) -> torch.Tensor:
        total = x.shape[0]
        q, k, v = (proj(x).view(total, self.heads, self.head_dim) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = attend(q, k, v, layout, self.scaling)
        return self.o_proj(out.reshape(total, self.heads * self.head_dim))


class _MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = activation(hidden_act)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, hidden_size: int, heads: int, head_dim: int, intermediate_size: int, hidden_act: str,
                 qkv_bias: bool, eps: float, dropout: float) -> None:
        super().__init__()
        self.attention = _Attention(hidden_size, heads, head_dim, qkv_bias)
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=eps)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = _MLP(hidden_size, intermediate_size, hidden_act)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, layout: SeqLayout, attend: BackendFn) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.layernorm_before(x), layout, attend))
        return x + self.dropout(self.mlp(self.layernorm_after(x)))


class ASTBackbone(nn.Module):
    """AST's ``audio_spectrogram_transformer``: ``embeddings``, ``layers``, final ``layernorm``.

    Args: the `PackedAST` arguments of the same names; ``grid`` is ``(f, t)`` of the position
    table (``(num_mel_bins - p) // stride_f + 1``, ``(max_length - p) // stride_t + 1``).
    """

    def __init__(self, *, hidden_size: int, num_hidden_layers: int, num_attention_heads: int, head_dim: int,
                 intermediate_size: int, hidden_act: str, qkv_bias: bool, layer_norm_eps: float, patch_size: int,
                 stride: tuple[int, int], grid: tuple[int, int], hidden_dropout_prob: float) -> None:
        super().__init__()
        self.embeddings = _Embeddings(hidden_size, patch_size, stride, grid, hidden_dropout_prob)
        self.layers = nn.ModuleList(
            _Layer(hidden_size, num_attention_heads, head_dim, intermediate_size, hidden_act, qkv_bias,
                   layer_norm_eps, hidden_dropout_prob)
            for _ in range(num_hidden_layers)
        )
        self.layernorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def encode(self, x: torch.Tensor, layout: SeqLayout, attend: BackendFn) -> torch.Tensor:
        """The layers on the packed tokens ``x [total_tokens, hidden]`` (no final norm)."""
        for layer in self.layers:
            x = layer(x, layout, attend)
        return x


class ASTHead(nn.Module):
    """AST's ``classifier``: LayerNorm then Linear on the pooled embedding."""

    def __init__(self, hidden_size: int, num_classes: int, eps: float) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dense = nn.Linear(hidden_size, num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.dense(self.layernorm(pooled))
