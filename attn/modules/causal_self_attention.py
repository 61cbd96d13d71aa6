"""``attn.CausalSelfAttention``: GPT-style self-attention with prefill + incremental decode."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from attn.api import flash_attn_func
from attn.core import validation as V


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with grouped-query heads and an optional KV cache.

    ``x (B, L, embed_dim) -> (B, L, embed_dim)``. One fused projection ``qkv_proj`` produces
    ``num_heads`` query heads and ``num_kv_heads`` key/value heads of
    ``head_dim = embed_dim // num_heads`` dims (fewer kv heads is GQA, Ainslie et al. 2023;
    one is MQA, Shazeer 2019), then ``out_proj``. No positional encoding (the module applies
    none: no rotary embeddings, no ALiBi) and no dropout.

    Args:
        embed_dim: Model width ``E``, an int >= 1.
        num_heads: Query heads ``H``, an int >= 1 dividing ``embed_dim``, with
            ``embed_dim // num_heads <= 256``.
        num_kv_heads: Key/value heads ``Hkv``, an int >= 1 dividing ``num_heads``. Default None
            means ``num_heads`` (plain multi-head attention).
        bias: Keyword-only. Biases in both projections. Default True.
        layer_idx: Keyword-only. The layer of an :class:`attn.KVCache` this module reads and
            writes. Default 0. Checked against the cache at the first cached forward.
        window_size: Keyword-only. ``(left, right)`` sliding window with flash-attn's meaning
            (ints >= 0, negative = unbounded; any form :func:`attn.flash_attn_func` takes;
            ``right`` is forced to 0 by causality). Default
            ``(-1, -1)``; Mistral-style sliding window is ``(w, 0)``.
        softcap: Keyword-only. Gemma-2 logit soft-capping ``softcap * tanh(s / softcap)``, a
            finite float >= 0; default 0.0 (off).
        backend: Keyword-only. ``backend=`` for every attention call: None (default; the block
            default of :func:`attn.use_backend`, else "auto") or one of "triton", "cuda",
            "cuda-sim", "cpu", "torch", "reference". Not validated here: an unknown or
            unavailable name raises at the first forward.
        device: Keyword-only. Device of the parameters. Default None.
        dtype: Keyword-only. Dtype of the parameters. Default None.

    Raises:
        TypeError: ``embed_dim``, ``num_heads`` or ``num_kv_heads`` is not an int (bools are
            refused); ``window_size`` is not a pair of ints; ``softcap`` is not a number.
        ValueError: one of them is < 1; ``num_heads`` does not divide ``embed_dim``;
            ``num_kv_heads`` does not divide ``num_heads``; the head dim exceeds 256;
            ``softcap`` is negative or not finite.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: Optional[int] = None,
        *,
        bias: bool = True,
        layer_idx: int = 0,
        window_size: tuple[int, int] = (-1, -1),
        softcap: float = 0.0,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        fn = "CausalSelfAttention"
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
            V.check_int(fn, name, value, 1)
        if embed_dim % num_heads:
            raise ValueError(f"{fn}: argument 'num_heads' expected a divisor of embed_dim={embed_dim}, got {num_heads}")
        if num_heads % num_kv_heads:
            raise ValueError(
                f"{fn}: argument 'num_kv_heads' expected a divisor of num_heads={num_heads}, got {num_kv_heads}"
            )
        if embed_dim // num_heads > V.MAX_HEAD_DIM:
            V._fail(fn, "num_heads", f"a head dim embed_dim // num_heads of at most {V.MAX_HEAD_DIM} (the kernels' "
                    "limit)", f"{embed_dim} // {num_heads} = {embed_dim // num_heads}")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.layer_idx, self.backend = layer_idx, backend
        self.window_size, self.softcap = V.check_window(fn, window_size), V.check_softcap(fn, softcap)
        factory = {"device": device, "dtype": dtype}
        self.qkv_proj = nn.Linear(embed_dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        """Causal self-attention of ``x``, optionally through a KV cache.

        * ``cache=None``: the causal forward kernel (:func:`attn.flash_attn_func`) over ``x``
          (training, scoring). Differentiable on backends with a backward.
        * ``cache`` an :class:`attn.KVCache` whose layer ``layer_idx`` holds no token for any
          sequence: prefill; the causal forward kernel over ``x``, then ``x``'s keys/values are
          appended to the cache (:meth:`attn.KVCache.append`).
        * otherwise: incremental decode (or chunked prefill / speculative verification):
          :meth:`attn.KVCache.attend` appends the new keys/values and the ``L`` new queries
          attend to each whole sequence with the decode kernel (causal, bottom-right aligned as
          in flash-attn). Not differentiable.

        Args:
            x: ``(B, L, embed_dim)`` with ``B, L >= 1``, the dtype (unless autocast) and device
                of the parameters. With a cache, ``B`` is the cache's ``batch_size``.
            cache: Optional :class:`attn.KVCache` built with ``num_kv_heads`` and
                ``head_dim = embed_dim // num_heads``, the parameters' dtype and device.
                Default None.

        Returns:
            ``(B, L, embed_dim)`` tensor in the parameters' (or autocast's) dtype.

        Raises:
            TypeError: ``x`` is not a tensor, or its dtype differs from the parameters' outside
                autocast; or as :func:`attn.flash_attn_func` /
                :meth:`attn.KVCache.attend` (e.g. a cache of another dtype).
            ValueError: ``x`` is not ``(B, L, embed_dim)`` with ``B, L >= 1``; ``x`` is not on
                the parameters' device; ``layer_idx`` is not a layer of ``cache``; the cache
                would exceed ``max_seqlen``; or as :func:`attn.flash_attn_func` /
                :meth:`attn.KVCache.attend` (shape or device mismatches with the cache, an
                unknown ``backend`` name).
            NotImplementedError: the chosen backend cannot honour the call (it names the
                backends that can), or a decode step with inputs that require grad.
            RuntimeError: the module's ``backend`` is unavailable here, or a paged cache is out
                of pages.
        """
        fn = "CausalSelfAttention.forward"
        V.check_tensor(fn, "x", x)
        if x.dim() != 3 or x.shape[-1] != self.embed_dim or x.shape[0] < 1 or x.shape[1] < 1:
            V._fail(fn, "x", f"(B, L, {self.embed_dim}) with B, L >= 1", f"shape {tuple(x.shape)}")
        V.check_module_input(fn, "x", x, self.qkv_proj.weight)
        batch, seqlen, _ = x.shape
        qkv = self.qkv_proj(x).view(batch, seqlen, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        # (B, L, H, D), (B, L, Hkv, D) x2: views into the projection, no copies
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=2)
        options = dict(causal=True, window_size=self.window_size, softcap=self.softcap, backend=self.backend)
        if cache is None or max(cache.lengths(self.layer_idx)) == 0:
            out = flash_attn_func(q, k, v, **options)
            if cache is not None:
                cache.append(self.layer_idx, k, v)
        else:
            out = cache.attend(self.layer_idx, q, k, v, **options)
        return self.out_proj(out.reshape(batch, seqlen, self.embed_dim))
