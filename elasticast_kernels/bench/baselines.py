"""Baselines that the package itself does not ship: each is what a user would otherwise write.

- ``textbook_best_fit_decreasing``: a straightforward pure-Python best-fit-decreasing packer
  (sorted list of remaining capacities + ``bisect``), the yardstick for the C++ packer. (The
  package's own Python fallback, ``elasticast_kernels.packing._fallback``, is a tuned variant.)
- ``padded_masked_pool``: the published model's pooling: pad packed rows, build a
  ``[rows, samples_per_row, heads, 1, row_len]`` score tensor, mask other samples and padding.
- ``nested_sdpa``: ``scaled_dot_product_attention`` on a jagged nested tensor.
- ``unfold_pack``: pack spectrograms into patches with ``unfold`` per sample and ``cat``.
"""
from __future__ import annotations

import warnings
from bisect import bisect_left, insort
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def textbook_best_fit_decreasing(lengths: Sequence[int], max_tokens: int) -> list[np.ndarray]:
    """Best fit decreasing as a Python user would write it: the yardstick for the C++ packer.

    Samples go longest first to the open pack with the least room that still fits them (a new
    pack if none does). Open packs live in a sorted list of ``(room, pack)`` pairs: ``bisect``
    finds the tightest one, ``insort`` puts it back. O(n * packs) in the worst case (list inserts).
    Ties go to the pack with the lower id, so bins can differ from ``pack_lengths`` (which has its
    own documented tie rule) while the efficiency is the same in practice.

    Returns:
        One int64 array of sample indices per pack (ascending), in pack-opening order.
    Raises:
        ValueError: a length outside ``[1, max_tokens]``, naming its index.
    """
    lengths = [int(n) for n in lengths]
    for i, n in enumerate(lengths):
        if not 1 <= n <= max_tokens:
            raise ValueError(f"lengths[{i}] = {n} is outside [1, max_tokens={max_tokens}]")
    open_packs: list[tuple[int, int]] = []  # sorted (room, pack)
    pack_of = [0] * len(lengths)
    num_packs = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        k = bisect_left(open_packs, (n, -1))  # the first pack with room >= n
        if k < len(open_packs):
            room, pack = open_packs.pop(k)
        else:
            room, pack, num_packs = max_tokens, num_packs, num_packs + 1
        pack_of[i] = pack
        if room > n:
            insort(open_packs, (room - n, pack))
    bins: list[list[int]] = [[] for _ in range(num_packs)]
    for i, pack in enumerate(pack_of):
        bins[pack].append(i)
    return [np.asarray(b, dtype=np.int64) for b in bins]


def _rows(seqlens: Sequence[int], pack_offsets: Sequence[int]) -> list[list[int]]:
    return [list(seqlens[pack_offsets[p]: pack_offsets[p + 1]]) for p in range(len(pack_offsets) - 1)]


def padded_masked_pool(
    query: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seqlens: Sequence[int],
    pack_offsets: Sequence[int],
    softmax_scale: float = 1.0,
) -> torch.Tensor:
    """The reference's masked attention pooling on padded rows.

    Args:
        query: ``[heads, head_dim]`` shared query.
        k, v: ``[total_tokens, heads, head_dim]`` packed keys and values (segments in order).
        seqlens: tokens per segment; ``pack_offsets``: segment offsets of each pack (row).
    Returns:
        ``[num_samples, heads, head_dim]`` pooled vectors in segment order.
    """
    heads, head_dim = query.shape
    rows = _rows(seqlens, pack_offsets)
    row_len = max((sum(r) for r in rows), default=0)
    per_row = max((len(r) for r in rows), default=0)
    device = k.device
    kp = k.new_zeros(len(rows), row_len, heads, head_dim)
    vp = v.new_zeros(len(rows), row_len, heads, head_dim)
    # mask[r, s, t]: token t of row r belongs to the row's s-th sample
    mask = torch.zeros(len(rows), per_row, row_len, dtype=torch.bool, device=device)
    start = 0
    for r, row in enumerate(rows):
        n = sum(row)
        kp[r, :n] = k[start: start + n]
        vp[r, :n] = v[start: start + n]
        offset = 0
        for s, length in enumerate(row):
            mask[r, s, offset: offset + length] = True
            offset += length
        start += n
    # [rows, per_row, heads, 1, row_len]: every sample's query against every token of its row
    q = query.view(1, 1, heads, 1, head_dim).expand(len(rows), per_row, heads, 1, head_dim)
    keys = kp.permute(0, 2, 1, 3).unsqueeze(1)  # [rows, 1, heads, row_len, head_dim]
    scores = torch.matmul(q, keys.transpose(-1, -2)) * softmax_scale
    scores = scores.masked_fill(~mask[:, :, None, None, :], torch.finfo(scores.dtype).min)
    attn = scores.softmax(dim=-1)
    pooled = torch.matmul(attn, vp.permute(0, 2, 1, 3).unsqueeze(1))  # [rows, per_row, heads, 1, head_dim]
    pooled = pooled.squeeze(3)
    keep = torch.tensor([s < len(row) for row in rows for s in range(per_row)], device=device)
    return pooled.reshape(len(rows) * per_row, heads, head_dim)[keep]


def nested_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens: Sequence[int], softmax_scale: float) -> torch.Tensor:
    """SDPA over a jagged nested tensor: ``[total, heads, head_dim]`` in and out."""
    offsets = torch.zeros(len(seqlens) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.as_tensor(list(seqlens), dtype=torch.int64), 0)
    offsets = offsets.to(q.device)

    def jag(x: torch.Tensor) -> torch.Tensor:
        return torch.nested.nested_tensor_from_jagged(x, offsets).transpose(1, 2)  # [B, heads, j, d]

    with warnings.catch_warnings():  # "nested tensors are a prototype": known, and the point
        warnings.simplefilter("ignore", UserWarning)
        out = F.scaled_dot_product_attention(jag(q), jag(k), jag(v), scale=softmax_scale)
        return out.transpose(1, 2).values()


def unfold_pack(specs: Sequence[torch.Tensor], patch_size: int = 16) -> torch.Tensor:
    """Patches ``[total_tokens, C*p*p]`` of all specs, frequency-major, pixels as (c, p1, p2)."""
    out = []
    for spec in specs:
        c = spec.shape[0]
        patches = spec.unfold(1, patch_size, patch_size).unfold(2, patch_size, patch_size)  # [C, F/p, T/p, p, p]
        out.append(patches.permute(1, 2, 0, 3, 4).reshape(-1, c * patch_size * patch_size))
    return torch.cat(out)
