"""All-to-all (DeepSpeed-Ulysses) attention: sequence shards in, heads sharded for the kernel
(docs/design.md §6).

An all-to-all turns each rank's ``(B, S/W, H, D)`` contiguous sequence shard into the whole
sequence for ``H/W`` of the heads, the local kernel runs on the full sequence, and a second
all-to-all turns the output back. Query head ``h`` reads kv head ``h // (H/Hkv)``; with ``H`` and
``Hkv`` both divisible by ``W``, rank ``r``'s query heads ``r*H/W ..`` read exactly its kv heads
``r*Hkv/W ..``, so GQA K/V move unexpanded.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from attn.api import flash_attn_func
from attn.core import validation as V
from attn.distributed.comm import Ring, check_same_shapes, ring_of


def _seq_to_heads(x: torch.Tensor, ring: Ring) -> torch.Tensor:
    """``(B, S/W, H, D)`` sequence shard -> ``(B, S, H/W, D)`` head shard of the whole sequence."""
    world = ring.world_size
    batch, seqlen, n_heads, dim = x.shape
    send = x.reshape(batch, seqlen, world, n_heads // world, dim).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)  # (W, B, S/W, H/W, D): block w is rank w's sequence shard
    dist.all_to_all_single(recv, send, group=ring.group)
    return recv.permute(1, 0, 2, 3, 4).reshape(batch, world * seqlen, n_heads // world, dim)


def _heads_to_seq(x: torch.Tensor, ring: Ring) -> torch.Tensor:
    """``(B, S, H/W, D)`` head shard -> ``(B, S/W, H, D)`` sequence shard (inverse of the above)."""
    world = ring.world_size
    batch, seqlen, n_heads, dim = x.shape
    send = x.reshape(batch, world, seqlen // world, n_heads, dim).transpose(0, 1).contiguous()
    recv = torch.empty_like(send)  # (W, B, S/W, H/W, D): block w holds rank w's heads
    dist.all_to_all_single(recv, send, group=ring.group)
    return recv.permute(1, 2, 0, 3, 4).reshape(batch, seqlen // world, world * n_heads, dim)


class _AllToAll(torch.autograd.Function):
    """:func:`_seq_to_heads` (``to_heads``) or :func:`_heads_to_seq`; the backward is the other one."""

    @staticmethod
    def forward(ctx, x, ring: Ring, to_heads: bool):
        ctx.ring, ctx.to_heads = ring, to_heads
        return (_seq_to_heads if to_heads else _heads_to_seq)(x, ring)

    @staticmethod
    def backward(ctx, grad):
        return (_heads_to_seq if ctx.to_heads else _seq_to_heads)(grad.contiguous(), ctx.ring), None, None


@torch.compiler.disable
def ulysses_flash_attn_func(
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
    backend: str | None = None,
):
    """All-to-all sequence parallel attention (DeepSpeed-Ulysses, Jacobs et al. 2023).

    Each rank passes its **contiguous** shard of the sequence (rank ``r`` holds positions
    ``r*S/W .. (r+1)*S/W - 1``, e.g. ``x.chunk(W, dim=1)[r]``; not the zigzag layout of
    :func:`ring_flash_attn_func`). The result equals :func:`attn.flash_attn_func` on the whole
    sequence, sharded the same way. Two all-to-alls move ``q, k, v`` to head shards and the
    output back (``all_to_all_single``); GQA K/V move unexpanded. Differentiable w.r.t. ``q``,
    ``k``, ``v`` (through ``out`` and ``lse``; the backward is the reverse all-to-alls around
    the local backward). Deterministic for a given world size. Under ``torch.compile`` the call
    is a graph break (``torch.compiler.disable``).

    Args:
        q: ``(B, S_local, H, D)`` float16, bfloat16 or float32; ``H`` divisible by the world
            size; the same shape on every rank.
        k: ``(B, S_local, Hkv, D)``, ``Hkv`` divisible by the world size, ``H % Hkv == 0``.
        v: ``(B, S_local, Hkv, D)``.
        group, causal, softmax_scale, window_size, softcap, deterministic, return_attn_probs,
            backend: As :func:`ring_flash_attn_func` (defaults None, False, None, ``(-1, -1)``,
            0.0, False, False, None).

    Returns:
        ``out (B, S_local, H, D)`` in q's dtype; with ``return_attn_probs=True``
        ``(out, lse, None)``, ``lse`` fp32 ``(B, H, S_local)``.

    Raises:
        RuntimeError: torch.distributed is not initialized, or a collective fails.
        TypeError / ValueError: as :func:`attn.flash_attn_func`; ValueError when ``H`` (argument
            ``q``) or ``Hkv`` (argument ``k``) is not divisible by the world size (use
            :func:`ring_flash_attn_func`, which has no such limit), when ``k``'s sequence length
            differs from ``q``'s, or when the ranks' shapes differ (raised on every rank).
    """
    fn = "ulysses_flash_attn_func"
    V.check_attention_inputs(fn, q, k, v)
    ring = ring_of(fn, group)
    world = ring.world_size
    for name, heads in (("q", q.shape[2]), ("k", k.shape[2])):
        if heads % world:
            V._fail(fn, name, f"a number of heads divisible by the world size {world} (all-to-all attention "
                    "shards heads; use ring_flash_attn_func instead)", heads)
    if k.shape[1] != q.shape[1]:
        V._fail(fn, "k", f"the sequence length of 'q' ({q.shape[1]}): shards of one self-attention sequence",
                k.shape[1])
    return_attn_probs = V.check_flag(fn, "return_attn_probs", return_attn_probs)
    check_same_shapes(fn, ring, q, k, v)
    q_h, k_h, v_h = (_AllToAll.apply(t, ring, True) for t in (q, k, v))
    out, lse, _ = flash_attn_func(q_h, k_h, v_h, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                                  softcap=softcap, deterministic=deterministic, return_attn_probs=True,
                                  backend=backend)
    out = _AllToAll.apply(out, ring, False)
    if not return_attn_probs:
        return out
    lse = _AllToAll.apply(lse.transpose(1, 2).unsqueeze(-1), ring, False).squeeze(-1).transpose(1, 2)
    return out, lse, None
