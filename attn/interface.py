"""Public attention functions: validation -> AttentionSpec -> backend."""
from __future__ import annotations

from typing import Optional

import torch

from attn import _backends
from attn import _validation as V
from attn._spec import AttentionSpec


def needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def flash_spec(fn: str, q: torch.Tensor, *, softmax_scale, causal, window_size, softcap, alibi_slopes,
               need_lse: bool, deterministic: bool = False) -> AttentionSpec:
    """Validates flash-attn style options (bottom-right causal) into an AttentionSpec."""
    left, right = V.check_window(fn, window_size)
    return AttentionSpec(
        softmax_scale=V.check_scale(fn, "softmax_scale", softmax_scale, q.shape[-1]),
        causal=bool(causal),
        window_left=left,
        window_right=0 if causal else right,
        bottom_right=True,
        softcap=V.check_softcap(fn, softcap),
        alibi_slopes=V.check_alibi(fn, alibi_slopes, q),
        need_lse=bool(need_lse),
        deterministic=bool(deterministic),
    )


def _run_forward(fn: str, q, k, v, spec: AttentionSpec, backend: Optional[str]):
    options = spec.options_in_use()
    if needs_grad(q, k, v):
        options.append("backward")
    impl = _backends.select(fn, backend, q.device.type, "forward", options)
    return impl.forward(q, k, v, spec)


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[torch.Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    *,
    backend: Optional[str] = None,
):
    """Attention with flash-attn 2.x semantics.

    ``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` with ``H % Hkv == 0``; causal masks are aligned
    bottom-right (query ``i`` sees keys ``j <= i + Sk - Sq``), rows that see nothing output 0.
    Returns ``out (B, Sq, H, D)``, or ``(out, lse, None)`` with ``return_attn_probs=True``
    (``lse`` fp32 ``(B, H, Sq)``, natural log).
    Differentiable w.r.t. ``q``, ``k``, ``v`` (through ``out`` and ``lse``); ``alibi_slopes`` gets
    no gradient. The Triton backward uses no atomics: it is deterministic either way.
    """
    fn = "flash_attn_func"
    V.check_attention_inputs(fn, q, k, v)
    if V.check_dropout(fn, "dropout_p", dropout_p) > 0:
        raise NotImplementedError(f"{fn}: option 'dropout_p' > 0 is not supported by any backend yet")
    spec = flash_spec(fn, q, softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap,
                      alibi_slopes=alibi_slopes, need_lse=return_attn_probs, deterministic=deterministic)
    out, lse = _run_forward(fn, q, k, v, spec, backend)
    return (out, lse, None) if return_attn_probs else out


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """PyTorch's ``scaled_dot_product_attention`` semantics on these kernels.

    ``query (B, H, Sq, D)``, ``key, value (B, Hkv, Sk, D)``; ``is_causal`` is aligned top-left;
    ``attn_mask`` is bool (True = attend) or additive float, broadcastable to ``(B, H, Sq, Sk)``.
    Unlike PyTorch's math path, a row whose keys are all masked outputs 0 instead of NaN.
    Differentiable w.r.t. ``query``, ``key``, ``value``; a float ``attn_mask`` gets no gradient.
    """
    fn = "scaled_dot_product_attention"
    for name, t in (("query", query), ("key", key), ("value", value)):
        V.check_tensor(fn, name, t, rank=4)
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    V.check_attention_inputs(fn, q, k, v, names=("query", "key", "value"), dims="(B, H, S, D)")
    if q.shape[2] != k.shape[2] and not enable_gqa:
        raise ValueError(
            f"{fn}: argument 'key' expected {q.shape[2]} heads like 'query' (pass enable_gqa=True "
            f"for grouped-query attention), got {k.shape[2]}"
        )
    if V.check_dropout(fn, "dropout_p", dropout_p) > 0:
        raise NotImplementedError(f"{fn}: option 'dropout_p' > 0 is not supported by any backend yet")
    if is_causal and attn_mask is not None:
        raise ValueError(f"{fn}: argument 'attn_mask' expected None when is_causal=True, got a mask")
    batch, seqlen_q, n_heads, _ = q.shape
    spec = AttentionSpec(
        softmax_scale=V.check_scale(fn, "scale", scale, q.shape[-1]),
        causal=bool(is_causal),
        window_right=0 if is_causal else -1,
        bottom_right=False,
        bias=V.check_attn_mask(fn, attn_mask, (batch, n_heads, seqlen_q, k.shape[1]), q),
    )
    out, _ = _run_forward(fn, q, k, v, spec, backend)
    return out.transpose(1, 2)
