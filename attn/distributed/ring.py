"""Ring attention over a process group: forward, backward and the public entry (docs/design.md §6).

Every rank holds the zigzag shard (:mod:`attn.distributed.sharding`) of q, k and v. For ``W``
steps each rank attends its queries to the K/V shard it holds, merges the result into a running
``(out, lse)`` with :func:`attn.merge_attention_states`, and passes the K/V shard on to the next
rank; the transfer of the next shard is posted before the current one is computed, so it runs
behind the kernels. Each (query chunk, key chunk) pair is one call to
:func:`attn.flash_attn_func` planned by :func:`attn.distributed.blocks.plan_block`, or none
when the pair is invisible.

The backward rotates K/V again. For each pair it recomputes the chunk's ``(out_c, lse_c)`` with
autograd and back-propagates the gradients that the merge gives the chunk:
``w = exp(lse_c - lse)``, ``dout_c = w * dout`` and
``dlse_c = w * (rowsum(dout * (out_c - out)) + dlse)``, which makes the chunk's backward the
global FlashAttention-2 backward (``dS = P (dP - rowsum(dout * out))`` with the global
probabilities). dK/dV accumulate in fp32 in a buffer that travels with its K/V shard and reaches
home after ``W`` hops; additions happen in a fixed order, so results are deterministic for a
given world size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from attn.api import flash_attn_func, merge_attention_states
from attn.core import validation as V
from attn.distributed.blocks import Block, plan_block
from attn.distributed.comm import Ring, check_same_shapes, ring_of, wait
from attn.distributed.sharding import zigzag_chunks


@dataclass(frozen=True)
class _Options:
    ring: Ring
    softmax_scale: float
    window_left: int
    window_right: int  # 0 when causal
    softcap: float
    deterministic: bool
    backend: str | None
    overlap: bool


def _pack(k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """K and V in one flat buffer: one message per step."""
    return torch.cat([k.reshape(-1).to(dtype), v.reshape(-1).to(dtype)])


def _unpack(kv: torch.Tensor, k_shape, v_shape) -> tuple[torch.Tensor, torch.Tensor]:
    n_k = k_shape.numel()
    return kv[:n_k].view(k_shape), kv[n_k:].view(v_shape)


def _pairs(opts: _Options, owner: int, chunk: int):
    """``(q_offset, k_offset, Block)`` for each visible pair of this rank's query chunks and
    ``owner``'s key chunks, offsets local to the shards."""
    world_size = opts.ring.world_size
    for qi, q_chunk in enumerate(zigzag_chunks(world_size, opts.ring.rank)):
        for ki, k_chunk in enumerate(zigzag_chunks(world_size, owner)):
            block = plan_block(q_chunk * chunk, chunk, k_chunk * chunk, chunk, opts.window_left, opts.window_right)
            if block is not None:
                yield qi * chunk, ki * chunk, block


def _attend(opts: _Options, q, k, v, q_off: int, k_off: int, block: Block):
    """``(out, lse)`` of one planned pair: rows ``q_off + [i0, i1)``, keys ``k_off + [j0, j1)``."""
    out, lse, _ = flash_attn_func(
        q[:, q_off + block.i0:q_off + block.i1], k[:, k_off + block.j0:k_off + block.j1],
        v[:, k_off + block.j0:k_off + block.j1], softmax_scale=opts.softmax_scale, causal=block.causal,
        window_size=block.window_size, softcap=opts.softcap, deterministic=opts.deterministic,
        return_attn_probs=True, backend=opts.backend)
    return out, lse


def _rotate(opts: _Options, buf: torch.Tensor, last: bool):
    """Starts sending ``buf`` on (None on the last step); without overlap waits at once."""
    if last:
        return None
    recv, works = opts.ring.start(buf)
    if opts.overlap:
        return recv, works
    wait(works)
    return recv, []  # a gloo work waited on twice blocks until its timeout


def _arrive(pending, buf: torch.Tensor) -> torch.Tensor:
    if pending is None:
        return buf
    recv, works = pending
    wait(works)
    return recv


def _forward(opts: _Options, q, k, v):
    """``out (B, S_local, H, D)`` in q's dtype and fp32 ``lse (B, H, S_local)``."""
    batch, seqlen, n_heads, _ = q.shape
    chunk, world_size = seqlen // 2, opts.ring.world_size
    out = torch.zeros((batch, seqlen, n_heads, v.shape[-1]), dtype=torch.float32, device=q.device)
    lse = torch.full((batch, n_heads, seqlen), float("-inf"), dtype=torch.float32, device=q.device)
    kv = _pack(k, v, k.dtype)
    for step in range(world_size):
        pending = _rotate(opts, kv, step == world_size - 1)
        k_cur, v_cur = _unpack(kv, k.shape, v.shape)
        for q_off, k_off, block in _pairs(opts, (opts.ring.rank - step) % world_size, chunk):
            out_c, lse_c = _attend(opts, q, k_cur, v_cur, q_off, k_off, block)
            rows = slice(q_off + block.i0, q_off + block.i1)
            out[:, rows], lse[:, :, rows] = merge_attention_states(out[:, rows], lse[:, :, rows],
                                                                   out_c.float(), lse_c)
        kv = _arrive(pending, kv)
    return out.to(q.dtype), lse


def _pair_grads(opts: _Options, q, k, v, out, lse, dout, dlse, owner: int):
    """fp32 ``(dq, dk, dv)`` of this rank's queries against ``owner``'s K/V (see the module doc)."""
    chunk = q.shape[1] // 2
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        outputs, grads = [], []
        for q_off, k_off, block in _pairs(opts, owner, chunk):
            out_c, lse_c = _attend(opts, *leaves, q_off, k_off, block)
            rows = slice(q_off + block.i0, q_off + block.i1)
            weight = torch.exp(lse_c - lse[:, :, rows]).masked_fill(torch.isneginf(lse_c), 0.0)  # (B, H, n)
            dout_rows = dout[:, rows].float()
            delta = (dout_rows * (out_c.float() - out[:, rows].float())).sum(-1).transpose(1, 2)  # (B, H, n)
            outputs += [out_c, lse_c]
            grads += [(weight.transpose(1, 2).unsqueeze(-1) * dout_rows).to(out_c.dtype),
                      weight * (delta + dlse[:, :, rows])]
        found = torch.autograd.grad(outputs, leaves, grads, allow_unused=True) if outputs else (None,) * 3
    return [torch.zeros(t.shape, dtype=torch.float32, device=t.device) if g is None else g.float()
            for t, g in zip(leaves, found, strict=True)]


def _backward(opts: _Options, q, k, v, out, lse, dout, dlse):
    world_size, rank = opts.ring.world_size, opts.ring.rank
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    kv = _pack(k, v, k.dtype)
    dkv_pending = None
    for step in range(world_size):
        kv_pending = _rotate(opts, kv, step == world_size - 1)
        k_cur, v_cur = _unpack(kv, k.shape, v.shape)
        dq_c, dk_c, dv_c = _pair_grads(opts, q, k_cur, v_cur, out, lse, dout, dlse, (rank - step) % world_size)
        dq += dq_c
        dkv = _pack(dk_c, dv_c, torch.float32)
        if dkv_pending is not None:  # the dK/dV of this K/V shard summed by the ranks it passed
            dkv = _arrive(dkv_pending, dkv) + dkv
        dkv_pending = _rotate(opts, dkv, world_size == 1)  # on the last step this sends it home
        kv = _arrive(kv_pending, kv)
    dk, dv = _unpack(_arrive(dkv_pending, dkv), k.shape, v.shape)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, opts: _Options):
        out, lse = _forward(opts, q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.opts = opts
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dout = torch.zeros_like(out) if dout is None else dout
        dlse = torch.zeros_like(lse) if dlse is None else dlse
        return (*_backward(ctx.opts, q, k, v, out, lse, dout, dlse), None)


@torch.compiler.disable
def ring_flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group=None,
    causal: bool = False,
    softmax_scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    overlap: bool = True,
    backend: str | None = None,
):
    """Ring attention (Liu et al. 2023) over a ``torch.distributed`` process group.

    Each rank passes its zigzag shard of the sequence (:func:`zigzag_shard`: chunks ``r`` and
    ``2W - 1 - r`` of ``2W``, which balances causal work; the same layout for non-causal calls).
    The result equals :func:`attn.flash_attn_func` on the whole sequence (same ``causal``,
    ``window_size``, ``softcap``, ``softmax_scale``; ``Sq = Sk`` so causal is unambiguous),
    sharded the same way. K/V shards circle the ring by asynchronous point-to-point ops
    (``batch_isend_irecv``) that overlap the kernels; key chunks a query chunk cannot see are
    skipped. GQA K/V travel unexpanded. Differentiable w.r.t. ``q``, ``k``, ``v`` (through
    ``out`` and ``lse``): the backward rotates K/V again, recomputes each visible chunk pair and
    returns dK/dV to their owners (docs/design.md §6). Deterministic for a given world size.
    Under ``torch.compile`` the call is a graph break (``torch.compiler.disable``).

    Args:
        q: ``(B, S_local, H, D)`` this rank's zigzag shard of the queries, float16, bfloat16 or
            float32; ``S_local`` even (two chunks); the same shape on every rank.
        k: ``(B, S_local, Hkv, D)`` this rank's shard of the keys, ``H % Hkv == 0``.
        v: ``(B, S_local, Hkv, D)`` this rank's shard of the values.
        group: The process group (default None: the default group). Backend gloo for CPU
            tensors, nccl for CUDA tensors.
        causal: Causal attention over the whole sequence. Default False.
        softmax_scale: Default None: ``1 / sqrt(D)``.
        window_size: ``(left, right)`` sliding window over the whole sequence, as in
            :func:`attn.flash_attn_func`. Default ``(-1, -1)`` (none).
        softcap: Logit soft-capping, 0.0 (default) disables it.
        deterministic: Passed to the local kernels. Default False.
        return_attn_probs: If True return ``(out, lse, None)`` as flash-attn does. Default False.
        overlap: Default True. False waits for each transfer before computing (for measuring
            how much communication the overlap hides; results are identical).
        backend: The local kernels' backend, as in :func:`attn.flash_attn_func`. Default None.

    Returns:
        ``out (B, S_local, H, D)`` in q's dtype, this rank's shard; with
        ``return_attn_probs=True`` ``(out, lse, None)``, ``lse`` fp32 ``(B, H, S_local)``.

    Raises:
        RuntimeError: torch.distributed is not initialized, or a collective fails.
        TypeError / ValueError: as :func:`attn.flash_attn_func` for the local tensors and options;
            ValueError when ``k``'s sequence length differs from ``q``'s, ``S_local`` is odd, or the
            ranks' shapes differ (raised on every rank).
    """
    fn = "ring_flash_attn_func"
    V.check_attention_inputs(fn, q, k, v)
    left, right = V.check_window(fn, window_size)
    causal = V.check_flag(fn, "causal", causal)
    opts = _Options(
        ring=ring_of(fn, group), softmax_scale=V.check_scale(fn, "softmax_scale", softmax_scale, q.shape[-1]),
        window_left=left, window_right=0 if causal else right, softcap=V.check_softcap(fn, softcap),
        deterministic=V.check_flag(fn, "deterministic", deterministic), backend=backend,
        overlap=V.check_flag(fn, "overlap", overlap))
    if k.shape[1] != q.shape[1]:
        V._fail(fn, "k", f"the sequence length of 'q' ({q.shape[1]}): shards of one self-attention sequence",
                k.shape[1])
    if q.shape[1] % 2:
        V._fail(fn, "q", "an even local sequence length (two zigzag chunks; see zigzag_shard)", q.shape[1])
    check_same_shapes(fn, opts.ring, q, k, v)
    out, lse = _RingAttention.apply(q, k, v, opts)
    return (out, lse, None) if V.check_flag(fn, "return_attn_probs", return_attn_probs) else out
