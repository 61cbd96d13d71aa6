"""Forward launcher of the C++ CPU kernels (``attn.cpu._cpu.forward``)."""
from __future__ import annotations

from typing import Optional

import torch

from attn.core.alloc import empty, empty_in_layout_of
from attn.core.kernel_params import forward_params, set_tensor
from attn.core.spec import AttentionSpec
from attn.cpu import _cpu
from attn.cpu.isa import resolve_isa


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec,
                      isa: Optional[str] = None):
    """``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` (any strides, last dim contiguous)
    -> ``out (B, Sq, H, D)`` in q's dtype, laid out in memory like ``q``, ``lse (B, H, Sq)`` fp32."""
    batch, seqlen_q, n_heads, head_dim = q.shape
    out = empty_in_layout_of(q, (batch, seqlen_q, n_heads, head_dim), q.dtype)
    lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
    p = forward_params(_cpu, q, k, v, out, lse, spec)
    bias = spec.bias
    if bias is not None:
        bias = bias if bias.dtype == torch.float32 else bias.float()
        set_tensor(p, "bias", bias, ("batch", "head", "row", "col"))
    p.num_threads = torch.get_num_threads()
    _cpu.forward(p, resolve_isa(isa))
    return out, lse
