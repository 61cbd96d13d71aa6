"""Launcher for split-KV decode: tensors in, tensors out."""
from __future__ import annotations

from typing import Optional

import torch
import triton

from attn.core.alloc import empty
from attn.core.spec import AttentionSpec
from attn.core.splits import decode_num_splits
from attn.triton._decode_combine_kernel import _decode_combine_kernel
from attn.triton._decode_kernel import _decode_split_kernel
from attn.triton._launch import dot_flags
from attn.triton.configs import head_dim_bucket
from attn.triton.decode_configs import COMBINE_NUM_WARPS, decode_config


def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqlens_k: torch.Tensor,
                     cache_batch_idx: Optional[torch.Tensor], block_table: Optional[torch.Tensor],
                     spec: AttentionSpec, num_splits: int):
    """``q (B, Sq, H, D)`` against a contiguous ``(B_cache, S_max, Hkv, D)`` or paged
    ``(num_blocks, page_size, Hkv, D)`` cache holding ``seqlens_k (B,)`` int32 keys per sequence
    -> ``out (B, Sq, H, D)`` in q's dtype, ``lse (B, H, Sq)`` fp32."""
    batch, seqlen_q, n_heads, head_dim = q.shape
    n_kv_heads = k_cache.shape[2]
    group = n_heads // n_kv_heads
    paged = block_table is not None
    page_size = k_cache.shape[1] if paged else 1
    capacity = block_table.shape[1] * page_size if paged else k_cache.shape[1]
    block_d = head_dim_bucket(head_dim)
    features = spec.softcap > 0 or spec.alibi_slopes is not None
    tile = decode_config(block_d, q.dtype, group * seqlen_q)  # the split count needs only the tile shape
    n_q_tiles = triton.cdiv(group * seqlen_q, tile.block_m)
    splits = decode_num_splits(num_splits, batch=batch, n_kv_heads=n_kv_heads, packed_rows=group * seqlen_q,
                               block_m=tile.block_m, block_n=tile.block_n, capacity=capacity, head_dim=head_dim,
                               elem_bytes=q.element_size(), device=q.device)
    cfg = decode_config(block_d, q.dtype, group * seqlen_q, paged, splits == 1, features)

    out = empty((batch, seqlen_q, n_heads, head_dim), q.dtype, q.device)
    lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
    if splits == 1:  # the split kernel writes the final result; no combine
        out_part, lse_part = out.unsqueeze(0), lse.unsqueeze(0)
    else:
        out_part = empty((splits, batch, seqlen_q, n_heads, head_dim), torch.float32, q.device)
        lse_part = empty((splits, batch, n_heads, seqlen_q), torch.float32, q.device)
    left, right = spec.window_bounds(seqlen_q, capacity)
    alibi = spec.alibi_slopes if spec.alibi_slopes is not None else lse
    _decode_split_kernel[(n_q_tiles, batch * n_kv_heads, splits)](
        q, k_cache, v_cache, out_part, lse_part, seqlens_k,
        cache_batch_idx if cache_batch_idx is not None else seqlens_k,
        block_table if paged else seqlens_k, alibi,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out_part.stride(0), out_part.stride(1), out_part.stride(2), out_part.stride(3),
        lse_part.stride(0), lse_part.stride(1), lse_part.stride(2),
        block_table.stride(0) if paged else 0,
        n_heads, group, seqlen_q, head_dim, page_size, splits,
        spec.softmax_scale, spec.softcap, left, right,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
        PAGED=paged, HAS_BATCH_IDX=cache_batch_idx is not None,
        HAS_SOFTCAP=spec.softcap > 0, HAS_ALIBI=spec.alibi_slopes is not None,
        **dot_flags(_decode_split_kernel, q.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg,
    )
    if splits > 1:
        _decode_combine_kernel[(seqlen_q, batch * n_heads)](
            out_part, lse_part, out, lse,
            out_part.stride(0), out_part.stride(1), out_part.stride(2), out_part.stride(3),
            lse_part.stride(0), lse_part.stride(1), lse_part.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(1),
            n_heads, splits, head_dim,
            BLOCK_D=block_d,
            num_warps=COMBINE_NUM_WARPS,
        )
    return out, lse
