"""attn.KVCache and its page allocator: prefill, decode, speculative crop, reset, page reuse."""
import pytest
import torch

import attn
from attn import reference
from attn.testing import assert_parity, random_tensor


class _History:
    """What each (layer, sequence) should hold, kept as plain per-sequence tensors."""

    def __init__(self, num_layers, batch):
        self.k = [[None] * batch for _ in range(num_layers)]
        self.v = [[None] * batch for _ in range(num_layers)]

    def append(self, layer, k, v):
        for b in range(k.shape[0]):
            old_k, old_v = self.k[layer][b], self.v[layer][b]
            self.k[layer][b] = k[b] if old_k is None else torch.cat([old_k, k[b]])
            self.v[layer][b] = v[b] if old_v is None else torch.cat([old_v, v[b]])

    def crop(self, lengths):
        for layer in range(len(self.k)):
            for b, n in enumerate(lengths):
                if self.k[layer][b] is not None:
                    self.k[layer][b], self.v[layer][b] = self.k[layer][b][:n], self.v[layer][b][:n]

    def expected(self, layer, q, dtype):
        lens = [t.shape[0] for t in self.k[layer]]
        shape = (len(lens), max(lens)) + tuple(self.k[layer][0].shape[1:])
        k = random_tensor(shape, q.dtype).to(q.device)  # junk past each length must not matter
        v = random_tensor(shape, q.dtype).to(q.device)
        for b, n in enumerate(lens):
            k[b, :n], v[b, :n] = self.k[layer][b], self.v[layer][b]
        seqlens = torch.tensor(lens)
        ref, _ = reference.attention(q, k, v, causal=True, seqlens_k=seqlens, dtype=torch.float64)
        pt, _ = reference.attention(q, k, v, causal=True, seqlens_k=seqlens, dtype=dtype)
        return ref, pt


@pytest.mark.parametrize("page_size,num_pages", [(None, None), (1, 80), (16, 6)])
def test_prefill_decode_crop_reset(device, page_size, num_pages):
    num_layers, batch, heads, kv_heads, dim, dtype = 2, 3, 4, 2, 32, torch.float16
    cache = attn.KVCache(num_layers, batch, 40, kv_heads, dim, dtype=dtype, device=device, page_size=page_size,
                         num_pages=num_pages)
    hist = _History(num_layers, batch)
    gen = torch.Generator().manual_seed(0)

    def step(n_tokens):
        for layer in range(num_layers):
            q = random_tensor((batch, n_tokens, heads, dim), dtype, generator=gen).to(device)
            k = random_tensor((batch, n_tokens, kv_heads, dim), dtype, generator=gen).to(device)
            v = random_tensor((batch, n_tokens, kv_heads, dim), dtype, generator=gen).to(device)
            out = cache.attend(layer, q, k, v, backend="triton")
            hist.append(layer, k, v)
            ref, pt = hist.expected(layer, q, dtype)
            assert_parity(out, ref, pt, factor=3)

    step(6)  # prefill
    for _ in range(3):  # decode
        step(1)
    assert cache.lengths(0) == cache.lengths(1) == [9, 9, 9]
    assert cache.seqlens(1).tolist() == [9, 9, 9]
    cache.crop([4, 9, 7])  # speculative tokens rejected, a different number per sequence
    hist.crop([4, 9, 7])
    step(3)  # verify 3 drafted tokens at once on ragged lengths
    assert cache.lengths(1) == [7, 12, 10]
    free_before = cache.num_free_pages
    cache.reset([1])
    hist.crop([7, 0, 10])
    if page_size is not None:
        assert cache.num_free_pages == free_before + -(-12 // page_size)
    step(1)
    assert cache.lengths(0) == [8, 1, 11]


def test_overflow_is_refused_and_lengths_kept(device):
    cache = attn.KVCache(1, 2, 8, 1, 16, dtype=torch.float32, device=device, page_size=4)
    k = torch.randn(2, 6, 1, 16, device=device)
    cache.append(0, k, k)
    pool_before = cache.k_caches[0].clone()
    with pytest.raises(ValueError, match=r"KVCache.append: argument 'k' expected at most 8 tokens per sequence"):
        cache.append(0, k[:, :3], k[:, :3])
    assert cache.lengths(0) == [6, 6] and torch.equal(cache.k_caches[0], pool_before)
    # what was appended is where the block table says
    rows = cache.block_table.long()
    logical = cache.k_caches[0][rows].reshape(2, 8, 1, 16)[:, :6]
    assert torch.equal(logical, k)


def test_out_of_pages_is_refused(device):
    cache = attn.KVCache(1, 2, 16, 1, 16, dtype=torch.float16, device=device, page_size=4, num_pages=3)
    k = torch.randn(2, 4, 1, 16, device=device).half()
    cache.append(0, k, k)  # 2 pages
    with pytest.raises(RuntimeError, match="KVCache.append: out of pages: 2 more needed, 1 free"):
        cache.append(0, k, k)
    assert cache.lengths(0) == [4, 4]
    cache.reset([0])
    cache.append(0, k[:, :1], k[:, :1])  # sequence 0 reuses its freed page; sequence 1 takes the last
    assert cache.num_free_pages == 0


def test_page_allocator_free_list():
    alloc = attn.PageAllocator(5)
    a = alloc.allocate(3)
    assert a == [0, 1, 2] and alloc.num_free == 2
    alloc.free([1])
    assert alloc.allocate(1) == [1]  # the lowest free page first
    with pytest.raises(RuntimeError, match="3 pages requested, 2 of 5 free"):
        alloc.allocate(3)
    with pytest.raises(ValueError, match="page 4 is not allocated"):
        alloc.free([4])


def test_bad_construction_is_refused():
    with pytest.raises(ValueError, match="KVCache: argument 'page_size' expected None"):
        attn.KVCache(1, 1, 8, 1, 16, page_size=0)
    with pytest.raises(TypeError, match="KVCache: argument 'dtype'"):
        attn.KVCache(1, 1, 8, 1, 16, dtype=torch.int8)
    with pytest.raises(ValueError, match="KVCache.attend: argument 'layer'"):
        attn.KVCache(1, 1, 8, 1, 16).attend(1, *(torch.randn(1, 1, 1, 16).half(),) * 3)
