"""``attn::flash_attn_backward``: gradients of ``attn::flash_attn_forward`` (:mod:`attn.ops.forward`).

``(dout, q, k, v, out, lse, dlse, <options>, backend) -> (dq, dk, dv)``, by the launcher of
``backend`` ("triton"; "cpu" and "reference": the formulas of :mod:`attn.reference.fa2`); ``dlse`` carries the gradient that reaches ``lse``.
"""
from __future__ import annotations

from typing import Optional

import torch

from attn.ops.args import spec_from_args
from attn.ops.launchers import launcher
from attn.ops.vmap import register_batch_folding


@torch.library.custom_op("attn::flash_attn_backward", mutates_args=())
def flash_attn_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, dlse: torch.Tensor, bias: Optional[torch.Tensor], alibi_slopes: Optional[torch.Tensor],
    softmax_scale: float, causal: bool, window_left: int, window_right: int, bottom_right: bool,
    softcap: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. ``q, k, v`` given ``dout (B, Sq, H, D)`` and ``dlse (B, H, Sq)`` ->
    contiguous ``dq, dk, dv`` in the inputs' dtypes."""
    run = launcher("flash_attn_backward", backend)
    return run(dout, q, k, v, out, lse, dlse, spec_from_args(bias, alibi_slopes, softmax_scale, causal, window_left,
                                                             window_right, bottom_right, softcap))


@flash_attn_backward.register_fake
def _flash_attn_backward_fake(dout, q, k, v, out, lse, dlse, bias, alibi_slopes, softmax_scale, causal,
                              window_left, window_right, bottom_right, softcap, backend):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape))


register_batch_folding(flash_attn_backward)
