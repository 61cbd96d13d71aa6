"""Forward launcher of the C++ CPU kernels (``attn.cpu._cpu.forward``)."""
from __future__ import annotations

from typing import Optional

import torch

from attn.core.alloc import empty, empty_in_layout_of
from attn.core.spec import AttentionSpec
from attn.cpu import _cpu
from attn.cpu.isa import resolve_isa

DTYPES = {
    torch.float32: _cpu.DType.float32,
    torch.float16: _cpu.DType.float16,
    torch.bfloat16: _cpu.DType.bfloat16,
}


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec,
                      isa: Optional[str] = None):
    """``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` (any strides, last dim contiguous)
    -> ``out (B, Sq, H, D)`` in q's dtype, laid out in memory like ``q``, ``lse (B, H, Sq)`` fp32."""
    batch, seqlen_q, n_heads, head_dim = q.shape
    seqlen_k, n_kv_heads = k.shape[1], k.shape[2]
    out = empty_in_layout_of(q, (batch, seqlen_q, n_heads, head_dim), q.dtype)
    lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
    p = _cpu.FwdParams()
    p.q, p.k, p.v, p.out, p.lse = q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr()
    p.dtype = DTYPES[q.dtype]
    p.batch, p.seqlen_q, p.seqlen_k = batch, seqlen_q, seqlen_k
    p.n_heads, p.n_kv_heads, p.head_dim = n_heads, n_kv_heads, head_dim
    p.q_batch_stride, p.q_row_stride, p.q_head_stride = q.stride()[:3]
    p.k_batch_stride, p.k_row_stride, p.k_head_stride = k.stride()[:3]
    p.v_batch_stride, p.v_row_stride, p.v_head_stride = v.stride()[:3]
    p.out_batch_stride, p.out_row_stride, p.out_head_stride = out.stride()[:3]
    p.lse_batch_stride, p.lse_head_stride = lse.stride()[:2]
    bias = spec.bias
    if bias is not None:
        bias = bias if bias.dtype == torch.float32 else bias.float()
        p.bias = bias.data_ptr()
        p.bias_batch_stride, p.bias_head_stride, p.bias_row_stride, p.bias_col_stride = bias.stride()
    if spec.alibi_slopes is not None:
        p.alibi_slopes = spec.alibi_slopes.data_ptr()
    p.softmax_scale = spec.softmax_scale
    p.softcap = spec.softcap
    p.diag_offset = spec.diagonal_offset(seqlen_q, seqlen_k)
    p.window_left, p.window_right = spec.window_left, spec.window_right
    p.num_threads = torch.get_num_threads()
    _cpu.forward(p, resolve_isa(isa))
    return out, lse
