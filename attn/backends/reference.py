"""The "reference" backend: :func:`attn.reference.attention` (the O(N^2) oracle) in fp32, on any
device, differentiable through autograd in both modes (plain PyTorch ops, so ``torch.func.jvp``
works: "forward_ad"); fp64 inputs are computed in fp64. Its output is laid out in memory like the
query, as the kernels' (docs/design.md §2). It supports every option; it is the fallback of last
resort and the yardstick of the parity tests."""
from __future__ import annotations

import torch

from attn import reference
from attn.core import cache_layout
from attn.core.alloc import in_layout_of
from attn.core.spec import INPUT_OPTIONS, AttentionSpec
from attn.reference.fa2 import compute_dtype

ALL_FORWARD = frozenset({"causal", "window_size", "softcap", "alibi_slopes", "attn_mask", "return_lse", "backward"})
# Forward-mode AD needs plain PyTorch ops: the custom ops of the kernel backends have no jvp rule.
FORWARD_AD = "forward_ad"


class ReferenceBackend:
    name = "reference"
    devices = frozenset({"cpu", "cuda"})
    capabilities = {"forward": ALL_FORWARD | INPUT_OPTIONS | {FORWARD_AD}, "decode": ALL_FORWARD - {"attn_mask", "backward"}}

    def status(self, device_type: str):
        if device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        return None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
        out, lse = reference.attention(
            q, k, v, softmax_scale=spec.softmax_scale, causal=spec.causal, bottom_right=spec.bottom_right,
            window_size=spec.window_size, softcap=spec.softcap, alibi_slopes=spec.alibi_slopes,
            attn_mask=spec.bias, dtype=compute_dtype(q.dtype),
        )
        return in_layout_of(q, out.to(q.dtype)), lse

    def decode(self, q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec: AttentionSpec,
               num_splits: int):
        """Gathers the cache into logical ``(B, capacity, Hkv, D)`` K/V and runs the oracle with
        per-sequence key lengths (``num_splits`` has no meaning here)."""
        batch = q.shape[0]
        k = cache_layout.gather(k_cache, batch, cache_batch_idx, block_table)
        v = cache_layout.gather(v_cache, batch, cache_batch_idx, block_table)
        out, lse = reference.attention(
            q, k, v, softmax_scale=spec.softmax_scale, causal=spec.causal, bottom_right=True,
            window_size=spec.window_size, softcap=spec.softcap, alibi_slopes=spec.alibi_slopes,
            seqlens_k=seqlens_k, dtype=torch.float32,
        )
        return out.to(q.dtype), lse


REFERENCE = ReferenceBackend()
