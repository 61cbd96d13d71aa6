"""Merging two attention results over disjoint key sets (the LSE merge).

If ``(out_a, lse_a)`` is attention of some queries over key set A and ``(out_b, lse_b)`` over a
disjoint key set B, attention over A ∪ B is

    lse = log(exp(lse_a) + exp(lse_b))
    out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b

computed with the running max subtracted so nothing overflows. A side that saw no key
(``lse = -inf``, ``out = 0``) gets weight 0; if neither side saw a key the result is
``out = 0, lse = -inf``. Prefix caching (shared prefix + per-request suffix) and ring attention
are built on this; the Triton split-KV combine kernel uses the same math over many splits.
"""
from __future__ import annotations

import torch

from attn.core import validation as V


def merge_attention_states(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """Merges two attention results over disjoint key sets into the result over their union.

    The log-sum-exp rescaling of FlashAttention-2's online softmax (Dao 2023), as used to combine
    key splits in Flash-Decoding (and by FlashInfer's ``merge_state``, which works in base-2
    LSE; here it is natural log). With ``m = max(lse_a, lse_b)``:
    ``lse = m + log(exp(lse_a - m) + exp(lse_b - m))`` and
    ``out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b``, computed in fp32. A side with
    ``lse = -inf`` (it saw no key) gets weight 0; if both are ``-inf`` the row is ``out = 0,
    lse = -inf``. NaN in an ``lse`` propagates. Computed with plain PyTorch ops on the inputs'
    device (no ``backend`` argument). Used for prefix caching (shared prefix + per-request
    suffix) and ring attention.

    Args:
        out_a: ``(B, S, H, D)`` attention output over key set A, float16, bfloat16 or float32.
        lse_a: float32 ``(B, H, S)`` natural-log log-sum-exp of the scores of ``out_a``'s rows
            (as returned with ``return_attn_probs=True`` / ``return_softmax_lse=True``).
        out_b: ``(B, S, H, D)`` output over key set B: the same shape, dtype and device as
            ``out_a``.
        lse_b: float32 ``(B, H, S)`` log-sum-exp of ``out_b``'s rows, on ``out_a``'s device.

    Returns:
        ``(out, lse)``: ``out (B, S, H, D)`` in ``out_a``'s dtype, ``lse (B, H, S)`` float32
        natural log.

    Raises:
        TypeError: an argument is not a tensor; ``out_a`` is not float16/bfloat16/float32;
            ``out_b``'s dtype differs from ``out_a``'s; ``lse_a`` or ``lse_b`` is not float32.
        ValueError: ``out_a``/``out_b`` not 4-D or ``lse_a``/``lse_b`` not 3-D; ``out_b``'s shape
            differs from ``out_a``'s; an ``lse`` is not ``(B, H, S)``; ``out_b``, ``lse_a`` or
            ``lse_b`` is not on ``out_a``'s device.
    """
    fn = "merge_attention_states"
    for name, t in (("out_a", out_a), ("out_b", out_b)):
        V.check_tensor(fn, name, t, rank=4)
    if out_a.dtype not in V.SUPPORTED_DTYPES:  # the math runs in fp32: wider or integer outputs would lose bits
        V._fail(fn, "out_a", "dtype float16, bfloat16 or float32", out_a.dtype, TypeError)
    for name, t in (("lse_a", lse_a), ("lse_b", lse_b)):
        V.check_tensor(fn, name, t, rank=3)
        if t.dtype != torch.float32:
            V._fail(fn, name, "dtype float32", t.dtype, TypeError)
    if out_b.shape != out_a.shape:
        V._fail(fn, "out_b", f"the shape of 'out_a' {tuple(out_a.shape)}", tuple(out_b.shape))
    if out_b.dtype != out_a.dtype:
        V._fail(fn, "out_b", f"the dtype of 'out_a' ({out_a.dtype})", out_b.dtype, TypeError)
    batch, seqlen, n_heads, _ = out_a.shape
    for name, t in (("lse_a", lse_a), ("lse_b", lse_b)):
        if tuple(t.shape) != (batch, n_heads, seqlen):
            V._fail(fn, name, f"shape (B, H, S) = {(batch, n_heads, seqlen)}", tuple(t.shape))
    for name, t in (("out_b", out_b), ("lse_a", lse_a), ("lse_b", lse_b)):
        if t.device != out_a.device:
            V._fail(fn, name, f"device {out_a.device} (from 'out_a')", t.device)

    m = torch.maximum(lse_a, lse_b)
    m_safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    w_a = torch.exp(lse_a - m_safe)  # (B, H, S); 0 where lse_a = -inf
    w_b = torch.exp(lse_b - m_safe)
    total = w_a + w_b
    seen = total != 0  # a NaN total (NaN lse in) stays NaN instead of reading as 'saw no key'
    lse = torch.where(seen, m_safe + torch.log(torch.where(seen, total, torch.ones_like(total))),
                      torch.full_like(total, float("-inf")))
    inv = torch.where(seen, 1.0 / torch.where(seen, total, torch.ones_like(total)), torch.zeros_like(total))

    def per_row(w: torch.Tensor) -> torch.Tensor:  # (B, H, S) -> (B, S, H, 1)
        return (w * inv).transpose(1, 2).unsqueeze(-1)

    out = out_a.float() * per_row(w_a) + out_b.float() * per_row(w_b)
    return out.to(out_a.dtype), lse
