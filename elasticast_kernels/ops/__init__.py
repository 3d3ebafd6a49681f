"""Kernels on the packed varlen layout ``[total_tokens, heads, head_dim]`` + ``cu_seqlens``."""
from elasticast_kernels.ops.flash_attn_interface import flash_attn_func, flash_attn_varlen_func
from elasticast_kernels.ops.segment_pool import segment_attention_pool, segment_mean
from elasticast_kernels.ops.varlen_attention import LaunchSchedule, launch_schedule, varlen_attention

__all__ = [
    "varlen_attention", "launch_schedule", "LaunchSchedule", "flash_attn_func", "flash_attn_varlen_func",
    "segment_attention_pool", "segment_mean",
]
