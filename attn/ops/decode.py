"""``attn::flash_attn_decode``: attention of new queries against a KV cache (every decode backend).

``(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, <options>, num_splits, backend)
-> (out, lse)`` runs the decode launcher of ``backend`` ("triton", "cuda", "cuda-sim" or "cpu"),
so ``torch.compile(fullgraph=True)`` treats a decode step as one opaque op (Dynamo cannot trace a
kernel launch, nor the interpreter or the emulator), with a fake implementation for shapes. The op
does not mutate the cache: appending new keys/values is plain PyTorch indexing that Dynamo traces
(:mod:`attn.api.decode`). Decode has no backward, so the op registers no autograd formula.
"""
from __future__ import annotations

from typing import Optional

import torch

from attn.core.spec import AttentionSpec
from attn.ops.args import spec_args, spec_from_args
from attn.ops.launchers import launcher


@torch.library.custom_op("attn::flash_attn_decode", mutates_args=())
def flash_attn_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqlens_k: torch.Tensor,
    cache_batch_idx: Optional[torch.Tensor], block_table: Optional[torch.Tensor], bias: Optional[torch.Tensor],
    alibi_slopes: Optional[torch.Tensor], softmax_scale: float, causal: bool, window_left: int,
    window_right: int, bottom_right: bool, softcap: float, num_splits: int, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q (B, Sq, H, D)`` against ``seqlens_k (B,)`` int32 keys per sequence of a contiguous
    ``(B_cache, S_max, Hkv, D)`` or paged ``(num_blocks, page_size, Hkv, D)`` cache
    -> ``out (B, Sq, H, D)`` in q's dtype, ``lse (B, H, Sq)`` fp32 (bottom-right alignment)."""
    spec = spec_from_args(bias, alibi_slopes, softmax_scale, causal, window_left, window_right, bottom_right, softcap)
    run = launcher("flash_attn_decode", backend)
    return run(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec, num_splits)


@flash_attn_decode.register_fake
def _flash_attn_decode_fake(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, bias, alibi_slopes,
                            softmax_scale, causal, window_left, window_right, bottom_right, softcap, num_splits,
                            backend):
    batch, seqlen_q, n_heads, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((batch, n_heads, seqlen_q), dtype=torch.float32)


def decode(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec: AttentionSpec, num_splits: int,
           backend: str):
    """A kernel backend's decode ``(out, lse)`` through the op (the backend method's signature plus its name)."""
    return flash_attn_decode(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, **spec_args(spec),
                             num_splits=num_splits, backend=backend)
