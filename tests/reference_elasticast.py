"""A straightforward re-implementation of the published ElasticAST forward, for tests only.

Written from the project's specification of the published model (a design note outside this
repository), independently of elasticast_kernels: rows of samples padded to the longest row, one
dense block-diagonal mask, explicit softmax attention with unscaled scores, masked attention
pooling. Same state-dict keys as the published model, so the
drop-in's weights load into it with ``strict=True``. Slow and simple on purpose; run it in float64.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class RefAttention(nn.Module):
    def __init__(self, dim: int, heads: int, scale: float = 1.0) -> None:
        super().__init__()
        self.heads, self.scale = heads, scale
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:  # [..., n, h*d] -> [..., h, n, d]
        *lead, n, hd = x.shape
        return x.reshape(*lead, n, self.heads, hd // self.heads).transpose(-3, -2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:  # [..., h, n, d] -> [..., n, h*d]
        *lead, h, n, d = x.shape
        return x.transpose(-3, -2).reshape(*lead, n, h * d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, n, dim] queries; context [B, m, dim] (default x); mask [B, n, m] True = may attend."""
        context = x if context is None else context
        q = self.split_heads(self.to_q(x))
        k, v = self.to_kv(context).chunk(2, dim=-1)
        k, v = self.split_heads(k), self.split_heads(v)
        scores = q @ k.transpose(-1, -2) * self.scale  # [B, h, n, m]
        scores = scores.masked_fill(~mask[:, None], -torch.finfo(scores.dtype).max)
        return self.proj(self.merge_heads(scores.softmax(dim=-1) @ v))


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int, scale: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, heads, scale)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, 4 * dim)
        self.mlp.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        h = self.norm2(x)
        return x + self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(h)))


class ReferenceElasticAST(nn.Module):
    """Eval-mode reference (no dropout layers); ``eval_token_dropout`` supported with torch's RNG.

    Token selection for eval dropout: for each sample in input order, ``torch.randperm(n)[:keep]``
    with ``keep = max(1, int(n * eval_token_dropout))`` (the same draws as the drop-in makes).
    """

    def __init__(self, *, sample_size, patch_size, num_classes, dim, depth, heads, channels=1,
                 avg_pool_tk=False, eval_token_dropout=0.0, scale=1.0) -> None:
        super().__init__()
        self.p, self.channels = patch_size, channels
        self.avg_pool_tk, self.eval_token_dropout = avg_pool_tk, eval_token_dropout
        self.pos_embed_freq = nn.Parameter(torch.randn(sample_size[0] // patch_size, dim))
        self.pos_embed_time = nn.Parameter(torch.randn(sample_size[1] // patch_size, dim))
        self.attn_pool_queries = nn.Parameter(torch.randn(dim))
        self.patch_embed = nn.Sequential(nn.Linear(channels * patch_size * patch_size, dim))
        self.blocks = nn.Module()
        self.blocks.modules_list = nn.ModuleList(RefBlock(dim, heads, scale) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn_pool = RefAttention(dim, heads, scale)
        self.mlp_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def tokens(self, spec: torch.Tensor) -> torch.Tensor:
        """[C, F, T] -> [(F/p)*(T/p), dim] embedded tokens, frequency-major, maybe dropped."""
        c, f, t = spec.shape
        p = self.p
        fp, tp = f // p, t // p
        # [c, fp, p1, tp, p2] -> [fp, tp, c, p1, p2] -> [fp*tp, c*p*p]
        patches = spec.reshape(c, fp, p, tp, p).permute(1, 3, 0, 2, 4).reshape(fp * tp, c * p * p)
        freq = torch.arange(fp).repeat_interleave(tp)
        time = torch.arange(tp).repeat(fp)
        x = self.patch_embed(patches) + self.pos_embed_freq[freq] + self.pos_embed_time[time]
        if self.eval_token_dropout > 0:
            n = x.shape[0]
            x = x[torch.randperm(n)[: max(1, int(n * self.eval_token_dropout))]]
        return x

    def forward(self, samples, group_max_seq_len: int = 2048, rows=None) -> torch.Tensor:
        seqs = [self.tokens(s) for s in samples]
        if rows is None:  # in-order next-fit
            rows, current, used = [], [], 0
            for i, x in enumerate(seqs):
                n = x.shape[0]
                if n > group_max_seq_len:
                    raise ValueError("sample longer than group_max_seq_len")
                if used + n > group_max_seq_len:
                    rows.append(current)
                    current, used = [], 0
                current.append(i)
                used += n
            rows.append(current)
        width = max(sum(seqs[i].shape[0] for i in row) for row in rows)
        dim = self.norm.weight.shape[0]
        x = torch.zeros(len(rows), width, dim, dtype=self.norm.weight.dtype)
        owner = torch.full((len(rows), width), -1)  # sample id per position, -1 = padding
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                n = seqs[i].shape[0]
                x[r, start : start + n] = seqs[i]
                owner[r, start : start + n] = i
                start += n
        mask = (owner[:, :, None] == owner[:, None, :]) & (owner[:, None, :] >= 0)
        for block in self.blocks.modules_list:
            x = block(x, mask)
        x = self.norm(x)

        logits = [None] * len(samples)
        for r, row in enumerate(rows):
            # one query per sample of the row, each attending over its own tokens
            ids = torch.tensor(row)
            pool_mask = owner[r][None, None, :] == ids[:, None, None]  # [k, 1, width]
            if self.avg_pool_tk:
                weights = pool_mask[:, 0].to(x.dtype)
                pooled = (weights @ x[r]) / weights.sum(-1, keepdim=True)
            else:
                queries = self.attn_pool_queries.expand(len(row), 1, dim)
                context = x[r].expand(len(row), width, dim)
                pooled = self.attn_pool(queries, pool_mask, context)[:, 0]
            out = self.head(self.mlp_norm(pooled))
            for j, i in enumerate(row):
                logits[i] = out[j]
        return torch.stack(logits)


def make_specs(time_frames, freq_bins=32, channels=1, patch=16, dtype=torch.float64):
    """Random [C, F, T] spectrograms with T cropped to a multiple of ``patch``."""
    return [torch.randn(channels, freq_bins, (t // patch) * patch, dtype=dtype) for t in time_frames]


def quality_frames(base_frames: int, qualities=(0.8, 1, 2, 3, 4, 5)) -> list[int]:
    """The recipe's time resolutions: ``base / q`` frames, cropped to a multiple of 16 (>= 16)."""
    return [max(16, int(math.floor(base_frames / q)) // 16 * 16) for q in qualities]
