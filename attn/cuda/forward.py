"""Forward launcher of the CUDA C++ kernels (body of the ``attn::kernel_forward`` op for "cuda" and
"cuda-sim")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attn.core.alloc import empty, empty_in_layout_of, in_layout_of
from attn.core.kernel_params import forward_params
from attn.core.spec import AttentionSpec
from attn.cuda.extension import KernelExtension, aligned, kernel_head_dim


def attention_forward(ext: KernelExtension, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
    """fp16/bf16 ``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` (any strides, last dim contiguous)
    -> ``out (B, Sq, H, D)`` in q's dtype, laid out in memory like ``q``, ``lse (B, H, Sq)`` fp32.
    Head dims without a compiled kernel are zero-padded to the next one (the caller checked that
    one exists)."""
    batch, seqlen_q, n_heads, head_dim = q.shape
    kernel_dim = kernel_head_dim(ext, head_dim)
    layout = q  # the output follows the caller's query layout, not the padded copy's
    if kernel_dim != head_dim:  # zero columns change no score and give output columns to drop
        q, k, v = (F.pad(t, (0, kernel_dim - head_dim)) for t in (q, k, v))
    q, k, v = (aligned(t) for t in (q, k, v))
    out = empty_in_layout_of(layout, (batch, seqlen_q, n_heads, kernel_dim), q.dtype)
    lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
    ext.launch("forward", q, forward_params(ext.module(), q, k, v, out, lse, spec))
    if kernel_dim != head_dim:
        out = in_layout_of(layout, out[..., :head_dim])
    return out, lse
