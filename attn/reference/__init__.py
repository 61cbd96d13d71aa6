"""Naive O(N^2) attention: the single oracle for tests and benchmarks.

Every semantic of the public API is spelled out here once, in plain PyTorch, so that
kernels, tests and benchmarks cannot drift apart:

* layout ``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)``; query head ``h`` reads kv head
  ``h // (H // Hkv)`` (GQA/MQA);
* visibility of key ``j`` to query ``i`` in batch ``b`` with key length ``Lk`` (``Sk`` or
  ``seqlens_k[b]``) and diagonal offset ``off = Lk - Sq`` (bottom-right) or ``0`` (top-left):
  ``j < Lk``, causal ``j <= i + off``, window ``i + off - left <= j <= i + off + right``;
* scores ``s = scale * q.k``, then ``softcap * tanh(s / softcap)``, then ALiBi
  ``-slope * |i + off - j|``, then an additive (float) or keep (bool, True = attend) mask;
* rows that see no key output 0 and have ``lse = -inf``;
* a row's output depends only on the keys it sees: a hidden key's value row never reaches it,
  even if it holds NaN or Inf (docs/design.md §3).

``dtype`` picks the compute precision: fp64/fp32 for the oracle, the input dtype for the
"same-precision PyTorch" term of the parity rule (see :mod:`attn.testing`). ALiBi and masks are
added in fp32 (or fp64) whatever ``dtype`` is, as every backend adds them, and the scores stay in
that precision from there on.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch


def diagonal_offsets(seqlen_q: int, key_lengths: torch.Tensor, bottom_right: bool) -> torch.Tensor:
    """Per-batch diagonal offset ``off`` so that query ``i`` is aligned with key ``i + off``."""
    if bottom_right:
        return key_lengths - seqlen_q
    return torch.zeros_like(key_lengths)


def visibility(
    batch: int,
    seqlen_q: int,
    seqlen_k: int,
    *,
    causal: bool = False,
    bottom_right: bool = True,
    window_size: Tuple[int, int] = (-1, -1),
    seqlens_k: Optional[torch.Tensor] = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Bool ``(B, 1, Sq, Sk)``: True where query ``i`` may attend to key ``j``."""
    if seqlens_k is None:
        key_lengths = torch.full((batch,), seqlen_k, dtype=torch.int64, device=device)
    else:
        key_lengths = seqlens_k.to(device=device, dtype=torch.int64).reshape(batch)
    off = diagonal_offsets(seqlen_q, key_lengths, bottom_right).view(batch, 1, 1, 1)
    i = torch.arange(seqlen_q, device=device).view(1, 1, seqlen_q, 1)
    j = torch.arange(seqlen_k, device=device).view(1, 1, 1, seqlen_k)
    keep = j < key_lengths.view(batch, 1, 1, 1)
    left, right = window_size
    if causal:
        right = 0
    if right >= 0:
        keep = keep & (j <= i + off + right)
    if left >= 0:
        keep = keep & (j >= i + off - left)
    return keep


def alibi_bias(
    alibi_slopes: torch.Tensor,
    batch: int,
    n_heads: int,
    seqlen_q: int,
    seqlen_k: int,
    *,
    bottom_right: bool = True,
    seqlens_k: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """ALiBi bias ``(B, H, Sq, Sk)``: ``-slope * |i + off - j|`` (flash-attn's convention)."""
    device = alibi_slopes.device
    if seqlens_k is None:
        key_lengths = torch.full((batch,), seqlen_k, dtype=torch.int64, device=device)
    else:
        key_lengths = seqlens_k.to(device=device, dtype=torch.int64).reshape(batch)
    off = diagonal_offsets(seqlen_q, key_lengths, bottom_right).view(batch, 1, 1, 1)
    i = torch.arange(seqlen_q, device=device).view(1, 1, seqlen_q, 1)
    j = torch.arange(seqlen_k, device=device).view(1, 1, 1, seqlen_k)
    slopes = alibi_slopes.to(dtype).reshape(-1, n_heads).expand(batch, n_heads).reshape(batch, n_heads, 1, 1)
    return -slopes * (i + off - j).abs().to(dtype)


def scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    bottom_right: bool = True,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[torch.Tensor] = None,
    attn_mask: Optional[torch.Tensor] = None,
    seqlens_k: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Attention scores ``(B, H, Sq, Sk)`` in ``dtype`` (at least fp32 once ALiBi or a float mask is
    added): scale, softcap, ALiBi, mask; invisible pairs are -inf. Arguments as in :func:`attention`."""
    batch, seqlen_q, n_heads, head_dim = q.shape
    seqlen_k, n_kv_heads = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    qc = q.to(dtype).transpose(1, 2)  # (B, H, Sq, D)
    kc = k.to(dtype).transpose(1, 2).repeat_interleave(n_heads // n_kv_heads, dim=1)  # (B, H, Sk, D)

    s = torch.matmul(qc, kc.transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    # Biases are added in fp32 even at a 16-bit ``dtype``, which turns the scores fp32 from there
    # on (docs/design.md §3): ALiBi of -300 in fp16 would round away the differences between keys.
    bias_dtype = torch.promote_types(dtype, torch.float32)
    if alibi_slopes is not None:
        s = s + alibi_bias(
            alibi_slopes, batch, n_heads, seqlen_q, seqlen_k,
            bottom_right=bottom_right, seqlens_k=seqlens_k, dtype=bias_dtype,
        )
    keep = visibility(
        batch, seqlen_q, seqlen_k, causal=causal, bottom_right=bottom_right,
        window_size=window_size, seqlens_k=seqlens_k, device=q.device,
    )
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            keep = keep & attn_mask
        else:
            s = s + attn_mask.to(bias_dtype)
    return s.masked_fill(~keep, float("-inf"))


def visible_matmul(probs: torch.Tensor, scores_: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``probs @ v`` over the keys each row sees (``scores_ != -inf``): ``(..., Sq, Sk) @ (..., Sk, D)``.

    IEEE arithmetic as in ``probs @ v``, except that a hidden key adds nothing where ``0 * v``
    would give NaN: the product runs on ``v`` with non-finite values zeroed, and the non-finite
    values of the visible keys are put back from exact 0/1 indicator products (NaN from a NaN,
    from an Inf times ``p = 0`` or from Infs of both signs; otherwise the Inf's sign).
    """
    finite = torch.isfinite(v)
    out = torch.matmul(probs, torch.where(finite, v, torch.zeros_like(v)))
    seen = scores_ != float("-inf")
    ind = probs.dtype if probs.dtype == torch.float64 else torch.float32

    def count(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return torch.matmul(rows.to(ind), cols.to(ind))

    n_nan = count(seen, torch.isnan(v)) + count(seen & (probs == 0), torch.isinf(v))
    n_pos = count(seen & (probs > 0), torch.isposinf(v))
    n_neg = count(seen & (probs > 0), torch.isneginf(v))
    out = torch.where(n_pos > 0, out + float("inf"), out)
    out = torch.where(n_neg > 0, out - float("inf"), out)
    return torch.where(n_nan > 0, torch.full_like(out, float("nan")), out)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    bottom_right: bool = True,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[torch.Tensor] = None,
    attn_mask: Optional[torch.Tensor] = None,
    seqlens_k: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference attention. Returns ``out (B, Sq, H, D)`` in ``dtype`` and fp32 ``lse (B, H, Sq)``.

    ``attn_mask`` is broadcastable to ``(B, H, Sq, Sk)``: bool (True = attend) or additive float.
    ``seqlens_k`` (``(B,)`` integers) limits each batch's keys to its first ``seqlens_k[b]``.
    Differentiable with respect to ``q``, ``k`` and ``v`` through autograd.
    """
    n_heads, n_kv_heads = q.shape[2], k.shape[2]
    scores_ = scores(
        q, k, softmax_scale=softmax_scale, causal=causal, bottom_right=bottom_right, window_size=window_size,
        softcap=softcap, alibi_slopes=alibi_slopes, attn_mask=attn_mask, seqlens_k=seqlens_k, dtype=dtype,
    )
    vc = v.to(dtype).transpose(1, 2).repeat_interleave(n_heads // n_kv_heads, dim=1)  # (B, H, Sk, D)

    lse = torch.logsumexp(scores_.float(), dim=-1)  # (B, H, Sq), -inf where nothing is visible
    row_max = scores_.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    probs = torch.exp(scores_ - row_max)
    denom = probs.sum(dim=-1, keepdim=True)
    probs = probs / torch.where(denom == 0, torch.ones_like(denom), denom)
    out = visible_matmul(probs.to(dtype), scores_, vc)  # (B, H, Sq, D)
    return out.transpose(1, 2), lse
