"""``scaled_dot_product_attention``: PyTorch's SDPA signature and semantics on attn's kernels."""
from __future__ import annotations

import math
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

    Same signature and masking semantics as PyTorch SDPA (``(..., H, L, E)`` inputs of any rank
    >= 2 whose batch dims broadcast, ``is_causal`` **top-left aligned**: query ``i`` sees keys
    ``j <= i``, whatever ``Sq`` and ``Sk``), computed with an fp32 softmax and accumulation
    (fp64 for fp64 inputs), output in the input dtype, laid out in memory like PyTorch's (it
    follows ``query``'s layout). Under ``torch.autocast`` floating inputs other than fp64 (and a
    float mask) are first cast to the autocast dtype, as PyTorch does. fp64 inputs, ``Ev != E``
    and head dims above 256 run on "torch" or "reference" (the kernels do not take them).
    Differences from PyTorch (docs/design.md §2):

    * a query row whose keys are all masked outputs 0 instead of NaN (NaN inputs still
      propagate);
    * ``key`` and ``value`` must have the same sequence length;
    * ``dropout_p > 0`` is refused (no backend implements dropout).

    Differentiable w.r.t. ``query``, ``key``, ``value`` and a float ``attn_mask`` that requires
    grad (its gradient summed over broadcast dims) on the backends with a backward ("triton",
    "cpu", "torch", "reference"). Forward-mode AD (``torch.func.jvp``) runs on "reference" only
    ("auto" picks it). Empty inputs (``B``, ``Sq`` or ``Sk`` = 0) give an empty output, or zeros
    when ``Sk = 0``, as PyTorch does, without a kernel launch.

    Args:
        query: ``(..., H, Sq, D)`` (at least 2 dims; ``(Sq, D)`` is one head), float16,
            bfloat16, float32 or float64, ``Sq >= 0``, ``D >= 1``; any strides.
        key: ``(..., Hkv, Sk, D)``, same dtype and device as ``query``, ``Sk >= 0``; batch
            dims broadcastable with ``query``'s. ``Hkv`` must be 1 or ``H`` unless
            ``enable_gqa=True``.
        value: ``(..., Hkv_v, Sk, Ev)``, same dtype and device, same ``Sk`` as ``key``; any
            ``Ev >= 1``.
        attn_mask: Optional mask broadcastable (PyTorch broadcasting, at most as many dims as
            the output's scores) to ``(..., H, Sq, Sk)``, on ``query``'s device. ``torch.bool``: True = attend (PyTorch SDPA
            convention, the opposite of ``nn.MultiheadAttention``'s); a float dtype:
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
        ``(..., H, Sq, Ev)`` tensor (the broadcast batch dims) in ``query``'s dtype (the
        autocast dtype under ``torch.autocast``), laid out like PyTorch's output.

    Raises:
        TypeError: ``query``, ``key`` or ``value`` is not a tensor or has a dtype other than
            float16/bfloat16/float32/float64, ``key``/``value`` dtype differs from ``query``'s,
            ``attn_mask`` is not a tensor or has a dtype other than bool or a float dtype, or
            ``scale``/``dropout_p`` has the wrong type.
        ValueError: a wrong shape (fewer than 2 dims, batch dims that
            do not broadcast, different head counts without ``enable_gqa=True``,
            ``H % Hkv != 0``, mismatched head dim or ``key``/``value`` sequence length,
            ``attn_mask`` with too many dims or not broadcastable); a wrong device
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
        V.check_tensor(fn, name, t)
        if t.dim() < 2:
            raise ValueError(f"{fn}: argument '{name}' expected at least 2 dims (..., L, E), got {t.dim()}-D "
                             f"tensor of shape {tuple(t.shape)}")
    device_type = query.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        # torch.autocast puts SDPA in its lower-precision list: every floating input but fp64
        # (the mask included) is cast first, and the op runs with autocast off.
        dtype = torch.get_autocast_dtype(device_type)
        query, key, value, attn_mask = (
            t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64 else t
            for t in (query, key, value, attn_mask)
        )
        with torch.autocast(device_type, enabled=False):
            return _attention(fn, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, backend)
    return _attention(fn, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, backend)


def _heads(t: torch.Tensor) -> int:
    return t.shape[-3] if t.dim() >= 3 else 1


def _batch_dims(fn: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                enable_gqa: bool) -> tuple[tuple[int, ...], int, int, tuple[int, ...]]:
    """``(lead, H, Hkv, out_batch)``: the broadcast batch dims before the head dim, the query and
    key/value head counts the kernels see, and the output's dims before ``(L, Ev)``."""
    n_heads, n_k_heads, n_v_heads = _heads(query), _heads(key), _heads(value)
    try:
        if enable_gqa and n_heads != n_k_heads:
            if n_heads % n_k_heads or n_heads % n_v_heads:
                raise ValueError(
                    f"{fn}: argument 'key' expected a number of heads dividing the {n_heads} heads of 'query' "
                    f"(enable_gqa=True), got {n_k_heads} (and {n_v_heads} for 'value')"
                )
            lead = torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3])
            out_batch = (*lead, n_heads)
        else:
            out_batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
            lead, n_heads = (out_batch[:-1], out_batch[-1]) if out_batch else ((), 1)
    except RuntimeError:  # broadcast_shapes: the batch dims do not broadcast
        hint = "" if enable_gqa else " (pass enable_gqa=True for grouped-query attention)"
        raise ValueError(
            f"{fn}: argument 'key' expected batch and head dims broadcastable with 'query' {tuple(query.shape[:-2])} "
            f"and 'value' {tuple(value.shape[:-2])}{hint}, got {tuple(key.shape[:-2])}"
        ) from None
    n_kv_heads = n_k_heads if n_k_heads == n_v_heads else n_heads
    return tuple(lead), n_heads, n_kv_heads, tuple(out_batch)


def _kernel_layout(t: torch.Tensor, lead: tuple[int, ...], heads: int) -> torch.Tensor:
    """``(..., h, S, E)`` -> ``(prod(lead), S, heads, E)``: batch dims broadcast and flattened,
    ``h`` broadcast (h = 1) or repeated (GQA with different key and value head counts) to
    ``heads``; a view unless flattening broadcast dims or a strided last dim needs a copy."""
    if t.stride(-1) != 1 and t.shape[-1] > 1:
        t = t.contiguous()
    if 1 < _heads(t) < heads:
        t = t.repeat_interleave(heads // _heads(t), dim=-3)
    t = t.expand(*lead, heads, *t.shape[-2:])
    return t.reshape(math.prod(lead), heads, *t.shape[-2:]).transpose(1, 2)


def _attention(fn, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, backend):
    lead, n_heads, n_kv_heads, out_batch = _batch_dims(fn, query, key, value, enable_gqa)
    q, k, v = _kernel_layout(query, lead, n_heads), _kernel_layout(key, lead, n_kv_heads), \
        _kernel_layout(value, lead, n_kv_heads)
    V.check_attention_inputs(fn, q, k, v, names=("query", "key", "value"), dims="(..., H, S, D)",
                             dtypes=V.SUPPORTED_DTYPES + (torch.float64,), max_head_dim=None, value_head_dim=True)
    if V.check_dropout(fn, "dropout_p", dropout_p) > 0:
        raise NotImplementedError(f"{fn}: option 'dropout_p' > 0 is not supported by any backend yet")
    if is_causal and attn_mask is not None:
        raise ValueError(f"{fn}: argument 'attn_mask' expected None when is_causal=True, got a mask")
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    bias = V.check_attn_mask(fn, attn_mask, (*lead, n_heads, seqlen_q, seqlen_k), q)
    spec = AttentionSpec(
        softmax_scale=V.check_scale(fn, "scale", scale, q.shape[-1]),
        causal=bool(is_causal),
        window_right=0 if is_causal else -1,
        bottom_right=False,
        bias=None if bias is None else bias.reshape(q.shape[0], n_heads, seqlen_q, seqlen_k),
    )
    out, _ = run_forward(fn, q, k, v, spec, backend)
    return out.transpose(1, 2).reshape(*out_batch, seqlen_q, v.shape[-1])
