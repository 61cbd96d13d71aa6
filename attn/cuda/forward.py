"""Forward launcher of the CUDA C++ kernels (body of the ``attn::kernel_forward`` op for "cuda" and
"cuda-sim")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attn.core.alloc import empty, empty_in_layout_of, in_layout_of
from attn.core.spec import AttentionSpec
from attn.cuda.extension import DTYPE_CODES, KernelExtension, aligned, kernel_head_dim


def attention_forward(ext: KernelExtension, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
    """fp16/bf16 ``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` (any strides, last dim contiguous)
    -> ``out (B, Sq, H, D)`` in q's dtype, laid out in memory like ``q``, ``lse (B, H, Sq)`` fp32.
    Head dims without a compiled kernel are zero-padded to the next one (the caller checked that
    one exists)."""
    batch, seqlen_q, n_heads, head_dim = q.shape
    seqlen_k, n_kv_heads = k.shape[1], k.shape[2]
    kernel_dim = kernel_head_dim(ext, head_dim)
    layout = q  # the output follows the caller's query layout, not the padded copy's
    if kernel_dim != head_dim:  # zero columns change no score and give output columns to drop
        q, k, v = (F.pad(t, (0, kernel_dim - head_dim)) for t in (q, k, v))
    q, k, v = (aligned(t) for t in (q, k, v))
    out = empty_in_layout_of(layout, (batch, seqlen_q, n_heads, kernel_dim), q.dtype)
    lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
    ptrs = [t.data_ptr() for t in (q, k, v, out, lse)]
    ptrs.append(0 if spec.alibi_slopes is None else spec.alibi_slopes.data_ptr())
    strides = [*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *lse.stride()[:2]]
    sizes = [batch, n_heads, n_kv_heads, seqlen_q, seqlen_k, kernel_dim]
    args = (ptrs, strides, sizes, DTYPE_CODES[q.dtype], float(spec.softmax_scale), float(spec.softcap),
            spec.diagonal_offset(seqlen_q, seqlen_k), *spec.window_bounds(seqlen_q, seqlen_k))
    ext.launch("forward", q, args)
    if kernel_dim != head_dim:
        out = in_layout_of(layout, out[..., :head_dim])
    return out, lse
