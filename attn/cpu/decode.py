"""Split-KV decode launcher of the C++ CPU kernels (``attn.cpu._cpu.decode``)."""
from __future__ import annotations

from typing import Optional

import torch

from attn.core.alloc import empty
from attn.core.spec import AttentionSpec
from attn.cpu import _cpu
from attn.cpu.forward import DTYPES
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
    n_kv_heads = k_cache.shape[2]
    out = empty((batch, seqlen_q, n_heads, head_dim), q.dtype, q.device)
    lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
    seqlens_k = seqlens_k.to(torch.int32).contiguous()
    p = _cpu.DecodeParams()
    p.q, p.k_cache, p.v_cache = q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr()
    p.out, p.lse, p.cache_seqlens = out.data_ptr(), lse.data_ptr(), seqlens_k.data_ptr()
    if block_table is not None:
        block_table = block_table.to(torch.int32)
        p.block_table = block_table.data_ptr()
        p.block_table_batch_stride = block_table.stride(0)
        p.page_size = k_cache.shape[1]
    if cache_batch_idx is not None:
        cache_batch_idx = cache_batch_idx.to(torch.int32).contiguous()
        p.cache_batch_idx = cache_batch_idx.data_ptr()
    if spec.alibi_slopes is not None:
        p.alibi_slopes = spec.alibi_slopes.data_ptr()
    p.dtype = DTYPES[q.dtype]
    p.batch, p.seqlen_q, p.n_heads, p.n_kv_heads, p.head_dim = batch, seqlen_q, n_heads, n_kv_heads, head_dim
    p.q_batch_stride, p.q_row_stride, p.q_head_stride = q.stride()[:3]
    p.k_batch_stride, p.k_row_stride, p.k_head_stride = k_cache.stride()[:3]
    p.v_batch_stride, p.v_row_stride, p.v_head_stride = v_cache.stride()[:3]
    p.out_batch_stride, p.out_row_stride, p.out_head_stride = out.stride()[:3]
    p.lse_batch_stride, p.lse_head_stride = lse.stride()[:2]
    p.softmax_scale = spec.softmax_scale
    p.softcap = spec.softcap
    p.window_left, p.window_right = spec.window_left, spec.window_right
    p.num_splits = num_splits
    p.num_threads = torch.get_num_threads()
    _cpu.decode(p, resolve_isa(isa))
    return out, lse
