"""``flash_attn_with_kvcache``: incremental decode against a KV cache (flash-attn semantics).

Order of work: validate everything (shapes, dtypes, devices, then index contents with one
device->host transfer) and pick the backend; only then append the new ``k``/``v`` into the
caller's cache; then attend. A refused call leaves the cache untouched.
"""
from __future__ import annotations

from typing import Optional

import torch

from attn import _backends, _cache_ops
from attn import _validation as V
from attn.interface import flash_spec, needs_grad


def flash_attn_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: Optional[torch.Tensor] = None,
    v: Optional[torch.Tensor] = None,
    rotary_cos: Optional[torch.Tensor] = None,
    rotary_sin: Optional[torch.Tensor] = None,
    cache_seqlens=None,
    cache_batch_idx: Optional[torch.Tensor] = None,
    cache_leftpad: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    alibi_slopes: Optional[torch.Tensor] = None,
    num_splits: int = 0,
    return_softmax_lse: bool = False,
    *,
    backend: Optional[str] = None,
):
    """Attention of new queries against a KV cache, appending new keys/values first.

    * ``q (B, Sq, H, D)``; cache contiguous ``k_cache, v_cache (B_cache, S_max, Hkv, D)`` or paged
      ``(num_blocks, page_size, Hkv, D)`` with ``block_table (B, max_blocks)`` int32 (any
      ``page_size >= 1``); ``H % Hkv == 0``.
    * ``cache_seqlens``: int or int32 ``(B,)``, keys already in the cache per sequence (``None``:
      the whole cache). ``cache_batch_idx (B,)`` int32 picks the cache row of each sequence
      (contiguous caches only).
    * ``k, v (B, S_new, Hkv, D)``: written in place at positions ``cache_seqlens[b] + 0..S_new-1``;
      attention then sees ``cache_seqlens[b] + S_new`` keys.
    * ``causal`` / ``window_size`` are aligned bottom-right: query ``i`` sits at key position
      ``i + L_b - Sq`` with ``L_b`` the key count after the append (speculative verification of
      ``Sq`` drafted tokens is a causal call with ``Sq > 1``).
    * ``num_splits``: 0 picks by wave efficiency (shape-dependent only, so deterministic for a
      fixed configuration); 1 never splits (bitwise reproducible); n splits the keys n ways.

    Returns ``out (B, Sq, H, D)``, or ``(out, lse)`` with ``return_softmax_lse`` (``lse`` fp32
    ``(B, H, Sq)``, natural log, ``-inf`` for rows that see no key).
    """
    fn = "flash_attn_with_kvcache"
    for name, value in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin), ("cache_leftpad", cache_leftpad)):
        if value is not None:
            raise NotImplementedError(
                f"{fn}: option '{name}' is not supported by any backend yet; apply rotary embeddings to "
                "q/k before the call and pass left-padded sequences' true lengths in 'cache_seqlens'")
    cache_seqlens, cache_batch_idx, block_table, capacity = V.check_kvcache_inputs(
        fn, q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table)
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 0:
        V._fail(fn, "num_splits", "an int >= 0 (0 = heuristic)", repr(num_splits),
                TypeError if not isinstance(num_splits, int) else ValueError)
    spec = flash_spec(fn, q, softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap,
                      alibi_slopes=alibi_slopes, need_lse=return_softmax_lse)
    options = spec.options_in_use()
    if needs_grad(q, k, v):
        options.append("backward")
    impl = _backends.select(fn, backend, q.device.type, "decode", options)
    new_len = 0 if k is None else k.shape[1]
    if not torch.compiler.is_compiling():  # data-dependent: one device->host transfer
        V.check_kvcache_contents(fn, cache_seqlens, new_len, capacity, k_cache.shape[0], cache_batch_idx,
                                 block_table, k_cache.shape[1])

    if k is not None:
        _cache_ops.append(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table)
    seqlens_k = cache_seqlens + new_len if new_len else cache_seqlens
    out, lse = impl.decode(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec, num_splits)
    return (out, lse) if return_softmax_lse else out
