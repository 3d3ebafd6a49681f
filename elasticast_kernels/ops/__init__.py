"""Kernels on the packed varlen layout ``[total_tokens, heads, head_dim]`` + ``cu_seqlens``."""
from elasticast_kernels.ops.varlen_attention import flash_attn_varlen_func, varlen_attention
from elasticast_kernels.ops.segment_pool import segment_attention_pool, segment_mean

__all__ = ["varlen_attention", "flash_attn_varlen_func", "segment_attention_pool", "segment_mean"]
