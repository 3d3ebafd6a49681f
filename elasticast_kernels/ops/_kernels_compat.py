"""TEMPORARY (removed when the kernels with the new launcher contract are merged): the new
contract on top of the old self-attention launchers, refusing what they cannot do."""
from __future__ import annotations

from elasticast_kernels.ops import varlen_attention_kernels as _k


def _old_ok(q, k, cu_q, cu_k, window, softcap):
    if k.shape != q.shape or cu_k is not cu_q or window not in ((-1, -1), (-1, 0)) or softcap != 0.0 \
            or q.shape[-1] > 128:
        raise NotImplementedError("the old kernels do only self-attention without GQA/window/softcap")


if hasattr(_k, "KERNEL_HEAD_DIMS"):
    varlen_attention_forward = _k.varlen_attention_forward
    varlen_attention_backward = _k.varlen_attention_backward
else:
    def varlen_attention_forward(q, k, v, cu_q, cu_k, schedule_q, seq_hint, scale, causal, window, softcap):
        _old_ok(q, k, cu_q, cu_k, window, softcap)
        return _k.varlen_attention_forward(q, k, v, cu_q, seq_hint, scale, causal)

    def varlen_attention_backward(dout, q, k, v, out, lse, cu_q, cu_k, schedule_q, schedule_k, seq_hint, scale,
                                  causal, window, softcap):
        _old_ok(q, k, cu_q, cu_k, window, softcap)
        return _k.varlen_attention_backward(dout, q, k, v, out, lse, cu_q, seq_hint, scale, causal)
