"""The "cpu" backend: the fused C++ kernels of :mod:`attn.cpu` (sources in ``csrc/cpu``).

Forward and decode run through the ops ``attn::kernel_forward`` and ``attn::flash_attn_decode``
(opaque to ``torch.compile``: a pybind11 launch cannot be traced).
Backward: autograd recomputes the forward with ``torch.nn.functional.scaled_dot_product_attention``
(or the fp32 oracle when ``softcap`` is used, which SDPA cannot express) and differentiates that:
the C++ forward is the fast path, gradients cost what PyTorch's CPU attention costs.
"""
from __future__ import annotations

import torch

from attn import reference
from attn.backends.torch import TORCH
from attn.core.spec import AttentionSpec
from attn.cpu import _cpu  # noqa: F401  (an unbuilt extension makes the backend unavailable, with the reason)
from attn.ops import decode as decode_op
from attn.ops import kernel_forward as kernel_forward_op


def _recompute(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    """The forward in differentiable PyTorch ops: SDPA, or the fp32 oracle for softcap."""
    if spec.softcap > 0:
        out, _ = reference.attention(
            q, k, v, softmax_scale=spec.softmax_scale, causal=spec.causal, bottom_right=spec.bottom_right,
            window_size=spec.window_size, softcap=spec.softcap, alibi_slopes=spec.alibi_slopes,
            attn_mask=spec.bias, dtype=torch.float32,
        )
        return out.to(q.dtype)
    out, _ = TORCH.forward(q, k, v, spec)
    return out


class _CPUAttention(torch.autograd.Function):
    """C++ forward; backward by autograd through :func:`_recompute` (see the module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, spec):
        out, lse = kernel_forward_op.forward(q, k, v, spec, "cpu")
        ctx.save_for_backward(q, k, v)
        ctx.spec = spec
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v = (t.detach().requires_grad_() for t in ctx.saved_tensors)
        with torch.enable_grad():
            out = _recompute(q, k, v, ctx.spec)
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
        return (*grads, None)


class CPUBackend:
    name = "cpu"
    devices = frozenset({"cpu"})
    capabilities = {
        "forward": frozenset({"causal", "window_size", "softcap", "alibi_slopes", "attn_mask", "return_lse",
                              "backward"}),
        "decode": frozenset({"causal", "window_size", "softcap", "alibi_slopes", "return_lse"}),
    }

    def status(self, device_type: str):
        return None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            return _CPUAttention.apply(q, k, v, spec)
        # Through the op: opaque to torch.compile (a pybind11 launch cannot be traced).
        return kernel_forward_op.forward(q, k, v, spec, "cpu")

    def decode(self, q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec: AttentionSpec,
               num_splits: int):
        return decode_op.decode(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec, num_splits,
                                  "cpu")


CPU = CPUBackend()
