"""Launcher for the forward kernel: tensors in, tensors out."""
from __future__ import annotations

import torch
import triton

from attn.core.alloc import empty, empty_in_layout_of
from attn.core.spec import AttentionSpec
from attn.triton._forward_kernel import _attn_fwd_kernel
from attn.triton._launch import dot_flags
from attn.triton.configs import forward_config, head_dim_bucket


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
    """``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` (any strides, last dim contiguous)
    -> ``out (B, Sq, H, D)`` in q's dtype, laid out in memory like ``q``, ``lse (B, H, Sq)`` fp32."""
    batch, seqlen_q, n_heads, head_dim = q.shape
    seqlen_k, n_kv_heads = k.shape[1], k.shape[2]
    out = empty_in_layout_of(q, (batch, seqlen_q, n_heads, head_dim), q.dtype)
    lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
    block_d = head_dim_bucket(head_dim)
    cfg = forward_config(block_d, q.dtype, has_bias=spec.bias is not None)
    left, right = spec.window_bounds(seqlen_q, seqlen_k)
    bias = spec.bias if spec.bias is not None else lse
    bias_strides = spec.bias.stride() if spec.bias is not None else (0, 0, 0, 0)
    alibi = spec.alibi_slopes if spec.alibi_slopes is not None else lse
    grid = (triton.cdiv(seqlen_q, cfg.block_m), batch * n_heads)
    _attn_fwd_kernel[grid](
        q, k, v, out, lse, bias, alibi,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1),
        *bias_strides,
        n_heads, n_heads // n_kv_heads, seqlen_q, seqlen_k, head_dim,
        spec.softmax_scale, spec.softcap, spec.diagonal_offset(seqlen_q, seqlen_k), left, right,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
        HAS_SOFTCAP=spec.softcap > 0, HAS_ALIBI=spec.alibi_slopes is not None, HAS_BIAS=spec.bias is not None,
        **dot_flags(_attn_fwd_kernel, q.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse
