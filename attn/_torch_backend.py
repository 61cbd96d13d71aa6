"""Backends made of plain PyTorch ops: "torch" (SDPA) and "reference" (the oracle).

Both are differentiable through autograd and run on any device. "torch" calls
``torch.nn.functional.scaled_dot_product_attention`` with masks expressed as an additive bias,
so it materializes nothing PyTorch would not; it cannot express ``softcap`` or return the LSE.
"reference" runs :func:`attn.reference.attention` in fp32 and supports everything.

PyTorch's fused CPU SDPA kernels turn a NaN input row into zeros; attn documents that NaN
propagates, so "torch" hands inputs that contain NaN to the reference formula (one O(B·S·H·D)
check per input, against the O(B·H·Sq·Sk·D) attention).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attn import _cache_ops, reference
from attn._spec import AttentionSpec

_ALL_FORWARD = frozenset({"causal", "window_size", "softcap", "alibi_slopes", "attn_mask", "return_lse", "backward"})


class TorchSDPABackend:
    name = "torch"
    devices = frozenset({"cpu", "cuda"})
    capabilities = {"forward": _ALL_FORWARD - {"softcap", "return_lse"}}

    def status(self, device_type: str):
        if device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        return None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
        if any(torch.isnan(t).any() for t in (q, k, v)):
            return REFERENCE.forward(q, k, v, spec)[0], None
        batch, seqlen_q, n_heads, _ = q.shape
        seqlen_k, n_kv_heads = k.shape[1], k.shape[2]
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        gqa = n_heads != n_kv_heads
        # PyTorch's is_causal is top-left aligned; bottom-right coincides with it when Sq == Sk.
        simple_causal = spec.causal and spec.window_left < 0 and (not spec.bottom_right or seqlen_q == seqlen_k)
        if spec.bias is None and spec.alibi_slopes is None and (not spec.has_window or simple_causal):
            out = F.scaled_dot_product_attention(
                qt, kt, vt, is_causal=simple_causal, scale=spec.softmax_scale, enable_gqa=gqa
            )
            return out.transpose(1, 2), None
        keep = reference.visibility(
            batch, seqlen_q, seqlen_k, causal=spec.causal, bottom_right=spec.bottom_right,
            window_size=spec.window_size, device=q.device,
        )
        bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, float("-inf"))
        if spec.alibi_slopes is not None:
            bias = bias + reference.alibi_bias(
                spec.alibi_slopes, batch, n_heads, seqlen_q, seqlen_k, bottom_right=spec.bottom_right
            ).to(q.dtype)
        if spec.bias is not None:
            bias = bias + spec.bias.to(q.dtype)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias, scale=spec.softmax_scale, enable_gqa=gqa)
        # SDPA yields NaN for rows that see no key; the contract says 0.
        dead = torch.isneginf(bias).all(dim=-1, keepdim=True).expand(out.shape[:-1] + (1,))
        out = out.masked_fill(dead, 0.0)
        return out.transpose(1, 2), None


class ReferenceBackend:
    name = "reference"
    devices = frozenset({"cpu", "cuda"})
    capabilities = {"forward": _ALL_FORWARD, "decode": _ALL_FORWARD - {"attn_mask", "backward"}}

    def status(self, device_type: str):
        if device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        return None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
        out, lse = reference.attention(
            q, k, v, softmax_scale=spec.softmax_scale, causal=spec.causal, bottom_right=spec.bottom_right,
            window_size=spec.window_size, softcap=spec.softcap, alibi_slopes=spec.alibi_slopes,
            attn_mask=spec.bias, dtype=torch.float32,
        )
        return out.to(q.dtype), lse

    def decode(self, q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec: AttentionSpec,
               num_splits: int):
        """Gathers the cache into logical ``(B, capacity, Hkv, D)`` K/V and runs the oracle with
        per-sequence key lengths (``num_splits`` has no meaning here)."""
        batch = q.shape[0]
        k = _cache_ops.gather(k_cache, batch, cache_batch_idx, block_table)
        v = _cache_ops.gather(v_cache, batch, cache_batch_idx, block_table)
        out, lse = reference.attention(
            q, k, v, softmax_scale=spec.softmax_scale, causal=spec.causal, bottom_right=True,
            window_size=spec.window_size, softcap=spec.softcap, alibi_slopes=spec.alibi_slopes,
            seqlens_k=seqlens_k, dtype=torch.float32,
        )
        return out.to(q.dtype), lse


TORCH = TorchSDPABackend()
REFERENCE = ReferenceBackend()
