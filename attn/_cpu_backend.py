"""The "cpu" backend: fused C++ kernels of ``attn._cpu`` (sources in ``csrc/cpu``).

Forward: tiled online-softmax attention, OpenMP over (batch, head, query tile), AVX-512 / AVX2
kernels picked at run time with a portable fallback; fp16/bf16 inputs are computed in fp32.
Decode: split-KV over the key cache with an LSE merge (:func:`decode`).
Backward: autograd recomputes the forward with ``torch.nn.functional.scaled_dot_product_attention``
(or the fp32 oracle when ``softcap`` is used, which SDPA cannot express) and differentiates that:
the C++ forward is the fast path, gradients cost what PyTorch's CPU attention costs.

``ATTN_CPU_ISA`` (``avx512`` | ``avx2`` | ``generic``) forces an instruction set, e.g. to test
the fallbacks on a newer CPU; by default the best one this CPU supports runs. The thread count
is PyTorch's (``torch.get_num_threads()``).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from attn import _cpu, _decode_ops, _kernel_ops, reference
from attn._alloc import empty
from attn._kernel_params import decode_params, forward_params, set_tensor
from attn._spec import AttentionSpec
from attn._torch_backend import TORCH


def supported_isas() -> list[str]:
    """Instruction sets this CPU can run, best first."""
    return list(_cpu.supported_isas())


def _isa(isa: Optional[str]) -> str:
    """The instruction set to run: ``isa``, else ``$ATTN_CPU_ISA``, else "" (the best supported)."""
    if isa is None:
        isa = os.environ.get("ATTN_CPU_ISA", "")
        if isa and isa not in supported_isas():
            raise ValueError(f"cpu backend: environment variable ATTN_CPU_ISA expected one of "
                             f"{supported_isas()} (what this CPU supports), got {isa!r}")
    return isa


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec,
                      isa: Optional[str] = None):
    """``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` (any strides, last dim contiguous)
    -> ``out (B, Sq, H, D)`` contiguous in q's dtype, ``lse (B, H, Sq)`` fp32."""
    batch, seqlen_q, n_heads, head_dim = q.shape
    out = empty((batch, seqlen_q, n_heads, head_dim), q.dtype, q.device)
    lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
    p = forward_params(_cpu, q, k, v, out, lse, spec)
    bias = spec.bias
    if bias is not None:
        bias = bias if bias.dtype == torch.float32 else bias.float()
        set_tensor(p, "bias", bias, ("batch", "head", "row", "col"))
    p.num_threads = torch.get_num_threads()
    _cpu.forward(p, _isa(isa))
    return out, lse


def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqlens_k: torch.Tensor,
           cache_batch_idx: Optional[torch.Tensor], block_table: Optional[torch.Tensor], spec: AttentionSpec,
           num_splits: int = 0, isa: Optional[str] = None):
    """Attention of a few new queries against a KV cache, split over the keys (flash-decoding).

    ``q (B, Sq, H, D)``; ``k_cache, v_cache`` either ``(B_cache, S_cache, Hkv, D)`` (row ``b``, or
    ``cache_batch_idx[b]``) or paged ``(num_blocks, page_size, Hkv, D)`` with ``block_table (B,
    max_blocks)`` int32; ``seqlens_k (B,)`` keys per batch; causal/window alignment is
    bottom-right. ``num_splits`` 0 picks from the work and thread count. Returns ``out (B, Sq, H,
    D)`` in q's dtype and ``lse (B, H, Sq)`` fp32. Inputs are assumed validated by the caller.
    Scratch memory per thread grows with ``Sq * H * D``: meant for decoding a few tokens.
    """
    batch, seqlen_q, n_heads, head_dim = q.shape
    out = empty((batch, seqlen_q, n_heads, head_dim), q.dtype, q.device)
    lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
    seqlens_k = seqlens_k.to(torch.int32).contiguous()
    if block_table is not None:
        block_table = block_table.to(torch.int32)
    if cache_batch_idx is not None:
        cache_batch_idx = cache_batch_idx.to(torch.int32).contiguous()
    p = decode_params(_cpu, q, k_cache, v_cache, out, lse, seqlens_k, cache_batch_idx, block_table, spec)
    p.num_splits = num_splits
    p.num_threads = torch.get_num_threads()
    _cpu.decode(p, _isa(isa))
    return out, lse


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
        out, lse = _kernel_ops.forward(q, k, v, spec, "cpu")
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
        return _kernel_ops.forward(q, k, v, spec, "cpu")

    def decode(self, q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec: AttentionSpec,
               num_splits: int):
        return _decode_ops.decode(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec, num_splits,
                                  "cpu")


CPU = CPUBackend()
