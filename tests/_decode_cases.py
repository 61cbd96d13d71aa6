"""Builders shared by the decode tests: a logical KV cache laid out contiguous or paged, the
expected cache after an append (computed independently of attn's own addressing code), and the
parity check of one call against the oracle."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

import attn
from attn import reference
from attn.testing import Parity, assert_parity, random_tensor


@dataclass
class CacheCase:
    q: torch.Tensor  # (B, Sq, H, D)
    k_new: Optional[torch.Tensor]  # (B, Sq, Hkv, D) or None
    v_new: Optional[torch.Tensor]
    cache_seqlens: torch.Tensor  # (B,) int32, before the append
    k_cache: torch.Tensor  # as passed to the call (contiguous or paged pool)
    v_cache: torch.Tensor
    block_table: Optional[torch.Tensor]
    cache_batch_idx: Optional[torch.Tensor]
    k_logical: torch.Tensor  # (B, capacity, Hkv, D): what each sequence holds after the append
    v_logical: torch.Tensor
    k_cache_expected: torch.Tensor  # the whole cache after the append
    v_cache_expected: torch.Tensor

    @property
    def seqlens_k(self) -> torch.Tensor:
        new = 0 if self.k_new is None else self.k_new.shape[1]
        return self.cache_seqlens.long() + new

    def kwargs(self) -> dict:
        return dict(k=self.k_new, v=self.v_new, cache_seqlens=self.cache_seqlens, block_table=self.block_table,
                    cache_batch_idx=self.cache_batch_idx)


def make_case(*, batch: int, seqlen_q: int, n_heads: int, n_kv_heads: int, head_dim: int, seqlens_k: list[int],
              capacity: int, page_size: Optional[int], append: bool, dtype: torch.dtype, device,
              batch_idx: bool = False, seed: int = 0) -> CacheCase:
    """``seqlens_k``: keys each sequence attends to after the call (cache + appended).
    ``page_size=None``: contiguous cache; else a shuffled page pool with spare pages."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape):
        return random_tensor(shape, dtype, generator=gen).to(device)

    new_len = seqlen_q if append else 0
    cache_seqlens = torch.tensor([s - new_len for s in seqlens_k], dtype=torch.int32)
    assert (cache_seqlens >= 0).all() and max(seqlens_k) <= capacity
    q = rnd(batch, seqlen_q, n_heads, head_dim)
    k_new = rnd(batch, new_len, n_kv_heads, head_dim) if append else None
    v_new = rnd(batch, new_len, n_kv_heads, head_dim) if append else None
    if page_size is not None:
        capacity = -(-capacity // page_size) * page_size
    k_before = rnd(batch, capacity, n_kv_heads, head_dim)  # logical contents before the call
    v_before = rnd(batch, capacity, n_kv_heads, head_dim)
    k_logical, v_logical = k_before.clone(), v_before.clone()
    if append:
        for b in range(batch):
            start = int(cache_seqlens[b])
            k_logical[b, start:start + new_len] = k_new[b]
            v_logical[b, start:start + new_len] = v_new[b]

    block_table = cache_batch_idx = None
    if page_size is None:
        if batch_idx:  # sequences live in shuffled rows of a larger cache
            rows = torch.randperm(batch + 2, generator=gen)[:batch]
            cache_batch_idx = rows.to(torch.int32).to(device)
            k_cache, v_cache = rnd(batch + 2, capacity, n_kv_heads, head_dim), rnd(batch + 2, capacity, n_kv_heads,
                                                                                     head_dim)
            k_exp, v_exp = k_cache.clone(), v_cache.clone()
            k_cache[rows], v_cache[rows] = k_before, v_before
            k_exp[rows], v_exp[rows] = k_logical, v_logical
        else:
            k_cache, v_cache, k_exp, v_exp = k_before.clone(), v_before.clone(), k_logical.clone(), v_logical.clone()
    else:
        pages_per_seq = capacity // page_size
        pool = batch * pages_per_seq + 3  # spare pages that no sequence owns must stay untouched
        perm = torch.randperm(pool, generator=gen)[: batch * pages_per_seq].view(batch, pages_per_seq)
        block_table = perm.to(torch.int32).to(device)
        k_cache, v_cache = rnd(pool, page_size, n_kv_heads, head_dim), rnd(pool, page_size, n_kv_heads, head_dim)
        k_exp, v_exp = k_cache.clone(), v_cache.clone()
        for b in range(batch):
            for p in range(pages_per_seq):
                page = slice(p * page_size, (p + 1) * page_size)
                k_cache[perm[b, p]], v_cache[perm[b, p]] = k_before[b, page], v_before[b, page]
                k_exp[perm[b, p]], v_exp[perm[b, p]] = k_logical[b, page], v_logical[b, page]
    return CacheCase(q, k_new, v_new, cache_seqlens.to(device), k_cache, v_cache, block_table, cache_batch_idx,
                     k_logical, v_logical, k_exp, v_exp)


def check_decode(case: CacheCase, dtype: torch.dtype, *, causal=True, window=(-1, -1), softcap=0.0, alibi=None,
                 num_splits=0, backend="triton") -> Parity:
    """Runs flash_attn_with_kvcache on ``case`` and checks out and lse against the oracle (3x
    rule) and the cache after the append, byte for byte."""
    out, lse = attn.flash_attn_with_kvcache(
        case.q, case.k_cache, case.v_cache, **case.kwargs(), causal=causal, window_size=window,
        softcap=softcap, alibi_slopes=alibi, num_splits=num_splits, return_softmax_lse=True, backend=backend)
    opts = dict(causal=causal, window_size=window, softcap=softcap, alibi_slopes=alibi, seqlens_k=case.seqlens_k)
    ref, ref_lse = reference.attention(case.q, case.k_logical, case.v_logical, dtype=torch.float64, **opts)
    pt, pt_lse = (None, None) if dtype == torch.float32 else reference.attention(
        case.q, case.k_logical, case.v_logical, dtype=dtype, **opts)
    result = assert_parity(out, ref, pt, factor=3)
    assert_parity(lse, ref_lse, pt_lse, factor=3, what="lse")
    assert out.dtype == dtype and lse.dtype == torch.float32
    # The append wrote exactly the new tokens; every other slot (other rows, spare pages) is untouched.
    assert torch.equal(case.k_cache, case.k_cache_expected)
    assert torch.equal(case.v_cache, case.v_cache_expected)
    return result
