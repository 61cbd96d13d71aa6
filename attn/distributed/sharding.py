"""The load-balanced (zigzag) sequence layout of ring attention (docs/design.md §6).

The sequence of length ``S`` is cut into ``2W`` equal chunks; rank ``r`` of ``W`` holds chunks
``r`` and ``2W - 1 - r``, concatenated in that order. Under causal attention chunk ``c`` costs
work proportional to ``c + 1/2``, so each rank's pair costs the same ``2W`` units: the layout of
the ring-flash-attention project's zigzag ring and of Llama 3's context parallelism.
"""
from __future__ import annotations

import torch

from attn.core import validation as V


def zigzag_chunks(world_size: int, rank: int) -> tuple[int, int]:
    """The indices ``(rank, 2 * world_size - 1 - rank)`` of the two chunks (of ``2 * world_size``)
    that ``rank`` holds, in the order they are concatenated."""
    return rank, 2 * world_size - 1 - rank


def _check_layout(fn: str, world_size: object, rank: object) -> None:
    for name, value, bound in (("world_size", world_size, None), ("rank", rank, world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            V._fail(fn, name, "an int", type(value).__name__, TypeError)
        if value < 0 or (bound is None and value < 1) or (bound is not None and value >= bound):
            V._fail(fn, name, "an int >= 1" if bound is None else f"an int in [0, {bound})", value)


def _chunk_length(fn: str, name: str, length: int, n_chunks: int) -> int:
    if length % n_chunks:
        V._fail(fn, name, f"a sequence length divisible by 2 * world_size = {n_chunks} (pad the sequence at its end "
                f"to a multiple; exact for causal attention, where no real query sees the padding)", length)
    return length // n_chunks


def zigzag_shard(x: torch.Tensor, world_size: int, rank: int, dim: int = 1) -> torch.Tensor:
    """This rank's zigzag shard of a full sequence: chunks ``rank`` and ``2W - 1 - rank`` of ``2W``.

    Args:
        x: A tensor holding the whole sequence along ``dim``, e.g. ``(B, S, H, D)`` in flash-attn
            layout (any dtype, any device).
        world_size: ``W >= 1``, the number of ranks the sequence is split over.
        rank: This rank, ``0 <= rank < W``.
        dim: The sequence dimension. Default 1.

    Returns:
        A new tensor of ``x``'s dtype and device with ``S / W`` entries along ``dim``.

    Raises:
        TypeError: ``x`` is not a tensor, or ``world_size``/``rank`` is not an int.
        ValueError: ``rank`` outside ``[0, W)``, ``world_size < 1``, or ``S`` is not divisible by
            ``2W``.
    """
    fn = "zigzag_shard"
    V.check_tensor(fn, "x", x)
    _check_layout(fn, world_size, rank)
    chunks = x.chunk(2 * world_size, dim=dim)
    _chunk_length(fn, "x", x.shape[dim], 2 * world_size)
    first, second = zigzag_chunks(world_size, rank)
    return torch.cat([chunks[first], chunks[second]], dim=dim)


def zigzag_unshard(shards, dim: int = 1) -> torch.Tensor:
    """The full sequence from every rank's zigzag shard (the inverse of :func:`zigzag_shard`).

    Args:
        shards: The ``W`` shards in rank order (e.g. from ``torch.distributed.all_gather``), each
            with the same shape, dtype and device and an even length along ``dim``.
        dim: The sequence dimension. Default 1.

    Returns:
        A tensor with ``W`` times a shard's length along ``dim``.

    Raises:
        TypeError: ``shards`` is not a non-empty list or tuple of tensors.
        ValueError: the shards differ in shape, or their length along ``dim`` is odd.
    """
    fn = "zigzag_unshard"
    if not isinstance(shards, (list, tuple)) or not shards:
        V._fail(fn, "shards", "a non-empty list or tuple of tensors", type(shards).__name__, TypeError)
    for i, s in enumerate(shards):
        V.check_tensor(fn, f"shards[{i}]", s)
        if s.shape != shards[0].shape:
            V._fail(fn, f"shards[{i}]", f"the shape of shards[0] {tuple(shards[0].shape)}", tuple(s.shape))
    world_size = len(shards)
    if shards[0].shape[dim] % 2:
        V._fail(fn, "shards", f"an even length along dim {dim}", shards[0].shape[dim])
    chunks = [None] * (2 * world_size)
    for rank, shard in enumerate(shards):
        first, second = zigzag_chunks(world_size, rank)
        chunks[first], chunks[second] = shard.chunk(2, dim=dim)
    return torch.cat(chunks, dim=dim)
