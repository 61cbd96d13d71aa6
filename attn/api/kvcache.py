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

from attn.api.decode import flash_attn_with_kvcache
from attn.core import cache_layout
from attn.core import validation as V


class PageAllocator:
    """Free list of the page indices ``[0, num_pages)`` of a paged KV cache's pool.

    The lowest free index is handed out first. :class:`KVCache` uses one to give pages to
    sequences as they grow and take them back when they are cropped or reset (vLLM-style block
    allocation); it can also manage a pool passed to :func:`attn.flash_attn_with_kvcache` as
    ``block_table`` entries directly. Host-side bookkeeping only: it touches no tensor.

    Args:
        num_pages: Size of the pool, an int >= 1.

    Raises:
        TypeError: ``num_pages`` is not an int (bools are refused).
        ValueError: ``num_pages < 1``.
    """

    def __init__(self, num_pages: int):
        self.num_pages = V.check_int("PageAllocator", "num_pages", num_pages, 1)
        self._free = list(range(num_pages - 1, -1, -1))  # a stack: pop() yields 0, 1, 2, ...
        self._in_use: set[int] = set()

    @property
    def num_free(self) -> int:
        """Number of pages not currently allocated."""
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        """Hands out ``n`` free pages, lowest indices first.

        Args:
            n: Number of pages, an int >= 0 (0 returns ``[]``).

        Returns:
            The page indices, a list of ``n`` distinct ints in ``[0, num_pages)``, ascending.

        Raises:
            TypeError: ``n`` is not an int (bools are refused).
            ValueError: ``n < 0``.
            RuntimeError: fewer than ``n`` pages are free; nothing is allocated.
        """
        V.check_int("PageAllocator.allocate", "n", n, 0)
        if n > len(self._free):
            raise RuntimeError(f"PageAllocator.allocate: {n} pages requested, {len(self._free)} of "
                               f"{self.num_pages} free (crop or reset sequences, or build a larger cache)")
        pages = [self._free.pop() for _ in range(n)]
        self._in_use.update(pages)
        return pages

    def free(self, pages: Sequence[int]) -> None:
        """Returns ``pages`` to the pool. All-or-nothing: every index is checked first.

        Args:
            pages: A sequence (list, tuple, range, ...) of distinct, currently allocated page
                indices.

        Raises:
            TypeError: ``pages`` is not a ``collections.abc.Sequence``.
            ValueError: ``pages`` repeats an index, or contains an index that is not allocated
                (never allocated, already freed, or out of range).
        """
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
    """Per-layer K/V storage for ``batch_size`` sequences of up to ``max_seqlen`` tokens each.

    A thin owner of the tensors and lengths that :func:`attn.flash_attn_with_kvcache` takes:
    ``k_caches[layer]``/``v_caches[layer]``, the per-layer lengths and, when paged, the shared
    ``block_table``. Each layer keeps its own lengths (layers append one after another within a
    step); all sequences of a batch append the same number of tokens per call.

    * ``page_size=None``: a contiguous ``(batch_size, max_seqlen, num_kv_heads, head_dim)``
      buffer per layer (flash-attn's contiguous cache).
    * ``page_size=P`` (any ``P >= 1``): a pool ``(num_pages, P, num_kv_heads, head_dim)`` per
      layer and one int32 ``block_table (batch_size, ceil(max_seqlen / P))`` shared by all layers
      (vLLM's PagedAttention layout). Pages come from a :class:`PageAllocator` when a sequence
      grows into them and go back when it is cropped or reset. ``num_pages`` defaults to
      ``batch_size * ceil(max_seqlen / P)`` (every sequence at ``max_seqlen``); a smaller pool
      oversubscribes memory, and an append that needs more pages than are free raises
      ``RuntimeError``.

    Buffers are zero-initialized. Attributes: ``num_layers``, ``batch_size``, ``max_seqlen``,
    ``page_size``, ``device`` (a ``torch.device``), ``k_caches``, ``v_caches`` (lists of one
    tensor per layer), ``block_table`` (None when contiguous) and ``allocator`` (None when
    contiguous).

    Args:
        num_layers: Number of layers, an int >= 1.
        batch_size: Number of sequences ``B``, an int >= 1.
        max_seqlen: Most tokens a sequence can hold, an int >= 1.
        num_kv_heads: Key/value heads ``Hkv``, an int >= 1.
        head_dim: Head dim ``D``, an int in ``1..256``.
        dtype: Keyword-only. torch.float16 (default), torch.bfloat16 or torch.float32.
        device: Keyword-only. Anything ``torch.device`` accepts. Default "cpu".
        page_size: Keyword-only. None (default) for a contiguous cache, else tokens per page,
            an int >= 1.
        num_pages: Keyword-only. Pool size of a paged cache, an int >= 1 (see above). Must be
            None for a contiguous cache.

    Raises:
        TypeError: a size argument is not an int (bools are refused), or ``dtype`` is not one
            of the three supported.
        ValueError: a size argument < 1, ``head_dim > 256``, ``page_size`` not None or an
            int >= 1 (also for a wrong type), or ``num_pages`` given without ``page_size``.
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
        """Tokens held per sequence by ``layer``.

        Args:
            layer: Layer index, an int in ``[0, num_layers)``. Default 0.

        Returns:
            The cache's own int32 ``(B,)`` length tensor on the cache's device, updated in place
            by :meth:`attend`, :meth:`append`, :meth:`crop` and :meth:`reset` (``clone()`` it to
            keep a snapshot). Usable as ``cache_seqlens`` of
            :func:`attn.flash_attn_with_kvcache`.

        Raises:
            TypeError: ``layer`` is not an int.
            ValueError: ``layer`` is out of range.
        """
        return self._lengths[self._layer("seqlens", layer)]

    def lengths(self, layer: int = 0) -> list[int]:
        """The same as :meth:`seqlens`, as a new list of Python ints (no device transfer).

        Raises:
            TypeError: ``layer`` is not an int.
            ValueError: ``layer`` is not in ``[0, num_layers)``.
        """
        return list(self._host_lengths[self._layer("lengths", layer)])

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
               **kwargs) -> torch.Tensor:
        """Appends ``k, v`` to ``layer`` and returns the attention of ``q`` over each sequence's
        tokens (prefill or decode), through :func:`attn.flash_attn_with_kvcache`.

        Pages the append needs are reserved first; if the call then fails, they are released and
        the lengths are not advanced, so the cache's visible contents are unchanged.

        Args:
            layer: Layer index, an int in ``[0, num_layers)``.
            q: ``(B, L, H, D)`` queries (usually the same ``L`` as ``k``), the cache's dtype and
                device, ``H % Hkv == 0``.
            k: ``(B, L, Hkv, D)`` new keys, the cache's dtype and device.
            v: ``(B, L, Hkv, D)`` new values, like ``k``.
            causal: Keyword-only. Causal mask, bottom-right aligned (flash-attn): new query ``i``
                sees the cached tokens and new tokens up to its own. Default True.
            **kwargs: Further keyword arguments of :func:`attn.flash_attn_with_kvcache`
                (``softmax_scale``, ``window_size``, ``softcap``, ``alibi_slopes``,
                ``num_splits``, ``return_softmax_lse``, ``backend``, ...). Not
                ``cache_seqlens`` or ``block_table``, which the cache supplies (``TypeError``).

        Returns:
            ``out (B, L, H, D)`` in the cache's dtype, or ``(out, lse)`` with
            ``return_softmax_lse=True`` (``lse`` float32 ``(B, H, L)``, natural log).

        Raises:
            TypeError: ``layer`` is not an int, ``k`` is not a tensor, or as
                :func:`attn.flash_attn_with_kvcache` (wrong dtypes, ...).
            ValueError: ``layer`` out of range; ``k`` not 4-D; a 4-D ``q`` whose batch size is
                not ``batch_size``; a sequence would exceed ``max_seqlen``; or as
                :func:`attn.flash_attn_with_kvcache` (shapes, devices,
                option values, unknown backend name).
            NotImplementedError: as :func:`attn.flash_attn_with_kvcache` (an option the backend
                cannot honour, inputs that require grad).
            RuntimeError: a paged cache has too few free pages for the append, or the requested
                backend is unavailable.
        """
        layer = self._layer("attend", layer)
        V.check_tensor("KVCache.attend", "k", k, rank=4)
        if isinstance(q, torch.Tensor) and q.dim() == 4 and q.shape[0] != self.batch_size:
            V._fail("KVCache.attend", "q", f"batch size {self.batch_size} (the cache's) in (B, L, H, D)",
                    tuple(q.shape))
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
        """Appends ``k, v`` to ``layer`` without attending (e.g. cross-attention memory or a
        prefill computed elsewhere) and advances the layer's lengths by ``L``.

        Args:
            layer: Layer index, an int in ``[0, num_layers)``.
            k: ``(B, L, Hkv, D)`` keys with ``B = batch_size``, ``L >= 1`` and ``Hkv``, ``D`` the
                cache's; the cache's dtype and device; last dim contiguous.
            v: Values, the same shape, dtype and device as ``k``.

        Raises:
            TypeError: ``layer`` is not an int; ``k``/``v`` is not a tensor, not
                float16/bfloat16/float32, not of the cache's dtype, or ``v``'s dtype differs.
            ValueError: ``layer`` out of range; a wrong shape or device; a sequence would exceed
                ``max_seqlen``.
            RuntimeError: a paged cache has too few free pages.
        """
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
        cache_layout.append(kc, self.v_caches[layer], k, v, self._lengths[layer], None, self.block_table)
        self._advance(layer, k.shape[1])

    def crop(self, lengths: Union[int, Sequence[int]]) -> None:
        """Keeps the first ``lengths`` tokens of each sequence in every layer, e.g. to drop the
        rejected tokens of speculative decoding; pages no layer needs any more return to the
        pool. A length larger than what a layer holds leaves that layer's sequence as is (crop
        never grows a sequence). The data past the new lengths is not erased, only ignored.

        Args:
            lengths: One int >= 0 for all sequences, or a sequence of ``batch_size`` ints >= 0.

        Raises:
            TypeError: ``lengths`` is neither an int nor a ``collections.abc.Sequence``, or an
                entry is not an int.
            ValueError: ``lengths`` has the wrong number of entries, or an entry is negative.
        """
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
        """Empties ``sequences`` in every layer and frees their pages (so a slot can take a new
        request); the other sequences are untouched.

        Args:
            sequences: Indices in ``[0, batch_size)`` (a ``collections.abc.Sequence``), or None
                (default) for all sequences.

        Raises:
            TypeError: ``sequences`` is not None or a sequence, or an index is not an int.
            ValueError: an index is out of range.
        """
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
        """Free pages of the pool of a paged cache; None for a contiguous cache."""
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
