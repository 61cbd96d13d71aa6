"""``attn::flash_attn_forward``: the differentiable forward, and its autograd registration.

``attn::flash_attn_forward(q, k, v, <options>, backend) -> (out, lse)`` runs the launcher of
``backend`` ("triton": the kernels; "cpu": the C++ forward, differentiated by the FlashAttention-2
formulas; or "reference": the FlashAttention-2 formulas in PyTorch of :mod:`attn.reference.fa2`,
which also accepts fp64 for ``gradcheck``).
``torch.library.register_autograd`` ties it to ``attn::flash_attn_backward``
(:mod:`attn.ops.backward`), so the op is differentiable in eager mode, under AOTAutograd and under
``torch.library.opcheck``.

Gradients flow through ``out`` and ``lse`` to ``q``, ``k``, ``v`` (the backward op), and to
``bias`` (the SDPA ``attn_mask``) and ``alibi_slopes`` when they require grad: both are additive
terms of the scores, so their gradients are read off ``dS`` by
:func:`attn.reference.fa2.bias_backward` in PyTorch, for every backend of the op (it materializes
``(B, H, Sq, Sk)`` fp32, the size of a full mask's own gradient). The backward is deterministic for
every option (no atomics), so ``AttentionSpec.deterministic`` needs no argument here.
"""
from __future__ import annotations

from typing import Optional

import torch

from attn.core.alloc import empty_in_layout_of
from attn.core.spec import AttentionSpec
from attn.ops.args import OPTION_NAMES, spec_args, spec_from_args
from attn.ops.backward import flash_attn_backward
from attn.ops.launchers import launcher
from attn.ops.vmap import register_batch_folding
from attn.reference.fa2 import bias_backward, compute_dtype


@torch.library.custom_op("attn::flash_attn_forward", mutates_args=())
def flash_attn_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
    alibi_slopes: Optional[torch.Tensor], softmax_scale: float, causal: bool, window_left: int,
    window_right: int, bottom_right: bool, softcap: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` -> ``out (B, Sq, H, D)`` contiguous in q's
    dtype, ``lse (B, H, Sq)`` natural log, fp32 (fp64 for fp64 inputs)."""
    run = launcher("flash_attn_forward", backend)
    return run(q, k, v, spec_from_args(bias, alibi_slopes, softmax_scale, causal, window_left, window_right,
                                       bottom_right, softcap))


@flash_attn_forward.register_fake
def _flash_attn_forward_fake(q, k, v, bias, alibi_slopes, softmax_scale, causal, window_left, window_right,
                             bottom_right, softcap, backend):
    batch, seqlen_q, n_heads, head_dim = q.shape
    out = empty_in_layout_of(q, (batch, seqlen_q, n_heads, head_dim), q.dtype)
    lse = q.new_empty((batch, n_heads, seqlen_q), dtype=compute_dtype(q.dtype))
    return out, lse


def _setup_context(ctx, inputs, output):
    q, k, v, bias, alibi_slopes, *options = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, bias, alibi_slopes)
    ctx.options = options


class _FlashAttnBackward(torch.autograd.Function):
    """``attn::flash_attn_backward`` as a Function that ``torch.func`` accepts (see
    :class:`_FlashAttnForward`); differentiating the gradients again raises."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        with torch.no_grad():
            return flash_attn_backward(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("attn::flash_attn_backward: double backward (gradients of attention's gradients) "
                                  "is not supported; use backend='torch' or 'reference'")


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, bias, alibi_slopes = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    if dlse is None:
        dlse = torch.zeros_like(lse)
    args = (dout, q, k, v, out, lse, dlse, bias, alibi_slopes, *ctx.options)
    # Dynamo cannot trace a Function inside a Function's backward; compiled graphs call the op.
    dq, dk, dv = flash_attn_backward(*args) if torch.compiler.is_compiling() else _FlashAttnBackward.apply(*args)
    dbias = dslopes = None
    if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
        spec = spec_from_args(bias, alibi_slopes, *ctx.options[:-1])
        dbias, dslopes = bias_backward(dout, q, k, v, out, lse, dlse, spec)
        dbias = dbias.to(bias.dtype) if ctx.needs_input_grad[3] else None
        dslopes = dslopes.to(alibi_slopes.dtype) if ctx.needs_input_grad[4] else None
    return (dq, dk, dv, dbias, dslopes) + (None,) * (len(OPTION_NAMES) - 1)  # the other options, backend


torch.library.register_autograd("attn::flash_attn_forward", _backward, setup_context=_setup_context)
register_batch_folding(flash_attn_forward)


class _FlashAttnForward(torch.autograd.Function):
    """The op with the same autograd formula, as an ``autograd.Function`` with ``setup_context``:
    the Function that ``register_autograd`` generates has none, and ``torch.func`` transforms
    (grad, vjp, vmap of grad) refuse such Functions. ``vmap`` reaches the ops' batching rule
    (:mod:`attn.ops.vmap`) through ``generate_vmap_rule``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        with torch.no_grad():  # the Function records the graph; the op's own formula must not
            return flash_attn_forward(*args)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec, backend: str):
    """Differentiable ``(out, lse)`` for ``spec`` through the op: in eager mode through the Function
    (autograd and ``torch.func``), while compiling through the op itself, whose registered formula
    AOTAutograd traces (Dynamo cannot trace the Function's context in the backward)."""
    if torch.compiler.is_compiling():
        return flash_attn_forward(q, k, v, **spec_args(spec), backend=backend)
    return _FlashAttnForward.apply(q, k, v, *spec_args(spec).values(), backend)
