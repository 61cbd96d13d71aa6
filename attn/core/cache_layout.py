"""Addressing a KV cache in plain PyTorch: where logical position ``n`` of sequence ``b`` lives.

Two layouts (flash-attn's):

* contiguous ``(B_cache, S_max, Hkv, D)``: sequence ``b`` is cache row ``cache_batch_idx[b]``
  (or ``b``), position ``n`` is ``[row, n]``;
* paged ``(num_blocks, page_size, Hkv, D)`` with ``block_table (B, max_blocks)``: position ``n``
  is ``[block_table[b, n // page_size], n % page_size]``.

Used by the public decode function (append of new tokens, after validation), by the reference
backend (gathering a logical ``(B, capacity, Hkv, D)`` view) and by :class:`attn.KVCache`.
"""
from __future__ import annotations

from typing import Optional

import torch


def cache_slots(positions: torch.Tensor, cache_batch_idx: Optional[torch.Tensor],
                block_table: Optional[torch.Tensor], page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``positions (B, L)`` logical positions -> ``(row, slot)`` int64 index tensors ``(B, L)``
    into the cache's first two dims."""
    batch = positions.shape[0]
    positions = positions.long()
    if block_table is not None:
        row = torch.gather(block_table.long(), 1, positions // page_size)
        return row, positions % page_size
    rows = cache_batch_idx.long() if cache_batch_idx is not None else torch.arange(batch, device=positions.device)
    return rows.view(batch, 1).expand_as(positions), positions


def append(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           cache_seqlens: torch.Tensor, cache_batch_idx: Optional[torch.Tensor],
           block_table: Optional[torch.Tensor]) -> None:
    """Writes ``k, v (B, L, Hkv, D)`` in place at positions ``cache_seqlens[b] + 0..L-1``.
    The caller has validated that every target slot exists."""
    batch, new_len = k.shape[:2]
    positions = cache_seqlens.long().view(batch, 1) + torch.arange(new_len, device=k.device).view(1, new_len)
    row, slot = cache_slots(positions, cache_batch_idx, block_table, k_cache.shape[1])
    k_cache[row, slot] = k
    v_cache[row, slot] = v


def gather(cache: torch.Tensor, batch: int, cache_batch_idx: Optional[torch.Tensor],
           block_table: Optional[torch.Tensor]) -> torch.Tensor:
    """The logical ``(B, capacity, Hkv, D)`` copy of a cache. Paged entries past a sequence's
    last used page may be anything; they are clamped into the pool and must be masked by length."""
    if block_table is not None:
        num_blocks, page_size = cache.shape[:2]
        pages = block_table.long().clamp(0, num_blocks - 1)  # (B, max_blocks)
        return cache[pages].reshape(batch, pages.shape[1] * page_size, *cache.shape[2:])
    if cache_batch_idx is not None:
        return cache[cache_batch_idx.long()]
    return cache[:batch]
