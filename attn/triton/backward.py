"""Launcher for the backward kernels: tensors in, tensors out."""
from __future__ import annotations

import torch
import triton

from attn.core.alloc import empty
from attn.core.spec import AttentionSpec
from attn.triton._backward_kernel import _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel, _attn_bwd_preprocess_kernel
from attn.triton._launch import dot_flags
from attn.triton.configs import backward_config, head_dim_bucket, preprocess_block_m


def attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                       lse: torch.Tensor, dlse: torch.Tensor, spec: AttentionSpec):
    """Gradients of ``out = attention(q, k, v)`` (and of its ``lse``) w.r.t. q, k, v.

    ``q, out, dout (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` (last dim contiguous, any other
    strides), ``lse, dlse (B, H, Sq)`` fp32 -> ``dq (B, Sq, H, D)``, ``dk, dv (B, Sk, Hkv, D)``,
    contiguous in the inputs' dtype. Deterministic: no atomics, fixed reduction order.
    """
    batch, seqlen_q, n_heads, head_dim = q.shape
    seqlen_k, n_kv_heads = k.shape[1], k.shape[2]
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    lse = lse.contiguous()
    dlse = dlse.contiguous()
    block_d = head_dim_bucket(head_dim)
    cfg = backward_config(block_d, q.dtype, has_bias=spec.bias is not None)

    delta = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
    block_m = preprocess_block_m(block_d)
    _attn_bwd_preprocess_kernel[(triton.cdiv(seqlen_q, block_m), batch * n_heads)](
        out, dout, dlse, delta,
        out.stride(0), out.stride(1), out.stride(2),
        dout.stride(0), dout.stride(1), dout.stride(2),
        n_heads, seqlen_q, head_dim,
        BLOCK_M=block_m, BLOCK_D=block_d,
    )

    dq = empty((batch, seqlen_q, n_heads, head_dim), q.dtype, q.device)
    dk = empty((batch, seqlen_k, n_kv_heads, head_dim), k.dtype, k.device)
    dv = empty((batch, seqlen_k, n_kv_heads, head_dim), v.dtype, v.device)
    left, right = spec.window_bounds(seqlen_q, seqlen_k)
    bias = spec.bias if spec.bias is not None else delta
    bias_strides = spec.bias.stride() if spec.bias is not None else (0, 0, 0, 0)
    alibi = spec.alibi_slopes if spec.alibi_slopes is not None else delta
    common = dict(
        HAS_SOFTCAP=spec.softcap > 0, HAS_ALIBI=spec.alibi_slopes is not None, HAS_BIAS=spec.bias is not None,
        **dot_flags(_attn_bwd_dq_kernel, q.dtype),
    )
    scalars = (spec.softmax_scale, spec.softcap, spec.diagonal_offset(seqlen_q, seqlen_k), left, right)

    _attn_bwd_dkdv_kernel[(triton.cdiv(seqlen_k, cfg.dkdv.block_n), batch * n_kv_heads)](
        q, k, v, dout, lse, delta, dk, dv, bias, alibi,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        dout.stride(0), dout.stride(1), dout.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        *bias_strides,
        n_heads, n_kv_heads, n_heads // n_kv_heads, seqlen_q, seqlen_k, head_dim, *scalars,
        BLOCK_M=cfg.dkdv.block_m, BLOCK_N=cfg.dkdv.block_n, BLOCK_D=block_d, **common,
        num_warps=cfg.dkdv.num_warps, num_stages=cfg.dkdv.num_stages,
    )
    _attn_bwd_dq_kernel[(triton.cdiv(seqlen_q, cfg.dq.block_m), batch * n_heads)](
        q, k, v, dout, lse, delta, dq, bias, alibi,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        dout.stride(0), dout.stride(1), dout.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        *bias_strides,
        n_heads, n_heads // n_kv_heads, seqlen_q, seqlen_k, head_dim, *scalars,
        BLOCK_M=cfg.dq.block_m, BLOCK_N=cfg.dq.block_n, BLOCK_D=block_d, **common,
        num_warps=cfg.dq.num_warps, num_stages=cfg.dq.num_stages,
    )
    return dq, dk, dv
