"""``torch.library`` custom op for the decode kernels (Triton, CUDA C++ and C++ CPU).

``attn::flash_attn_decode(q, k_cache, v_cache, seqlens_k, ..., backend) -> (out, lse)`` wraps the
launcher of ``backend`` ("triton", "cuda", "cuda-sim" or "cpu") so ``torch.compile(fullgraph=True)``
treats a decode step as one opaque op (Dynamo cannot trace a kernel launch, nor the interpreter or
the emulator), with a fake implementation for shapes. The op does
not mutate the cache: appending new keys/values is plain PyTorch indexing that Dynamo traces.
Decode has no backward, so the op registers no autograd formula.
"""
from __future__ import annotations

from typing import Optional

import torch

from attn._kernel_ops import launcher
from attn._spec import AttentionSpec


@torch.library.custom_op("attn::flash_attn_decode", mutates_args=())
def flash_attn_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqlens_k: torch.Tensor,
    cache_batch_idx: Optional[torch.Tensor], block_table: Optional[torch.Tensor],
    alibi_slopes: Optional[torch.Tensor], softmax_scale: float, causal: bool, window_left: int,
    window_right: int, softcap: float, num_splits: int, backend: str = "triton",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q (B, Sq, H, D)`` against ``seqlens_k (B,)`` int32 keys per sequence of a contiguous
    ``(B_cache, S_max, Hkv, D)`` or paged ``(num_blocks, page_size, Hkv, D)`` cache
    -> ``out (B, Sq, H, D)`` in q's dtype, ``lse (B, H, Sq)`` fp32 (bottom-right alignment)."""
    spec = AttentionSpec(
        softmax_scale=softmax_scale, causal=causal, window_left=window_left, window_right=window_right,
        bottom_right=True, softcap=softcap, alibi_slopes=alibi_slopes,
    )
    return launcher("decode", backend)(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec, num_splits)


@flash_attn_decode.register_fake
def _flash_attn_decode_fake(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, alibi_slopes,
                            softmax_scale, causal, window_left, window_right, softcap, num_splits, backend="triton"):
    batch, seqlen_q, n_heads, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((batch, n_heads, seqlen_q), dtype=torch.float32)


def decode(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec: AttentionSpec, num_splits: int,
           backend: str):
    """A kernel backend's ``decode`` through the op (the backend method's signature plus its name)."""
    return flash_attn_decode(
        q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec.alibi_slopes, spec.softmax_scale,
        spec.causal, spec.window_left, spec.window_right, spec.softcap, num_splits, backend,
    )
