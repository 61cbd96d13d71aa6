"""``scaled_dot_product_attention``: PyTorch's SDPA signature and semantics on attn's kernels."""
from __future__ import annotations

from typing import Optional

import torch

from attn.api.call import run_forward
from attn.core import validation as V
from attn.core.spec import AttentionSpec


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
    """PyTorch's ``torch.nn.functional.scaled_dot_product_attention`` on attn's kernels.

    Same signature and masking semantics as PyTorch SDPA (``(B, H, S, D)`` layout, ``is_causal``
    **top-left aligned**: query ``i`` sees keys ``j <= i``, whatever ``Sq`` and ``Sk``), computed
    with an fp32 softmax and accumulation, output in the input dtype. Differences from PyTorch:

    * a query row whose keys are all masked outputs 0 instead of NaN (NaN inputs still
      propagate);
    * inputs must be exactly 4-D, and ``value`` must have the same shape as ``key`` (no separate
      value head dim ``Ev``);
    * ``dropout_p > 0`` is refused (no backend implements dropout).

    Differentiable w.r.t. ``query``, ``key``, ``value`` and a float ``attn_mask`` that requires
    grad (its gradient summed over broadcast dims) on the backends with a backward ("triton",
    "cpu", "torch", "reference"). Forward-mode AD (``torch.func.jvp``) runs on "reference" only
    ("auto" picks it). Empty inputs (``B``, ``Sq`` or ``Sk`` = 0) give an empty output, or zeros
    when ``Sk = 0``, as PyTorch does, without a kernel launch.

    Args:
        query: ``(B, H, Sq, D)``, float16, bfloat16 or float32, ``B, Sq >= 0``,
            ``1 <= D <= 256``; any strides except that the last dim must be contiguous.
        key: ``(B, Hkv, Sk, D)``, same dtype and device as ``query``, ``Sk >= 0``. ``Hkv`` must
            equal ``H`` unless ``enable_gqa=True``; last dim contiguous.
        value: ``(B, Hkv, Sk, D)``, the same shape as ``key``, same dtype and device as
            ``query``; last dim contiguous.
        attn_mask: Optional mask broadcastable (PyTorch broadcasting, at most 4 dims) to
            ``(B, H, Sq, Sk)``, on ``query``'s device. ``torch.bool``: True = attend (PyTorch SDPA
            convention, the opposite of ``nn.MultiheadAttention``'s); float16/bfloat16/float32:
            added to the scaled scores (``-inf`` masks). Default None. Must be None when
            ``is_causal=True``.
        dropout_p: Dropout probability in ``[0, 1)``. Default 0.0; any value > 0 raises
            ``NotImplementedError``.
        is_causal: Apply a top-left aligned causal mask (PyTorch SDPA convention; flash-attn's
            :func:`attn.flash_attn_func` aligns bottom-right). Default False.
        scale: Multiplier of ``query @ key^T`` before the softmax. Default ``None`` means
            ``1 / sqrt(D)``. Must be a finite int or float.
        enable_gqa: Allow grouped-/multi-query attention with ``H % Hkv == 0`` (query head
            ``h`` reads kv head ``h // (H // Hkv)``; K/V are never expanded), as PyTorch >= 2.5.
            Default False.
        backend: Keyword-only. ``None`` (default) or ``"auto"``: the block default set by
            :func:`attn.use_backend` if any, else picked per call by
            :mod:`attn.backends.registry` — on CUDA tensors the first of "cuda", "triton",
            "torch", "reference" (on CPU tensors "cpu", "torch", "reference") that is available
            and supports every option of the call ("cuda" has no ``attn_mask`` and no
            backward, so masked or training calls go on to "triton"). Or one of the names
            ``"triton"``, ``"cuda"``, ``"cuda-sim"``, ``"cpu"``, ``"torch"``, ``"reference"``;
            :func:`attn.available_backends` lists which work here.

    Returns:
        ``(B, H, Sq, D)`` tensor in ``query``'s dtype (not necessarily contiguous: most
        backends return a transposed view of a ``(B, Sq, H, D)`` buffer).

    Raises:
        TypeError: ``query``, ``key`` or ``value`` is not a tensor or has a dtype other than
            float16/bfloat16/float32, ``key``/``value`` dtype differs from ``query``'s,
            ``attn_mask`` is not a tensor or has a dtype other than bool or a float dtype, or
            ``scale``/``dropout_p`` has the wrong type.
        ValueError: a wrong shape (not 4-D, mismatched batch or head
            dim, ``key``/``value`` shapes differ, different head counts without
            ``enable_gqa=True``, ``H % Hkv != 0``, ``D`` outside ``1..256``, a non-contiguous
            last dim, ``attn_mask`` with more than 4 dims or not broadcastable); a wrong device
            (``key``, ``value`` or ``attn_mask`` not on ``query``'s device, or a named backend
            that does not run on that device type); a wrong value (non-finite ``scale``,
            ``dropout_p`` outside ``[0, 1)``, ``attn_mask`` given with ``is_causal=True``); or
            ``backend`` is not a known name, "auto" or None.
        NotImplementedError: ``dropout_p > 0``; or the named backend cannot honour an option of
            the call (the message names the backends that can; only "reference" takes
            forward-mode tangents, option "forward_ad"); or under "auto" no backend can
            run the call (the message says why each was skipped).
        RuntimeError: an explicitly requested backend is unavailable here.
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
    out, _ = run_forward(fn, q, k, v, spec, backend)
    return out.transpose(1, 2)
