"""Split-KV decode launcher of the CUDA C++ kernels (body of the ``attn::flash_attn_decode`` op for
"cuda" and "cuda-sim")."""
from __future__ import annotations

from typing import Optional

import torch

from attn.core.alloc import empty
from attn.core.kernel_params import decode_params, set_tensor
from attn.core.spec import AttentionSpec
from attn.core.splits import decode_num_splits
from attn.cuda.extension import KernelExtension, aligned, int32, misalignment


def attention_decode(ext: KernelExtension, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     seqlens_k: torch.Tensor, cache_batch_idx: Optional[torch.Tensor],
                     block_table: Optional[torch.Tensor], spec: AttentionSpec, num_splits: int):
    """fp16/bf16 ``q (B, Sq, H, D)`` against ``seqlens_k (B,)`` keys per sequence of a contiguous
    ``(B_cache, S_max, Hkv, D)`` or paged ``(num_pages, page_size, Hkv, D)`` cache, 16-byte aligned
    -> ``out (B, Sq, H, D)`` in q's dtype, ``lse (B, H, Sq)`` fp32. A cache cannot be copied to
    align it (the caller's appends must land in it): a misaligned one raises ValueError."""
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        why = misalignment(name, cache)
        if why is not None:
            raise ValueError(f"attn::flash_attn_decode: {why}")
    module = ext.module()
    batch, seqlen_q, n_heads, head_dim = q.shape
    n_kv_heads = k_cache.shape[2]
    q = aligned(q)
    paged = block_table is not None
    page_size = k_cache.shape[1] if paged else 0
    capacity = block_table.shape[1] * page_size if paged else k_cache.shape[1]
    packed_rows = seqlen_q * (n_heads // n_kv_heads)
    block_m, block_n, _ = module.decode_tile(head_dim, packed_rows)
    splits = decode_num_splits(num_splits, batch=batch, n_kv_heads=n_kv_heads, packed_rows=packed_rows,
                               block_m=block_m, block_n=block_n, capacity=capacity, head_dim=head_dim,
                               elem_bytes=q.element_size(), device=q.device)

    out = empty((batch, seqlen_q, n_heads, head_dim), q.dtype, q.device)
    lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
    out_part = lse_part = None
    if splits > 1:
        out_part = empty((splits, batch, seqlen_q, n_heads, head_dim), torch.float32, q.device)
        lse_part = empty((splits, batch, n_heads, seqlen_q), torch.float32, q.device)
    seqlens_k, cache_batch_idx, block_table = (int32(t) for t in (seqlens_k, cache_batch_idx, block_table))
    params = decode_params(module, q, k_cache, v_cache, out, lse, seqlens_k, cache_batch_idx, block_table, spec)
    set_tensor(params, "out_partial", out_part)
    set_tensor(params, "lse_partial", lse_part)
    params.num_splits = splits
    ext.launch("decode", q, params)
    return out, lse
