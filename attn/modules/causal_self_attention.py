"""``attn.CausalSelfAttention``: GPT-style self-attention with prefill + incremental decode."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from attn import _validation as V
from attn.interface import flash_attn_func


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with grouped-query heads and an optional KV cache.

    ``x (B, L, embed_dim) -> (B, L, embed_dim)``. One fused projection produces ``num_heads``
    query heads and ``num_kv_heads`` (default ``num_heads``; fewer is GQA, 1 is MQA) key/value
    heads of ``embed_dim // num_heads`` dims, then an output projection.

    * ``cache=None``: the causal forward kernel over ``x`` (training, scoring).
    * ``cache`` an :class:`attn.KVCache` whose layer ``layer_idx`` is empty: prefill; the causal
      forward kernel over ``x``, and its keys/values are appended to the cache.
    * otherwise: incremental decode; the new keys/values are appended and the new queries attend
      to the whole sequence with the decode kernel (causal, bottom-right aligned).

    ``window_size``/``softcap`` have flash-attn's meaning. ``backend`` pins an attn backend.
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
