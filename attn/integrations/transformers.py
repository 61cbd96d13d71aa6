"""Hugging Face ``transformers`` integration: ``attn_implementation="attn_triton"``.

:func:`register` adds two entries under one name, both through the interfaces' ``register``
class methods (assigning into the mapping only changes a local copy and silently does nothing):

* an attention function in ``transformers.AttentionInterface``;
* a mask function in ``transformers.AttentionMaskInterface``. Without one, transformers treats
  the name as a backend that builds its own masks and hands the attention function
  ``attention_mask=None`` even for padded batches and sliding windows.

The mask function builds PyTorch-SDPA masks (bool, True = attend), and returns ``None`` where
the mask is plain causal, so unpadded prefill and decode run the fused kernels without a mask.
The attention function picks a kernel per call:

* no mask and as many keys as queries (prefill): the causal forward kernel (``flash_attn_func``);
* no mask and one query against a cache (decode): the split-KV decode kernel
  (``flash_attn_with_kvcache``) over the whole cache;
* a mask (padded batch, sliding window past its width, static cache): the masked path
  (:func:`attn.scaled_dot_product_attention` with the bool mask).

Checked with transformers 5.23.0. Names containing "flash" are refused: transformers treats
them as hub kernels to download.
"""
from __future__ import annotations

from typing import Optional

import torch

from attn.api import flash_attn_func, flash_attn_with_kvcache, scaled_dot_product_attention

DEFAULT_NAME = "attn_triton"

# Keyword arguments transformers passes that do not change the attention math here.
_IGNORED_KWARGS = frozenset({"position_ids", "use_cache", "cache_position", "layer_idx"})


def _fail_kwarg(name: str, value) -> None:
    raise NotImplementedError(
        f"attn transformers attention: option '{name}' (got {type(value).__name__}) is not supported; "
        f"use attn_implementation='eager' or 'sdpa' for this model"
    )


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    sliding_window: Optional[int] = None,
    softcap: Optional[float] = None,
    *,
    backend: Optional[str] = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function protocol on attn's kernels.

    ``query (B, H, Lq, D)`` (any strides), ``key, value (B, Hkv, Lk, D)`` already holding the
    cache; ``attention_mask`` from this integration's mask function (``None``, or bool
    ``(B, 1, Lq, Lk)`` True = attend), or a caller's float 4-D additive mask. Returns
    ``(out (B, Lq, H, D), None)``: attention weights are never materialized."""
    for name, val in kwargs.items():
        if name in _IGNORED_KWARGS or val is None or (name == "output_attentions" and not val):
            continue
        _fail_kwarg(name, val)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    seqlen_q, seqlen_k = query.shape[2], key.shape[2]
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (B, L, H, D) views

    if attention_mask is None:
        window = (sliding_window - 1, 0) if causal and sliding_window else (-1, -1)
        options = dict(softmax_scale=scaling, causal=bool(causal), window_size=window, softcap=softcap or 0.0,
                       backend=backend)
        if causal and seqlen_q == 1 < seqlen_k and not dropout:
            return flash_attn_with_kvcache(q, k, v, **options), None
        if causal and 1 < seqlen_q < seqlen_k:
            # Several queries against a cache come without a mask only when the cache was empty
            # (an empty static cache, top-left causal): the keys past Lq are unwritten slots.
            k, v = k[:, :seqlen_q], v[:, :seqlen_q]
        return flash_attn_func(q, k, v, dropout_p=dropout, **options), None

    if softcap:
        _fail_kwarg("softcap", softcap)
    # The mask already encodes causality, padding and the sliding window.
    out = scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1], backend=backend,
    )
    return out.transpose(1, 2), None


def mask_function(*args, **kwargs) -> Optional[torch.Tensor]:
    """transformers' mask-function protocol: SDPA's boolean masks (True = attend), ``None``
    where the pattern is plain causal (see :func:`attention_forward` for how ``None`` is read)."""
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def register(name: str = DEFAULT_NAME, *, backend: Optional[str] = None) -> str:
    """Registers attn as ``attn_implementation=name`` for every transformers model; returns ``name``.

    ``backend`` pins an attn backend (``"triton"``, ``"cuda"``, ...); ``None`` lets attn choose
    per call (:func:`attn.use_backend` still applies). Use it with
    ``AutoModelForCausalLM.from_pretrained(..., attn_implementation=name)`` or
    ``model.set_attn_implementation(name)``.
    """
    fn = "attn.integrations.transformers.register"
    if not isinstance(name, str) or not name:
        raise TypeError(f"{fn}: argument 'name' expected a non-empty str, got {name!r}")
    try:
        from transformers import AttentionInterface, AttentionMaskInterface
    except ImportError as exc:
        raise ImportError(f"{fn}: needs the 'transformers' package ({exc})") from exc
    if "flash" in name.lower():
        raise ValueError(
            f"{fn}: argument 'name' expected a name without 'flash' (transformers loads such names "
            f"as hub kernels), got {name!r}"
        )
    builtin = set(AttentionInterface._global_mapping) | set(AttentionMaskInterface._global_mapping) | {"eager"}
    registered_here = AttentionInterface._global_mapping.get(name)
    if name in builtin and not getattr(registered_here, "_attn_registration", False):
        raise ValueError(f"{fn}: argument 'name' expected a new name, got {name!r}, transformers' own")

    def attention(module, query, key, value, attention_mask, **kwargs):
        return attention_forward(module, query, key, value, attention_mask, backend=backend, **kwargs)

    attention._attn_registration = True
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, mask_function)
    return name
