"""Encoder layers of ElasticAST on the packed layout ``[total_tokens, dim]`` + `SeqLayout`.

The attention of every block is a backend function ``attend(q, k, v, layout, softmax_scale)``
(``elasticast_kernels.backends.BACKENDS[name].fn``), resolved once per forward by the model.

Module and parameter names follow the published model, so its state dict loads unchanged:
``blocks.modules_list.{i}.{norm1,norm2}``, ``...attn.{to_q,to_kv,proj}``, ``...mlp.{fc1,fc2}``.
Everything except the attention itself is per token, so it runs once on the packed tensor.
"""
from __future__ import annotations

import torch
from torch import nn

from elasticast_kernels.backends import BackendFn
from elasticast_kernels.layout import SeqLayout

LAYER_NORM_EPS = 1e-6


class Attention(nn.Module):
    """Multi-head self-attention among the tokens of each sample.

    ``to_q`` and ``to_kv`` are separate projections (k is the first half of ``to_kv``'s output,
    v the second); heads are split as ``(heads, head_dim)`` with ``head_dim = dim // heads``.
    The published model leaves the scores unscaled, hence ``softmax_scale=1.0`` by default.
    """

    def __init__(self, dim: int, heads: int, bias: bool = True, softmax_scale: float = 1.0) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.softmax_scale = float(softmax_scale)
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, layout: SeqLayout, attend: BackendFn) -> torch.Tensor:
        """``x [total_tokens, dim]`` -> ``[total_tokens, dim]``."""
        total = x.shape[0]
        q = self.to_q(x).view(total, self.heads, self.head_dim)
        k, v = self.to_kv(x).view(total, 2, self.heads, self.head_dim).unbind(1)
        out = attend(q, k, v, layout, self.softmax_scale)
        return self.proj(out.reshape(total, self.heads * self.head_dim))


class FeedForward(nn.Module):
    """``fc1 -> exact GELU -> dropout -> fc2 -> dropout`` (hidden width ``4 * dim`` in ElasticAST)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, softmax_scale: float = 1.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, heads, bias=True, softmax_scale=softmax_scale)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = FeedForward(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor, layout: SeqLayout, attend: BackendFn) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), layout, attend)
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """``depth`` blocks, kept in ``modules_list`` (the published state-dict prefix)."""

    def __init__(
        self, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float = 0.0, softmax_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.modules_list = nn.ModuleList(
            Block(dim, heads, mlp_dim, dropout, softmax_scale) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, layout: SeqLayout, attend: BackendFn) -> torch.Tensor:
        for block in self.modules_list:
            x = block(x, layout, attend)
        return x
