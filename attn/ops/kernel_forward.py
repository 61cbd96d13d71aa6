"""``attn::kernel_forward``: the forward of the CUDA C++ kernel backends ("cuda", "cuda-sim").

Their launchers hand data pointers to a pybind11 extension, which ``torch.compile`` cannot trace;
behind this op (with a fake implementation for shapes) a compiled graph holds the launch as one
opaque node, without graph breaks. The op has no autograd formula: the CUDA backends have no
backward. (The "cpu" backend, which has one, runs its C++ forward as ``attn::flash_attn_forward``.)
"""
from __future__ import annotations

from typing import Optional

import torch

from attn.core.alloc import empty_in_layout_of
from attn.core.spec import AttentionSpec
from attn.ops.args import spec_args, spec_from_args
from attn.ops.launchers import launcher
from attn.ops.vmap import register_batch_folding


@torch.library.custom_op("attn::kernel_forward", mutates_args=())
def kernel_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                   alibi_slopes: Optional[torch.Tensor], softmax_scale: float, causal: bool, window_left: int,
                   window_right: int, bottom_right: bool, softcap: float,
                   backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` -> ``out (B, Sq, H, D)`` in q's dtype
    laid out in memory like ``q``, ``lse (B, H, Sq)`` fp32."""
    run = launcher("kernel_forward", backend)
    return run(q, k, v, spec_from_args(bias, alibi_slopes, softmax_scale, causal, window_left, window_right,
                                       bottom_right, softcap))


@kernel_forward.register_fake
def _kernel_forward_fake(q, k, v, bias, alibi_slopes, softmax_scale, causal, window_left, window_right, bottom_right,
                         softcap, backend):
    batch, seqlen_q, n_heads, _ = q.shape
    return empty_in_layout_of(q, q.shape, q.dtype), q.new_empty((batch, n_heads, seqlen_q), dtype=torch.float32)


register_batch_folding(kernel_forward)


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec, backend: str):
    """A C++ kernel backend's ``(out, lse)`` through the op."""
    return kernel_forward(q, k, v, **spec_args(spec), backend=backend)
