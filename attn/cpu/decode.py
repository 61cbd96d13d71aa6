"""Split-KV decode launcher of the C++ CPU kernels (``attn.cpu._cpu.decode``)."""
from __future__ import annotations

from typing import Optional

import torch

from attn.core.alloc import empty
from attn.core.kernel_params import decode_params
from attn.core.spec import AttentionSpec
from attn.cpu import _cpu
from attn.cpu.isa import resolve_isa


def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqlens_k: torch.Tensor,
                     cache_batch_idx: Optional[torch.Tensor], block_table: Optional[torch.Tensor],
                     spec: AttentionSpec, num_splits: int = 0, isa: Optional[str] = None):
    """Attention of a few new queries against a KV cache, split over the keys (flash-decoding).

    ``q (B, Sq, H, D)``; ``k_cache, v_cache`` either ``(B_cache, S_cache, Hkv, D)`` (row ``b``, or
    ``cache_batch_idx[b]``) or paged ``(num_blocks, page_size, Hkv, D)`` with ``block_table (B,
    max_blocks)`` int32; ``seqlens_k (B,)`` keys per batch; causal/window alignment is
    bottom-right. ``num_splits`` 0 picks from the work and thread count. Returns ``out (B, Sq, H,
    D)`` in q's dtype and ``lse (B, H, Sq)`` fp32. Inputs are assumed validated by the caller.
    Scratch memory per thread grows with ``Sq * H * D``: meant for decoding a few tokens.
    """
    batch, seqlen_q, n_heads, head_dim = q.shape
    out = empty((batch, seqlen_q, n_heads, head_dim), q.dtype, q.device)
    lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
    seqlens_k = seqlens_k.to(torch.int32).contiguous()
    if block_table is not None:
        block_table = block_table.to(torch.int32)
    if cache_batch_idx is not None:
        cache_batch_idx = cache_batch_idx.to(torch.int32).contiguous()
    p = decode_params(_cpu, q, k_cache, v_cache, out, lse, seqlens_k, cache_batch_idx, block_table, spec)
    p.num_splits = num_splits
    p.num_threads = torch.get_num_threads()
    _cpu.decode(p, resolve_isa(isa))
    return out, lse
