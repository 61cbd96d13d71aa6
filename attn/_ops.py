"""``torch.library`` custom ops for differentiable attention, and their autograd registration.

Two ops, each with a fake (meta) implementation so ``torch.compile(fullgraph=True)`` traces
through them without graph breaks:

* ``attn::flash_attn_forward(q, k, v, ...) -> (out, lse)``
* ``attn::flash_attn_backward(dout, q, k, v, out, lse, dlse, ...) -> (dq, dk, dv)``

``torch.library.register_autograd`` ties them together (it builds the
``torch.autograd.Function`` that dispatches to the backward op), so the forward op is
differentiable in eager mode, under AOTAutograd and under ``torch.library.opcheck``.

Gradients flow to ``q``, ``k``, ``v`` only (and through ``lse`` when it is used). ``bias`` (the
SDPA ``attn_mask``) and ``alibi_slopes`` are inputs without gradient: a float mask that requires
grad receives none. The backward is deterministic for every option (no atomics), so
``AttentionSpec.deterministic`` needs no argument here.

The ops take plain-typed arguments; :func:`spec_args` and :func:`_spec` convert
:class:`attn._spec.AttentionSpec` to and from them, in this one place. ``backend`` picks the
implementation: ``"triton"`` (the kernels) or ``"reference"`` (the same formulas in PyTorch,
:mod:`attn._reference_backward`, which also accepts fp64 for ``gradcheck``).
"""
from __future__ import annotations

from typing import Optional

import torch

from attn import _reference_backward
from attn._spec import AttentionSpec

BACKENDS = ("triton", "reference")


def spec_args(spec: AttentionSpec) -> dict:
    """The options of ``spec`` as the ops' keyword arguments."""
    return dict(
        bias=spec.bias, alibi_slopes=spec.alibi_slopes, softmax_scale=spec.softmax_scale, causal=spec.causal,
        window_left=spec.window_left, window_right=spec.window_right, bottom_right=spec.bottom_right,
        softcap=spec.softcap,
    )


def _spec(bias, alibi_slopes, softmax_scale, causal, window_left, window_right, bottom_right, softcap) -> AttentionSpec:
    return AttentionSpec(
        softmax_scale=softmax_scale, causal=causal, window_left=window_left, window_right=window_right,
        bottom_right=bottom_right, softcap=softcap, alibi_slopes=alibi_slopes, bias=bias,
    )


def _check_backend(fn: str, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"{fn}: argument 'backend' expected one of {BACKENDS}, got {backend!r}")


@torch.library.custom_op("attn::flash_attn_forward", mutates_args=())
def flash_attn_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
    alibi_slopes: Optional[torch.Tensor], softmax_scale: float, causal: bool, window_left: int,
    window_right: int, bottom_right: bool, softcap: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` -> ``out (B, Sq, H, D)`` contiguous in q's
    dtype, ``lse (B, H, Sq)`` natural log, fp32 (fp64 for fp64 inputs)."""
    _check_backend("attn::flash_attn_forward", backend)
    spec = _spec(bias, alibi_slopes, softmax_scale, causal, window_left, window_right, bottom_right, softcap)
    if backend == "triton":
        from attn.triton.fwd import attention_forward

        return attention_forward(q, k, v, spec)
    return _reference_backward.forward(q, k, v, spec)


@flash_attn_forward.register_fake
def _flash_attn_forward_fake(q, k, v, bias, alibi_slopes, softmax_scale, causal, window_left, window_right,
                             bottom_right, softcap, backend):
    batch, seqlen_q, n_heads, head_dim = q.shape
    out = q.new_empty((batch, seqlen_q, n_heads, head_dim))
    lse = q.new_empty((batch, n_heads, seqlen_q), dtype=_reference_backward.compute_dtype(q.dtype))
    return out, lse


@torch.library.custom_op("attn::flash_attn_backward", mutates_args=())
def flash_attn_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, dlse: torch.Tensor, bias: Optional[torch.Tensor], alibi_slopes: Optional[torch.Tensor],
    softmax_scale: float, causal: bool, window_left: int, window_right: int, bottom_right: bool,
    softcap: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. ``q, k, v`` given ``dout`` and ``dlse`` -> contiguous ``dq, dk, dv``."""
    _check_backend("attn::flash_attn_backward", backend)
    spec = _spec(bias, alibi_slopes, softmax_scale, causal, window_left, window_right, bottom_right, softcap)
    if backend == "triton":
        from attn.triton.bwd import attention_backward

        return attention_backward(dout, q, k, v, out, lse, dlse, spec)
    return _reference_backward.backward(dout, q, k, v, out, lse, dlse, spec)


@flash_attn_backward.register_fake
def _flash_attn_backward_fake(dout, q, k, v, out, lse, dlse, bias, alibi_slopes, softmax_scale, causal,
                              window_left, window_right, bottom_right, softcap, backend):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape))


_OPTIONS = ("softmax_scale", "causal", "window_left", "window_right", "bottom_right", "softcap", "backend")


def _setup_context(ctx, inputs, output):
    q, k, v, bias, alibi_slopes, *options = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, bias, alibi_slopes)
    ctx.options = options


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, bias, alibi_slopes = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    if dlse is None:
        dlse = torch.zeros_like(lse)
    dq, dk, dv = flash_attn_backward(dout, q, k, v, out, lse, dlse, bias, alibi_slopes, *ctx.options)
    return (dq, dk, dv, None, None) + (None,) * len(_OPTIONS)


torch.library.register_autograd("attn::flash_attn_forward", _backward, setup_context=_setup_context)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec, backend: str):
    """Differentiable ``(out, lse)`` for ``spec`` through the custom op."""
    return flash_attn_forward(q, k, v, **spec_args(spec), backend=backend)
