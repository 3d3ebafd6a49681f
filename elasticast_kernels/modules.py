"""``nn.Module`` wrappers over the ops (thin: projections in torch, the pooling in the fused op)."""
from __future__ import annotations

import torch
from torch import nn

from elasticast_kernels.ops.segment_pool import segment_attention_pool

__all__ = ["AttentionPool"]


class AttentionPool(nn.Module):
    """ElasticAST's masked attention pooling head on packed tokens.

    A query vector attends, for every sample, over that sample's tokens only:
    ``proj(concat_h softmax(scale * k_h q_h) v_h)`` with ``q = to_q(query)``, ``k, v = to_kv(x)``.
    Parameter names match the reference's attention module (``to_q``, ``to_kv``, ``proj``), so a
    reference ``attn_pool.*`` state dict loads into it with ``strict=True``.

    Args:
        dim: model width; ``heads`` must divide it (heads split as ``(h d)``, head_dim = dim // heads).
        heads: attention heads.
        bias: biases of ``to_q`` and ``to_kv`` (the reference's ``qkv_bias``). ``proj`` always has
            one, as in the reference.
        softmax_scale: score scale; the reference uses 1.0 (unscaled). None means 1/sqrt(head_dim).
        learnable_query: create the query parameter ``query`` ``[dim]`` (``randn`` init). The
            ElasticAST model passes False and hands in its own ``attn_pool_queries`` instead,
            because the reference keeps that parameter at the top level of its state dict.

    Raises:
        ValueError: ``dim`` or ``heads`` not positive, or ``heads`` does not divide ``dim``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        bias: bool = True,
        softmax_scale: float | None = 1.0,
        learnable_query: bool = True,
    ) -> None:
        super().__init__()
        if dim <= 0 or heads <= 0:
            raise ValueError(f"dim and heads must be positive, got dim={dim}, heads={heads}")
        if dim % heads != 0:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.softmax_scale = softmax_scale
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.randn(dim)) if learnable_query else None

    def forward(
        self,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int | None = None,
        query: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pool packed tokens per sample.

        Args:
            x: ``(total_tokens, dim)`` packed tokens (keys and values come from them).
            cu_seqlens: int32 ``(batch + 1,)`` sample boundaries, on the device of ``x``.
            max_seqlen: longest sample or None (see ``segment_attention_pool``).
            query: ``(dim,)`` shared query or ``(batch, dim)`` per-sample queries; None uses the
                module's own ``query`` parameter.

        Returns:
            ``(batch, dim)`` in the order of ``cu_seqlens``.

        Raises:
            ValueError: no query (``learnable_query=False`` and ``query`` is None), a query or
                ``x`` of the wrong width, or anything ``segment_attention_pool`` rejects.
        """
        if query is None:
            query = self.query
            if query is None:
                raise ValueError("query is required: this AttentionPool was built with learnable_query=False")
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (total_tokens, {self.dim}), got {shape}")
        if query.dim() not in (1, 2) or query.shape[-1] != self.dim:
            raise ValueError(f"query must have shape ({self.dim},) or (batch, {self.dim}), got {tuple(query.shape)}")
        total_tokens = x.shape[0]
        # The query projection is tiny (one row, or one per sample); k and v come from a single
        # projection over all packed tokens, and the pooling kernel reads its halves in place.
        kv = self.to_kv(x)
        q = self.to_q(query).to(kv.dtype)
        q = q.view(self.heads, self.head_dim) if query.dim() == 1 else q.view(-1, self.heads, self.head_dim)
        k = kv[:, : self.dim].view(total_tokens, self.heads, self.head_dim)
        v = kv[:, self.dim :].view(total_tokens, self.heads, self.head_dim)
        pooled = segment_attention_pool(q, k, v, cu_seqlens, max_seqlen=max_seqlen, softmax_scale=self.softmax_scale)
        return self.proj(pooled.reshape(pooled.shape[0], self.dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, softmax_scale={self.softmax_scale}"
