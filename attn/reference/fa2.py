"""The FlashAttention-2 forward/backward formulas in plain PyTorch, O(N^2) memory.

This is the "reference" implementation behind the custom ops of :mod:`attn.ops.forward`: it computes
exactly what the Triton kernels compute (P recomputed from the saved LSE, ``Delta = rowsum(dO *
O) - dLSE``, ``dS = P * (dP - Delta)``, the softcap derivative, the GQA group sum), in fp32, or in
fp64 for fp64 inputs, so ``torch.autograd.gradcheck`` in fp64 checks these formulas and the
autograd wiring against finite differences. The oracle for parity tests remains
:func:`attn.reference.attention` differentiated by autograd.
"""
from __future__ import annotations

import torch

from attn import reference
from attn.core.alloc import in_layout_of
from attn.core.spec import AttentionSpec


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64 (gradcheck); everything else is computed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scores(q: torch.Tensor, k: torch.Tensor, spec: AttentionSpec, dtype: torch.dtype) -> torch.Tensor:
    return reference.scores(
        q, k, softmax_scale=spec.softmax_scale, causal=spec.causal, bottom_right=spec.bottom_right,
        window_size=spec.window_size, softcap=spec.softcap, alibi_slopes=spec.alibi_slopes,
        attn_mask=spec.bias, dtype=dtype,
    )


def _probs(scores: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """P = exp(S - LSE); rows with LSE = -inf (nothing visible) give 0, as in the kernels."""
    lse = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
    return torch.exp(scores - lse.unsqueeze(-1))


def _heads(t: torch.Tensor, group: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, S, Hx, D) -> (B, Hx * group, S, D) in ``dtype`` (kv heads repeated for GQA)."""
    return t.to(dtype).transpose(1, 2).repeat_interleave(group, dim=1)


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
    """-> ``out (B, Sq, H, D)`` in q's dtype laid out in memory like ``q`` (as the kernels'),
    ``lse (B, H, Sq)`` in the compute dtype."""
    dtype = compute_dtype(q.dtype)
    scores = _scores(q, k, spec, dtype)  # (B, H, Sq, Sk)
    lse = torch.logsumexp(scores, dim=-1)
    vh = _heads(v, q.shape[2] // k.shape[2], dtype)
    out = reference.visible_matmul(_probs(scores, lse), scores, vh)  # (B, H, Sq, D)
    return in_layout_of(q, out.transpose(1, 2).to(q.dtype)), lse


def _score_grads(dout, v, out, lse, dlse, scores: torch.Tensor, dtype: torch.dtype):
    """-> ``p``, ``ds`` (B, H, Sq, Sk): the probabilities and the gradient w.r.t. the final scores
    (after softcap, ALiBi and the additive bias), ``P * (dP - Delta)`` with ``Delta = rowsum(dO * O) - dLSE``."""
    do, o = _heads(dout, 1, dtype), _heads(out, 1, dtype)  # (B, H, Sq, D)
    p = _probs(scores, lse.to(dtype))
    dp = torch.matmul(do, _heads(v, do.shape[1] // v.shape[2], dtype).transpose(-1, -2))  # (B, H, Sq, Sk)
    delta = (do * o).sum(-1) - dlse.to(dtype)  # (B, H, Sq)
    return p, p * (dp - delta.unsqueeze(-1))


def attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
             lse: torch.Tensor, dlse: torch.Tensor, spec: AttentionSpec):
    """-> ``dq, dk, dv`` in the inputs' dtypes (see the module docstring for the formulas)."""
    dtype = compute_dtype(q.dtype)
    batch, seqlen_k, n_kv_heads, head_dim = k.shape
    group = q.shape[2] // n_kv_heads
    qc, kc = _heads(q, 1, dtype), _heads(k, group, dtype)

    p, ds = _score_grads(dout, v, out, lse, dlse, _scores(q, k, spec, dtype), dtype)
    dv = torch.matmul(p.transpose(-1, -2), _heads(dout, 1, dtype))  # (B, H, Sk, D)
    if spec.softcap > 0:
        raw = torch.matmul(qc, kc.transpose(-1, -2)) * spec.softmax_scale
        ds = ds * (1 - torch.tanh(raw / spec.softcap) ** 2)
    dq = torch.matmul(ds, kc) * spec.softmax_scale  # (B, H, Sq, D)
    dk = torch.matmul(ds.transpose(-1, -2), qc) * spec.softmax_scale  # (B, H, Sk, D)

    def per_kv_head(t: torch.Tensor) -> torch.Tensor:  # (B, H, Sk, D) -> (B, Sk, Hkv, D), group sum
        return t.view(batch, n_kv_heads, group, seqlen_k, head_dim).sum(2).transpose(1, 2)

    return (dq.transpose(1, 2).to(q.dtype).contiguous(), per_kv_head(dk).to(k.dtype).contiguous(),
            per_kv_head(dv).to(v.dtype).contiguous())


def bias_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, dlse: torch.Tensor, spec: AttentionSpec):
    """Gradients of the additive terms of the scores -> ``dbias (B, H, Sq, Sk)`` (None without a
    bias) and ``dalibi_slopes (B, H)`` (None without ALiBi), in the compute dtype.

    Both are added after softcap (docs/design.md §3), so both are read off ``dS`` itself: the bias
    gradient is ``dS`` (autograd sums it over the bias's broadcast dims), a slope's is
    ``-sum_ij dS_ij * |i + off - j|``. Materializes ``(B, H, Sq, Sk)`` in the compute dtype.
    """
    dtype = compute_dtype(q.dtype)
    _, ds = _score_grads(dout, v, out, lse, dlse, _scores(q, k, spec, dtype), dtype)
    dbias = ds if spec.bias is not None else None
    dslopes = None
    if spec.alibi_slopes is not None:
        batch, seqlen_q, n_heads, _ = q.shape
        distance = reference.alibi_bias(torch.ones(n_heads, dtype=dtype, device=q.device), batch, n_heads, seqlen_q,
                                        k.shape[1], bottom_right=spec.bottom_right, dtype=dtype)  # -|i + off - j|
        dslopes = (ds * distance).sum((-1, -2))
    return dbias, dslopes
