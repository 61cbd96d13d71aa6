"""A preallocated, per-layer KV cache for incremental decoding, contiguous or paged.

    cache = attn.KVCache(num_layers=2, batch_size=4, max_seqlen=4096, num_kv_heads=8, head_dim=128,
                         dtype=torch.bfloat16, device="cuda", page_size=16)
    out = cache.attend(layer, q, k, v)   # append k/v (B, L, Hkv, D) to the layer, attend causally
    cache.crop([10, 12, 9, 30])          # drop rejected speculative tokens, per sequence
    cache.reset([2])                     # sequence 2 starts over; its pages return to the pool

Every layer keeps its own lengths (layers append one after another within a step). A paged cache
shares one ``block_table (B, pages_per_seq)`` across layers (vLLM's layout): page ``p`` of a
sequence is the same pool index in every layer, handed out by a :class:`PageAllocator` when a
sequence grows into it and returned when it is cropped away or reset.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch

from attn import _cache_ops
from attn import _validation as V
from attn.kvcache_api import flash_attn_with_kvcache


class PageAllocator:
    """Free list of page indices ``[0, num_pages)``; the lowest free index is handed out first."""

    def __init__(self, num_pages: int):
        self.num_pages = V.check_int("PageAllocator", "num_pages", num_pages, 1)
        self._free = list(range(num_pages - 1, -1, -1))  # a stack: pop() yields 0, 1, 2, ...
        self._in_use: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        V.check_int("PageAllocator.allocate", "n", n, 0)
        if n > len(self._free):
            raise RuntimeError(f"PageAllocator.allocate: {n} pages requested, {len(self._free)} of "
                               f"{self.num_pages} free (crop or reset sequences, or build a larger cache)")
        pages = [self._free.pop() for _ in range(n)]
        self._in_use.update(pages)
        return pages

    def free(self, pages: Sequence[int]) -> None:
        fn = "PageAllocator.free"
        if not isinstance(pages, Sequence):
            V._fail(fn, "pages", "a sequence of page indices", repr(pages), TypeError)
        if len(set(pages)) != len(pages):  # freeing a page twice would hand it out twice
            V._fail(fn, "pages", "distinct page indices", list(pages))
        for page in pages:
            if page not in self._in_use:
                V._fail(fn, "pages", "allocated page indices", f"page {page} is not allocated")
        for page in sorted(pages, reverse=True):
            self._in_use.discard(page)
            self._free.append(page)
        self._free.sort(reverse=True)


class KVCache:
    """Per-layer K/V storage for ``batch_size`` sequences of up to ``max_seqlen`` tokens.

    ``page_size=None``: contiguous ``(B, max_seqlen, Hkv, D)`` per layer. ``page_size=P`` (any
    ``P >= 1``): a pool ``(num_pages, P, Hkv, D)`` per layer, ``num_pages`` defaulting to enough
    for every sequence at ``max_seqlen``; a smaller pool oversubscribes memory and pages are
    handed out as sequences grow.
    """

    def __init__(self, num_layers: int, batch_size: int, max_seqlen: int, num_kv_heads: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float16, device: Union[str, torch.device] = "cpu",
                 page_size: Optional[int] = None, num_pages: Optional[int] = None):
        fn = "KVCache"
        for name, value in (("num_layers", num_layers), ("batch_size", batch_size), ("max_seqlen", max_seqlen),
                            ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            V.check_int(fn, name, value, 1)
        if head_dim > V.MAX_HEAD_DIM:
            V._fail(fn, "head_dim", f"at most {V.MAX_HEAD_DIM} (the kernels' limit)", head_dim)
        if dtype not in V.SUPPORTED_DTYPES:
            V._fail(fn, "dtype", "float16, bfloat16 or float32", dtype, TypeError)
        if page_size is not None and (isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1):
            V._fail(fn, "page_size", "None (contiguous) or an int >= 1", repr(page_size))
        if num_pages is not None and page_size is None:
            V._fail(fn, "num_pages", "None for a contiguous cache (no page_size)", num_pages)
        self.num_layers, self.batch_size, self.max_seqlen = num_layers, batch_size, max_seqlen
        self.page_size = page_size
        self.device = torch.device(device)
        self._host_lengths = [[0] * batch_size for _ in range(num_layers)]
        self._lengths = [torch.zeros(batch_size, dtype=torch.int32, device=self.device) for _ in range(num_layers)]
        if page_size is None:
            shape = (batch_size, max_seqlen, num_kv_heads, head_dim)
            self.block_table = None
            self.allocator = None
        else:
            pages_per_seq = math.ceil(max_seqlen / page_size)
            num_pages = batch_size * pages_per_seq if num_pages is None else num_pages
            V.check_int(fn, "num_pages", num_pages, 1)
            shape = (num_pages, page_size, num_kv_heads, head_dim)
            # Entries past a sequence's pages are never read; 0 keeps them inside the pool.
            self.block_table = torch.zeros(batch_size, pages_per_seq, dtype=torch.int32, device=self.device)
            self.allocator = PageAllocator(num_pages)
            self._pages: list[list[int]] = [[] for _ in range(batch_size)]
        self.k_caches = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self.v_caches = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]

    def seqlens(self, layer: int = 0) -> torch.Tensor:
        """Tokens held per sequence by ``layer``: int32 ``(B,)`` on the cache's device."""
        return self._lengths[self._layer("seqlens", layer)]

    def lengths(self, layer: int = 0) -> list[int]:
        """The same as :meth:`seqlens`, as Python ints (no device transfer)."""
        return list(self._host_lengths[self._layer("lengths", layer)])

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
               **kwargs) -> torch.Tensor:
        """Appends ``k, v (B, L, Hkv, D)`` to ``layer`` and returns the attention of
        ``q (B, L, H, D)`` over each sequence's tokens (causal by default, bottom-right aligned).
        Extra keyword arguments go to :func:`attn.flash_attn_with_kvcache`."""
        layer = self._layer("attend", layer)
        V.check_tensor("KVCache.attend", "k", k, rank=4)
        self._reserve("attend", layer, k.shape[1])
        try:
            out = flash_attn_with_kvcache(q, self.k_caches[layer], self.v_caches[layer], k, v,
                                          cache_seqlens=self._lengths[layer], block_table=self.block_table,
                                          causal=causal, **kwargs)
        except Exception:
            self._release_unused_pages()  # a refused call keeps none of the pages reserved for it
            raise
        self._advance(layer, k.shape[1])
        return out

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Appends ``k, v (B, L, Hkv, D)`` to ``layer`` without attending (e.g. cross-attention
        memory or a prefill computed elsewhere)."""
        fn = "KVCache.append"
        layer = self._layer("append", layer)
        kc = self.k_caches[layer]
        V.check_attention_inputs(fn, k, k, v, names=("k", "k", "v"))
        if k.shape[0] != self.batch_size or tuple(k.shape[2:]) != tuple(kc.shape[2:]):
            V._fail(fn, "k", f"shape (B={self.batch_size}, L, Hkv={kc.shape[2]}, D={kc.shape[3]})", tuple(k.shape))
        if k.device != kc.device:
            V._fail(fn, "k", f"device {kc.device} (the cache's)", k.device)
        if k.dtype != kc.dtype:
            V._fail(fn, "k", f"dtype {kc.dtype} (the cache's)", k.dtype, TypeError)
        self._reserve("append", layer, k.shape[1])
        _cache_ops.append(kc, self.v_caches[layer], k, v, self._lengths[layer], None, self.block_table)
        self._advance(layer, k.shape[1])

    def crop(self, lengths: Union[int, Sequence[int]]) -> None:
        """Keeps the first ``lengths`` tokens (one int for all sequences, or one per sequence) in
        every layer; pages no layer needs any more return to the pool."""
        fn = "KVCache.crop"
        if isinstance(lengths, int) and not isinstance(lengths, bool):
            lengths = [lengths] * self.batch_size
        if not isinstance(lengths, Sequence) or len(lengths) != self.batch_size:
            V._fail(fn, "lengths", f"an int >= 0 or {self.batch_size} of them", repr(lengths),
                    ValueError if isinstance(lengths, Sequence) else TypeError)
        lengths = [V.check_int(fn, "lengths", n, 0) for n in lengths]
        for layer in range(self.num_layers):
            current = self._host_lengths[layer]
            self._host_lengths[layer] = [min(n, c) for n, c in zip(lengths, current)]
            self._lengths[layer].copy_(torch.tensor(self._host_lengths[layer], dtype=torch.int32))
        self._release_unused_pages()

    def reset(self, sequences: Optional[Sequence[int]] = None) -> None:
        """Empties ``sequences`` (all by default) in every layer and frees their pages."""
        fn = "KVCache.reset"
        if sequences is not None and not isinstance(sequences, Sequence):
            V._fail(fn, "sequences", "None or a sequence of sequence indices", repr(sequences), TypeError)
        sequences = range(self.batch_size) if sequences is None else sequences
        # crop takes the minimum with each layer's own length, so the longest keeps every layer whole
        keep = [max(layer[b] for layer in self._host_lengths) for b in range(self.batch_size)]
        for b in sequences:
            keep[V.check_int(fn, "sequences", b, 0, self.batch_size)] = 0
        self.crop(keep)

    @property
    def num_free_pages(self) -> Optional[int]:
        return None if self.allocator is None else self.allocator.num_free

    def _layer(self, fn: str, layer: object) -> int:
        return V.check_int(f"KVCache.{fn}", "layer", layer, 0, self.num_layers)

    def _reserve(self, fn: str, layer: int, new_len: int) -> None:
        """Checks room for ``new_len`` more tokens in ``layer`` and, when paged, allocates the pages
        the longest sequence grows into."""
        needed = [n + new_len for n in self._host_lengths[layer]]
        if max(needed) > self.max_seqlen:
            V._fail(f"KVCache.{fn}", "k", f"at most {self.max_seqlen} tokens per sequence after appending "
                    f"{new_len} (the cache's max_seqlen)", f"lengths {self._host_lengths[layer]}")
        if self.allocator is None:
            return
        missing = [math.ceil(n / self.page_size) - len(pages) for n, pages in zip(needed, self._pages)]
        if sum(m for m in missing if m > 0) > self.allocator.num_free:
            raise RuntimeError(f"KVCache.{fn}: out of pages: {sum(m for m in missing if m > 0)} more needed, "
                               f"{self.allocator.num_free} free (crop or reset sequences, or raise num_pages)")
        changed = False
        for b, m in enumerate(missing):
            if m > 0:
                self._pages[b].extend(self.allocator.allocate(m))
                changed = True
        if changed:
            self._sync_block_table()

    def _advance(self, layer: int, new_len: int) -> None:
        self._host_lengths[layer] = [n + new_len for n in self._host_lengths[layer]]
        self._lengths[layer] += new_len

    def _release_unused_pages(self) -> None:
        if self.allocator is None:
            return
        for b, pages in enumerate(self._pages):
            longest = max(layer[b] for layer in self._host_lengths)
            keep = math.ceil(longest / self.page_size)
            if len(pages) > keep:
                self.allocator.free(pages[keep:])
                del pages[keep:]
        self._sync_block_table()

    def _sync_block_table(self) -> None:
        table = torch.zeros(self.block_table.shape, dtype=torch.int32)
        for b, pages in enumerate(self._pages):
            table[b, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
        self.block_table.copy_(table)
