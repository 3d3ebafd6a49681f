"""Plain-torch varlen attention: the path for tensors the Triton kernels do not take (CPU without
``TRITON_INTERPRET=1``, bf16 on CPU), with the kernels' contract and semantics.

Contract (shared with ``varlen_attention_kernels``, so the autograd glue is one):
``forward`` returns ``out`` [total_q, heads, head_dim] in the input dtype and ``lse2``
[heads, lse_columns(total_q)] fp32: the log-sum-exp of the scaled (and soft-capped) scores in the
base-2 domain; a row that sees no key gives ``out`` 0 and ``lse2`` +inf. ``backward`` recomputes
the probabilities from it. Semantics are flash-attn's: k/v may have fewer heads (query head ``h``
reads key head ``h // (heads // heads_k)``); sample ``b`` has queries ``cu_seqlens_q[b]:[b + 1]``
and keys ``cu_seqlens_k[b]:[b + 1]``, query ``i`` aligned with key ``i + Lk - Lq`` (bottom right);
``window = (left, right)`` (already normalised: -1 or >= 0, right 0 when causal) lets it see keys
``[i + Lk - Lq - left, i + Lk - Lq + right]``; ``softcap > 0`` maps the scaled scores ``s`` to
``softcap * tanh(s / softcap)``.

Work is planned per run of consecutive samples with the same (Lq, Lk) (``cu_seqlens`` are on the
CPU, so reading them is free), and each run goes one of two ways:

- fused (CPU, no softcap): PyTorch's CPU flash-attention op
  (``aten::_scaled_dot_product_flash_attention_for_cpu`` and its backward) on the whole run as one
  ``[count, heads, L, head_dim]`` batch: a strided view of the packed tensors (no copy), GQA
  native, the log-sum-exp returned for the backward. One call per run when the mask is nothing or
  plain causal (``Lq == Lk``: the op aligns causal top-left); otherwise one call per chunk of
  query rows, against only the keys those rows may see, with the window as an additive mask of
  ``rows x keys`` (memory never quadratic in a sample's length; work linear in it for a fixed
  window).
- explicit (softcap, or a device without the CPU op): fp32 matmuls per sample in the same chunks.

fp16/bf16 inputs are computed in fp32 and rounded once at the end (one upcast per call): CPUs
without native half arithmetic run PyTorch's fp16 kernel about 9x slower than fp32 and bf16 no
faster (measured on the development VM), and dK/dV summed over a GQA group or over chunks would
otherwise be rounded term by term.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from elasticast_kernels.ops._common import LOG2E, lse_columns

_QUERY_CHUNK = 512  # query rows per chunk when a chunk's keys are not bounded by a window
_MIN_WINDOW_CHUNK = 64  # a windowed chunk has about as many rows as the window is wide, at least this
_fused_forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_fused_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _Run(NamedTuple):
    """``count`` consecutive samples of ``len_q`` queries from token ``q0`` and ``len_k`` keys from ``k0``."""

    q0: int
    k0: int
    count: int
    len_q: int
    len_k: int


class _Chunk(NamedTuple):
    """Query rows of a sample and the keys they may see (``keys`` empty: none), with the mask
    ``visible`` bool [rows, keys] (None: every pair is visible)."""

    rows: slice
    keys: slice
    visible: torch.Tensor | None


class _Plan(NamedTuple):
    fused: bool  # through the CPU flash op (else explicit)
    causal: bool  # the op's is_causal (a single unmasked chunk with Lq == Lk)
    chunks: list[_Chunk]


def _runs(cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor) -> list[_Run]:
    """The runs that own queries, in token order. A sample with neither queries nor keys occupies
    no tokens and does not break a run; one with keys but no queries has nothing to compute (its
    keys get zero gradients) and does."""
    bounds_q = cu_seqlens_q.tolist()
    bounds_k = bounds_q if cu_seqlens_k is cu_seqlens_q else cu_seqlens_k.tolist()
    runs: list[list[int]] = []  # [q0, k0, count, len_q, len_k]
    joinable = False
    for q0, q1, k0, k1 in zip(bounds_q, bounds_q[1:], bounds_k, bounds_k[1:]):
        len_q, len_k = q1 - q0, k1 - k0
        if len_q == 0:
            joinable = joinable and len_k == 0
            continue
        if joinable and runs[-1][3] == len_q and runs[-1][4] == len_k:
            runs[-1][2] += 1
        else:
            runs.append([q0, k0, 1, len_q, len_k])
        joinable = True
    return [_Run(*run) for run in runs]


def _effective_window(window: tuple[int, int], len_q: int, len_k: int) -> tuple[int, int]:
    """``window`` with each side that excludes no key of an (Lq, Lk) sample set to -1: query ``i``
    reaches back to ``i + Lk - Lq - left`` (<= 0 for every row iff left >= Lk - 1) and forward to
    ``i + Lk - Lq + right`` (>= Lk - 1 for every row iff right >= Lq - 1)."""
    left, right = window
    return (-1 if left >= len_k - 1 else left, -1 if right >= len_q - 1 else right)


def _chunks(len_q: int, len_k: int, window: tuple[int, int], device: torch.device) -> list[_Chunk]:
    """Query-row chunks of one (Lq, Lk) sample, each with the key range it may see and its mask."""
    left, right = window
    offset = len_k - len_q
    bounded = left >= 0 and right >= 0
    step = min(max(left + right + 1, _MIN_WINDOW_CHUNK), _QUERY_CHUNK) if bounded else _QUERY_CHUNK
    chunks = []
    for r0 in range(0, len_q, step):
        r1 = min(r0 + step, len_q)
        c0 = 0 if left < 0 else min(max(r0 + offset - left, 0), len_k)
        c1 = len_k if right < 0 else min(max(r1 + offset + right, 0), len_k)
        c1 = max(c0, c1)
        visible = None
        if c1 > c0 and (left >= 0 or right >= 0):
            aligned = torch.arange(r0 + offset, r1 + offset, device=device)[:, None]
            cols = torch.arange(c0, c1, device=device)[None, :]
            visible = torch.ones(r1 - r0, c1 - c0, dtype=torch.bool, device=device)
            if left >= 0:
                visible &= cols >= aligned - left
            if right >= 0:
                visible &= cols <= aligned + right
            if bool(visible.all()):
                visible = None
        chunks.append(_Chunk(slice(r0, r1), slice(c0, c1), visible))
    return chunks


def _plan(run: _Run, window: tuple[int, int], softcap: float, scale: float, device: torch.device) -> _Plan:
    left, right = _effective_window(window, run.len_q, run.len_k)
    fused = device.type == "cpu" and softcap == 0.0
    if run.len_k == 0:  # nothing to attend to (the op would divide by zero): output 0, no gradient
        return _Plan(fused, False, [_Chunk(slice(0, run.len_q), slice(0, 0), None)])
    # the op's own causal mask is top-left aligned (so Lq == Lk only) and gives NaN for a scale
    # <= 0 (it scales the masked -inf too); a mask tensor has neither problem
    if fused and left < 0 and (right < 0 or (right == 0 and run.len_q == run.len_k and scale > 0)):
        # no mask, or the plain causal one the op does itself (skipping the blocks above the diagonal)
        return _Plan(True, right == 0, [_Chunk(slice(0, run.len_q), slice(0, run.len_k), None)])
    return _Plan(fused, False, _chunks(run.len_q, run.len_k, (left, right), device))


def _batch(x: torch.Tensor, start: int, count: int, length: int) -> torch.Tensor:
    """Tokens ``start : start + count * length`` of a [total, heads, d] tensor as a
    ``[count, heads, length, d]`` view (what the fused op takes)."""
    return x[start:start + count * length].view(count, length, *x.shape[1:]).transpose(1, 2)


def _lse_batch(lse2: torch.Tensor, run: _Run) -> torch.Tensor:
    """The run's columns of ``lse2`` [heads, columns] as a ``[heads, count, len_q]`` view."""
    return lse2[:, run.q0:run.q0 + run.count * run.len_q].view(lse2.shape[0], run.count, run.len_q)


def _additive_mask(chunk: _Chunk, dtype: torch.dtype) -> torch.Tensor | None:
    # the CPU op takes a float mask of the query's dtype (0 visible, -inf not), broadcast over batch and heads
    if chunk.visible is None:
        return None
    return torch.zeros(chunk.visible.shape, dtype=dtype, device=chunk.visible.device).masked_fill_(
        ~chunk.visible, float("-inf"))


def _seen(chunk: _Chunk) -> torch.Tensor | None:
    """bool [rows]: rows that see at least one key (None: all of them)."""
    if chunk.keys.stop == chunk.keys.start:
        return torch.zeros(chunk.rows.stop - chunk.rows.start, dtype=torch.bool)
    return None if chunk.visible is None else chunk.visible.any(-1)


# --- fused path ---------------------------------------------------------------------------------


def _fused_chunk_forward(q, k, v, run: _Run, plan: _Plan, chunk: _Chunk, scale: float, lse2: torch.Tensor,
                         out: torch.Tensor | None) -> torch.Tensor:
    """One op call for ``chunk`` of every sample of ``run``: writes its rows of ``lse2`` and of
    ``out``; returns the op's output ``[count, heads, rows, d]`` (a view of ``out`` when given)."""
    o, lse = _fused_forward(_batch(q, run.q0, run.count, run.len_q)[:, :, chunk.rows],
                            *(_batch(x, run.k0, run.count, run.len_k)[:, :, chunk.keys] for x in (k, v)),
                            0.0, plan.causal, attn_mask=_additive_mask(chunk, q.dtype), scale=scale)
    if out is not None:
        target = _batch(out, run.q0, run.count, run.len_q)[:, :, chunk.rows]
        o = target.copy_(o)
    lse_rows = _lse_batch(lse2, run)[:, :, chunk.rows]
    torch.mul(lse.transpose(0, 1), LOG2E, out=lse_rows)
    seen = _seen(chunk)
    # The op returns 0 (and a log-sum-exp of 0) for a query row holding a NaN, as if the row were
    # masked: put the NaN back for that token and head alone (0 * NaN = NaN), so a poisoned sample
    # never looks finite. One reduction finds the candidates (a log-sum-exp of exactly 0 is rare).
    if torch.count_nonzero(lse) != lse.numel():
        suspects = lse == 0
        if seen is not None:
            suspects &= seen
        q_rows = _batch(q, run.q0, run.count, run.len_q)[:, :, chunk.rows]
        o[suspects] += q_rows[suspects].sum(-1, keepdim=True).mul_(0).to(o.dtype)
    if seen is not None:  # rows that see no key: output 0 (the op gives NaN for a NaN query there)
        o[:, :, ~seen] = 0
        lse_rows[:, :, ~seen] = float("inf")  # and probabilities exactly 0 in the backward
    return o


def _fused_run_backward(dout, q, k, v, out, lse2, run: _Run, plan: _Plan, scale: float,
                        grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of ``run`` as ``[count, heads, len, d]`` (fp32 inputs): added into ``grads``
    (zero-initialised dq, dk, dv [total, heads, d]) when given, else returned as the op's own
    tensors (one chunk only). Chunks that share keys add their dK/dV in fp32."""
    q_b, dout_b, out_b = (_batch(x, run.q0, run.count, run.len_q) for x in (q, dout, out))
    k_b, v_b = (_batch(x, run.k0, run.count, run.len_k) for x in (k, v))
    lse_b = (_lse_batch(lse2, run) / LOG2E).transpose(0, 1)  # [count, heads, len_q], natural log
    if grads is not None:
        dq_b = _batch(grads[0], run.q0, run.count, run.len_q)
        dk_b, dv_b = (_batch(g, run.k0, run.count, run.len_k) for g in grads[1:])
    for chunk in plan.chunks:
        if chunk.keys.stop == chunk.keys.start:
            continue  # no key seen: no gradient
        rows, keys = chunk.rows, chunk.keys
        dq_c, dk_c, dv_c = _fused_backward(
            dout_b[:, :, rows], q_b[:, :, rows], k_b[:, :, keys], v_b[:, :, keys], out_b[:, :, rows],
            lse_b[:, :, rows], 0.0, plan.causal, attn_mask=_additive_mask(chunk, q.dtype), scale=scale)
        if grads is None:
            return dq_c, dk_c, dv_c
        dq_b[:, :, rows] = dq_c
        dk_b[:, :, keys] += dk_c
        dv_b[:, :, keys] += dv_c
    return grads


# --- explicit path ------------------------------------------------------------------------------


def _sample_fp32(x: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """Tokens ``start : start + length`` of a [total, heads, d] tensor as fp32 [heads, length, d]."""
    return x[start:start + length].transpose(0, 1).float()


def _grouped(x: torch.Tensor, rows: slice, heads_k: int) -> torch.Tensor:
    """Rows of fp32 ``[heads, n, d]`` as ``[heads_k, group * rows, d]``: the query heads that share a
    key head stacked as rows, so GQA is one matmul per key head (k/v are never expanded)."""
    part = x[:, rows]
    return part.reshape(heads_k, -1, part.shape[-1])


def _scores(q_rows: torch.Tensor, k_keys: torch.Tensor, chunk: _Chunk, scale: float, softcap: float
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled, soft-capped scores [heads_k, group * rows, keys] with invisible pairs at -inf, and
    (softcap only) ``tanh`` of the uncapped scores over the cap, for the gradient."""
    scores = torch.matmul(q_rows, k_keys.transpose(1, 2)).mul_(scale)
    tanh = None
    if softcap > 0:
        tanh = torch.tanh(scores / softcap)
        scores = tanh * softcap
    if chunk.visible is not None:
        heads_k, rows = scores.shape[0], chunk.visible.shape[0]
        scores.view(heads_k, -1, rows, scores.shape[-1]).masked_fill_(~chunk.visible, float("-inf"))
    return scores, tanh


def _explicit_forward(q, k, v, out, lse2, run: _Run, plan: _Plan, scale: float, softcap: float) -> None:
    heads, heads_k = q.shape[1], k.shape[1]
    for sample in range(run.count):
        q0, k0 = run.q0 + sample * run.len_q, run.k0 + sample * run.len_k
        q_s = _sample_fp32(q, q0, run.len_q)
        k_s, v_s = (_sample_fp32(x, k0, run.len_k) for x in (k, v))
        for chunk in plan.chunks:
            if chunk.keys.stop == chunk.keys.start:  # these rows see no key: out stays 0, lse +inf
                continue
            rows = slice(q0 + chunk.rows.start, q0 + chunk.rows.stop)
            n = rows.stop - rows.start
            scores, _ = _scores(_grouped(q_s, chunk.rows, heads_k), k_s[:, chunk.keys], chunk, scale, softcap)
            lse = torch.logsumexp(scores, dim=-1)  # [heads_k, group * n]
            seen = _seen(chunk)
            if seen is not None:  # rows the window leaves without keys: +inf, so probabilities 0, not NaN
                lse.view(heads_k, -1, n).masked_fill_(~seen, float("inf"))
            probs = torch.exp(scores - lse[..., None])
            o = torch.matmul(probs, v_s[:, chunk.keys]).view(heads, n, -1)
            out[rows] = o.transpose(0, 1).to(out.dtype)
            lse2[:, rows] = lse.view(heads, n) * LOG2E


def _explicit_backward(dout, q, k, v, lse2, delta, dq, dk, dv, run: _Run, plan: _Plan, scale: float,
                       softcap: float) -> None:
    heads, heads_k = q.shape[1], k.shape[1]
    for sample in range(run.count):
        q0, k0 = run.q0 + sample * run.len_q, run.k0 + sample * run.len_k
        q_s, do_s = (_sample_fp32(x, q0, run.len_q) for x in (q, dout))
        k_s, v_s = (_sample_fp32(x, k0, run.len_k) for x in (k, v))
        dk_s, dv_s = torch.zeros_like(k_s), torch.zeros_like(v_s)
        for chunk in plan.chunks:
            if chunk.keys.stop == chunk.keys.start:  # no key seen: no gradient (dq stays 0)
                continue
            rows = slice(q0 + chunk.rows.start, q0 + chunk.rows.stop)
            n = rows.stop - rows.start
            q_rows, do_rows = (_grouped(x, chunk.rows, heads_k) for x in (q_s, do_s))
            k_keys, v_keys = k_s[:, chunk.keys], v_s[:, chunk.keys]
            scores, tanh = _scores(q_rows, k_keys, chunk, scale, softcap)
            probs = torch.exp(scores - (lse2[:, rows] / LOG2E).reshape(heads_k, -1, 1))
            dprobs = torch.matmul(do_rows, v_keys.transpose(1, 2))
            dscores = probs * (dprobs - delta[:, rows].reshape(heads_k, -1, 1))
            if tanh is not None:  # d/ds softcap * tanh(s / softcap) = 1 - tanh^2 (finite where masked)
                dscores = dscores * (1 - tanh * tanh)
            dq_rows = torch.matmul(dscores, k_keys).mul_(scale).view(heads, n, -1)
            dq[rows] = dq_rows.transpose(0, 1).to(dq.dtype)
            dk_s[:, chunk.keys] += torch.matmul(dscores.transpose(1, 2), q_rows).mul_(scale)
            dv_s[:, chunk.keys] += torch.matmul(probs.transpose(1, 2), do_rows)
        dk[k0:k0 + run.len_k] = dk_s.transpose(0, 1).to(dk.dtype)
        dv[k0:k0 + run.len_k] = dv_s.transpose(0, 1).to(dv.dtype)


# --- the contract -------------------------------------------------------------------------------


def _single_fused(runs: list[_Run], plans: list[_Plan], total_q: int, total_k: int) -> bool:
    """One fused call covers every query and key token (a batch of equal-length clips): its
    outputs are already token-major and are returned without a copy."""
    if len(runs) != 1 or not plans[0].fused or len(plans[0].chunks) != 1:
        return False
    (run,), (chunk,) = runs, plans[0].chunks
    return (chunk.visible is None and run.len_k > 0 and chunk.rows == slice(0, run.len_q)
            and chunk.keys == slice(0, run.len_k)  # a window may give one chunk a part of the keys
            and run.count * run.len_q == total_q and run.count * run.len_k == total_k)


def _fp32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [x if x.dtype == torch.float32 else x.float() for x in tensors]


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """``[count, heads, length, d]`` -> ``[count * length, heads, d]``, contiguous (a view when the op
    kept the token-major layout of its packed inputs, which it does)."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[-1]).contiguous()


def varlen_attention_forward_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                                   cu_seqlens_k: torch.Tensor, softmax_scale: float, causal: bool,
                                   window: tuple[int, int], softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``out`` [total_q, heads, head_dim] (dtype of q) and ``lse2`` [heads, lse_columns(total_q)] fp32.

    ``causal`` is already folded into ``window`` (right side 0); it is accepted for the shared contract.
    """
    total_q, heads, head_dim = q.shape
    dtype = q.dtype
    q, k, v = _fp32(q, k, v)
    runs = _runs(cu_seqlens_q, cu_seqlens_k)
    plans = [_plan(run, window, softcap, softmax_scale, q.device) for run in runs]
    lse2 = torch.empty((heads, lse_columns(total_q)), dtype=torch.float32, device=q.device)
    if _single_fused(runs, plans, total_q, k.shape[0]):
        lse2[:, total_q:] = float("inf")
        o = _fused_chunk_forward(q, k, v, runs[0], plans[0], plans[0].chunks[0], softmax_scale, lse2, None)
        return _tokens(o).to(dtype), lse2
    lse2.fill_(float("inf"))  # rows that see no key keep it
    out = torch.zeros((total_q, heads, head_dim), dtype=torch.float32, device=q.device)
    for run, plan in zip(runs, plans):
        if not plan.fused:
            _explicit_forward(q, k, v, out, lse2, run, plan, softmax_scale, softcap)
            continue
        for chunk in plan.chunks:
            if chunk.keys.stop > chunk.keys.start:
                _fused_chunk_forward(q, k, v, run, plan, chunk, softmax_scale, lse2, out)
    return out.to(dtype), lse2


def varlen_attention_backward_torch(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                    out: torch.Tensor, lse2: torch.Tensor, cu_seqlens_q: torch.Tensor,
                                    cu_seqlens_k: torch.Tensor, softmax_scale: float, causal: bool,
                                    window: tuple[int, int], softcap: float
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``dq, dk, dv`` (shapes and dtypes of q, k, v) from the saved ``out`` and ``lse2``."""
    dtypes = (q.dtype, k.dtype, v.dtype)
    dout, q, k, v, out = _fp32(dout.contiguous(), q, k, v, out)  # contiguous: autograd may hand in a stride-0 dout
    runs = _runs(cu_seqlens_q, cu_seqlens_k)
    plans = [_plan(run, window, softcap, softmax_scale, q.device) for run in runs]
    if _single_fused(runs, plans, q.shape[0], k.shape[0]):
        grads = _fused_run_backward(dout, q, k, v, out, lse2, runs[0], plans[0], softmax_scale, None)
        return tuple(_tokens(g).to(dtype) for g, dtype in zip(grads, dtypes))  # type: ignore[return-value]
    grads = tuple(torch.zeros_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))
    delta = None
    for run, plan in zip(runs, plans):
        if plan.fused:
            _fused_run_backward(dout, q, k, v, out, lse2, run, plan, softmax_scale, grads)
            continue
        if delta is None:
            # rowsum(dout * out): the term the softmax Jacobian subtracts, [heads, total_q] fp32
            delta = (dout * out).sum(-1).transpose(0, 1)
        _explicit_backward(dout, q, k, v, lse2, delta, *grads, run, plan, softmax_scale, softcap)
    return tuple(g.to(dtype) for g, dtype in zip(grads, dtypes))  # type: ignore[return-value]
