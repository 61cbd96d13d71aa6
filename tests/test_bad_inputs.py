"""Every public function refuses bad input cleanly: one matrix of (function, kind of bad input).

Each row makes one call on fresh inputs and states the exception and the words its message must
hold; the message must start with the function's name (or the public function a method hands
its arguments to) and name the argument. Calls that hold a KV cache or a page pool must leave it
byte-identical when refused. NaN/Inf rows check the documented behaviour instead: no exception,
and NaN exactly where the oracle has NaN.

``APPLICABLE`` declares which kinds apply to which public function or method; the completeness
test checks that it lists the whole public surface and that every declared pair has a row, so a
new function, method or kind cannot go uncovered silently. ``pytest --collect-only`` shows the
matrix as ids ``function-kind[-variant]``.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch
from _decode_cases import make_case
from torch import nn

import attn
from attn import reference
from attn.testing import random_tensor

NAN, INF = float("nan"), float("inf")

KINDS = {
    "wrong_type": "not a tensor / not an int / not a module where one is expected",
    "wrong_dtype": "an unsupported dtype (float64, int32)",
    "mixed_dtypes": "tensors that must share a dtype do not",
    "mixed_devices": "one tensor on another device (meta: there is no GPU here)",
    "wrong_rank": "a tensor with the wrong number of dims",
    "head_dim_mismatch": "head dims (or feature widths) that must agree do not",
    "heads_not_divisible": "H not a multiple of Hkv",
    "head_dim_zero": "head dim 0",
    "head_dim_too_large": "head dim above 256",
    "last_dim_stride": "last-dim stride != 1",
    "empty_batch": "batch size 0",
    "negative_seqlens": "negative cache lengths",
    "oversized_seqlens": "more tokens than the cache holds",
    "block_table_out_of_range": "a page index in use outside the pool",
    "index_int64": "cache_seqlens / cache_batch_idx / block_table as int64",
    "index_float": "cache_seqlens / cache_batch_idx / block_table as float",
    "out_of_range": "an index (layer, sequence, page, cache row) or count out of range",
    "nan_inf": "NaN/Inf in the inputs: no exception, NaN exactly where the oracle has NaN",
    "bad_window": "a malformed window_size",
    "unsupported_option": "an option the chosen backend cannot honour (NotImplementedError naming it)",
    "unknown_backend": "a backend name that does not exist",
}

_TENSOR_KINDS = ["wrong_type", "wrong_dtype", "mixed_dtypes", "mixed_devices", "wrong_rank", "head_dim_mismatch"]
# An empty batch is valid for the attention functions, as in PyTorch (empty output; see
# tests/test_regressions_api.py), so "empty_batch" is not a bad input there.
_ATTENTION_KINDS = _TENSOR_KINDS + ["heads_not_divisible", "head_dim_zero", "head_dim_too_large", "last_dim_stride",
                                    "nan_inf", "unsupported_option", "unknown_backend"]
_INDEX_KINDS = ["negative_seqlens", "oversized_seqlens", "block_table_out_of_range", "index_int64", "index_float",
                "out_of_range"]

# Which kinds apply to which public function or method (the completeness test checks it is all of them).
APPLICABLE = {
    "flash_attn_func": _ATTENTION_KINDS + ["bad_window"],
    # SDPA takes any strides, as torch does (a strided last dim is copied once).
    "scaled_dot_product_attention": [k for k in _ATTENTION_KINDS if k != "last_dim_stride"],
    "flash_attn_with_kvcache": _ATTENTION_KINDS + _INDEX_KINDS + ["bad_window"],
    # Merging is elementwise torch: any strides, and an empty batch merges to an empty result.
    "merge_attention_states": _TENSOR_KINDS + ["nan_inf"],
    "KVCache": ["wrong_type", "wrong_dtype", "head_dim_zero", "head_dim_too_large", "empty_batch"],
    "KVCache.seqlens": ["wrong_type", "out_of_range"],
    "KVCache.lengths": ["wrong_type", "out_of_range"],
    "KVCache.attend": _TENSOR_KINDS + ["heads_not_divisible", "last_dim_stride", "empty_batch", "oversized_seqlens",
                                       "out_of_range", "nan_inf", "bad_window", "unsupported_option",
                                       "unknown_backend"],
    "KVCache.append": _TENSOR_KINDS + ["last_dim_stride", "empty_batch", "oversized_seqlens", "out_of_range"],
    # Lengths past a sequence's end are documented as a no-op (crop keeps min(length, current)).
    "KVCache.crop": ["wrong_type", "negative_seqlens"],
    "KVCache.reset": ["wrong_type", "out_of_range"],
    "PageAllocator": ["wrong_type", "out_of_range"],
    "PageAllocator.allocate": ["wrong_type", "out_of_range"],
    "PageAllocator.free": ["wrong_type", "out_of_range"],
    # PyTorch's constructor validates the rest; an empty batch is valid for PyTorch's module.
    "MultiheadAttention": ["heads_not_divisible"],
    "MultiheadAttention.from_module": ["wrong_type"],
    "MultiheadAttention.forward": _TENSOR_KINDS + ["nan_inf", "unsupported_option"],
    "CausalSelfAttention": ["wrong_type", "heads_not_divisible", "head_dim_too_large", "bad_window"],
    "CausalSelfAttention.forward": _TENSOR_KINDS + ["empty_batch", "nan_inf", "unsupported_option"],
    "use_backend": ["unknown_backend"],
    "available_backends": [],  # takes no arguments
}

# Exported names that are not functions taking input.
NOT_CALLED = {"reference": "the oracle module", "BackendInfo": "the record available_backends returns"}


@dataclass
class Call:
    run: Callable[[], object]
    guarded: Callable[[], tuple] = tuple  # what a refused call must leave byte-identical
    oracle: Optional[Callable[[], object]] = None  # nan_inf rows: the reference result(s)


@dataclass
class Row:
    fn: str
    kind: str
    build: Callable[[], Call]
    exc: Optional[type]  # None: the call must succeed (nan_inf)
    words: tuple = ()
    variant: str = ""
    names: Optional[str] = None  # the function the message names, when ``fn`` hands its arguments on
    id: str = field(init=False)

    def __post_init__(self):
        self.id = "-".join(p for p in (self.fn, self.kind, self.variant) if p)


# ---- inputs ---------------------------------------------------------------------------------------

def _rnd(shape, dtype=torch.float16, seed=0):
    return random_tensor(shape, dtype, generator=torch.Generator().manual_seed(seed))


def _qkv(d=16, h=4, hkv=2, dtype=torch.float16):
    """q (2, 3, h, d), k, v (2, 5, hkv, d)."""
    return _rnd((2, 3, h, d), dtype, 1), _rnd((2, 5, hkv, d), dtype, 2), _rnd((2, 5, hkv, d), dtype, 3)


def _strided(t):
    """The same values with last-dim stride 2."""
    return torch.stack([t, t], -1).flatten(-2)[..., ::2]


def _meta(t):
    return t.to("meta")


def _poison(q, k):
    """NaN in one element of q (batch 0) and +Inf in one of k (batch 1): both give NaN rows."""
    q, k = q.clone(), k.clone()
    q[0, 1, 2, 3] = NAN
    k[1, 2, 0, 5] = INF
    return q, k


def _freeze(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone().contiguous().view(torch.uint8)
    return copy.deepcopy(x)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    return a == b


# ---- flash_attn_func / scaled_dot_product_attention --------------------------------------------

def fa(q=None, k=None, v=None, backend="triton", **kwargs):
    """flash_attn_func on ``_qkv()`` with each tensor passed through its transform."""
    def build():
        tensors = [f(t) if f else t for f, t in zip((q, k, v), _qkv())]
        return Call(lambda: attn.flash_attn_func(*tensors, backend=backend, **kwargs))
    return build


def fa_shape(backend="triton", **shape):
    return lambda: Call(lambda: attn.flash_attn_func(*_qkv(**shape), backend=backend))


def fa_nan(backend):
    def build():
        q, k, v = _qkv()
        q, k = _poison(q, k)
        return Call(lambda: attn.flash_attn_func(q, k, v, causal=True, backend=backend),
                    oracle=lambda: reference.attention(q, k, v, causal=True, dtype=torch.float64)[0])
    return build


def _bhsd(q, k, v):
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def sdpa(query=None, key=None, value=None, backend="torch", **kwargs):
    def build():
        tensors = [f(t) if f else t for f, t in zip((query, key, value), _bhsd(*_qkv()))]
        return Call(lambda: attn.scaled_dot_product_attention(*tensors, enable_gqa=True, backend=backend, **kwargs))
    return build


def sdpa_shape(backend="torch", **shape):
    return lambda: Call(lambda: attn.scaled_dot_product_attention(*_bhsd(*_qkv(**shape)), enable_gqa=True,
                                                                   backend=backend))


def sdpa_nan(backend):
    def build():
        q, k, v = _qkv()
        q, k = _poison(q, k)
        query, key, value = _bhsd(q, k, v)
        return Call(lambda: attn.scaled_dot_product_attention(query, key, value, is_causal=True, enable_gqa=True,
                                                              backend=backend),
                    oracle=lambda: reference.attention(q, k, v, causal=True, bottom_right=False,
                                                       dtype=torch.float64)[0].transpose(1, 2))
    return build


# ---- flash_attn_with_kvcache -------------------------------------------------------------------

def _case(page_size=16, batch_idx=False, head_dim=32):
    """2 sequences holding 38 and 8 keys, 2 new tokens each; capacity 48; H=4, Hkv=2."""
    return make_case(batch=2, seqlen_q=2, n_heads=4, n_kv_heads=2, head_dim=head_dim, seqlens_k=[40, 10],
                     capacity=48, page_size=page_size, append=True, dtype=torch.float16, device="cpu",
                     batch_idx=batch_idx)


def kv(backend="cpu", page_size=16, batch_idx=False, head_dim=32, **overrides):
    """flash_attn_with_kvcache on ``_case()``; an override is a value, or a function of the case."""
    def build():
        c = _case(page_size, batch_idx, head_dim)
        kw = {**c.kwargs(), "q": c.q, "k_cache": c.k_cache, "v_cache": c.v_cache}
        kw.update({name: f(c) if callable(f) else f for name, f in overrides.items()})
        passed = [t for t in kw.values() if isinstance(t, torch.Tensor) and t.device.type == "cpu"]
        return Call(lambda: attn.flash_attn_with_kvcache(**kw, causal=True, backend=backend),
                    guarded=lambda: (c.k_cache, c.v_cache, *passed))
    return build


def _with_head_dim(d):
    """Every tensor of the case rebuilt with head dim ``d``."""
    def override(name):
        return lambda c: _rnd(getattr(c, name).shape[:-1] + (d,))
    return {name: override(attr) for name, attr in
            (("q", "q"), ("k", "k_new"), ("v", "v_new"), ("k_cache", "k_cache"), ("v_cache", "v_cache"))}


def _table(c, page):
    table = c.block_table.clone()
    table[1, 0] = page  # a page sequence 1 uses
    return table


def kv_nan(backend):
    def build():
        c = _case()
        q, k_new = c.q.clone(), c.k_new.clone()
        q[1, 0, 2, 0] = INF
        k_new[0, 1, 0, 3] = NAN  # appended at position 39 of sequence 0: only its last query sees it
        c.k_logical[0, int(c.cache_seqlens[0]) + 1, 0, 3] = NAN
        kw = {**c.kwargs(), "k": k_new}
        return Call(lambda: attn.flash_attn_with_kvcache(q, c.k_cache, c.v_cache, **kw, causal=True,
                                                         backend=backend),
                    oracle=lambda: reference.attention(q, c.k_logical, c.v_logical, causal=True,
                                                       seqlens_k=c.seqlens_k, dtype=torch.float64)[0])
    return build


# ---- merge_attention_states --------------------------------------------------------------------

def _states():
    return _rnd((2, 3, 4, 16), seed=4), _rnd((2, 4, 3), torch.float32, 5), _rnd((2, 3, 4, 16), seed=6), \
        _rnd((2, 4, 3), torch.float32, 7)


def merge(out_a=None, lse_a=None, out_b=None, lse_b=None):
    def build():
        args = [f(t) if f else t for f, t in zip((out_a, lse_a, out_b, lse_b), _states())]
        return Call(lambda: attn.merge_attention_states(*args))
    return build


def _merge_oracle(out_a, lse_a, out_b, lse_b):
    lse = torch.logaddexp(lse_a.double(), lse_b.double())

    def weight(side_lse):  # (B, H, S) -> (B, S, H, 1)
        return torch.exp(side_lse.double() - lse).transpose(1, 2).unsqueeze(-1)

    return out_a.double() * weight(lse_a) + out_b.double() * weight(lse_b), lse


def merge_nan():
    def build():
        out_a, lse_a, out_b, lse_b = _states()
        out_a[0, 1, 2, 3] = NAN  # one output element
        lse_b[1, 0, 2] = NAN  # a whole row
        out_b[0, 2, 1, 4] = INF  # infinite, not NaN
        return Call(lambda: attn.merge_attention_states(out_a, lse_a, out_b, lse_b),
                    oracle=lambda: _merge_oracle(out_a, lse_a, out_b, lse_b))
    return build


# ---- KVCache / PageAllocator -------------------------------------------------------------------

def _cache():
    """2 layers, 2 sequences of up to 12 tokens, Hkv=2, D=16, pages of 4 in a pool of 8; layer 0
    holds 3 tokens, so 2 more need a new page each (a refused call must hand them back)."""
    cache = attn.KVCache(2, 2, 12, 2, 16, dtype=torch.float16, page_size=4, num_pages=8)
    cache.append(0, _rnd((2, 3, 2, 16), seed=8), _rnd((2, 3, 2, 16), seed=9))
    return cache


def _cache_state(cache):
    return (*cache.k_caches, *cache.v_caches, cache.block_table, *(cache.seqlens(i) for i in range(2)),
            [cache.lengths(i) for i in range(2)], cache.num_free_pages)


def _step(n=2, d=16, h=4, dtype=torch.float16):
    """q (2, n, h, d), k, v (2, n, 2, d)."""
    return _rnd((2, n, h, d), dtype, 10), _rnd((2, n, 2, d), dtype, 11), _rnd((2, n, 2, d), dtype, 12)


def cache_call(method, layer=0, q=None, k=None, v=None, step=None, **kwargs):
    """``cache.<method>(layer, [q,] k, v, **kwargs)`` on ``_cache()``, tensors from ``_step(**step)``."""
    def build():
        cache = _cache()
        tensors = [f(t) if f else t for f, t in zip((q, k, v), _step(**(step or {})))]
        if method == "append":
            tensors = tensors[1:]
        return Call(lambda: getattr(cache, method)(layer, *tensors, **kwargs), guarded=lambda: _cache_state(cache))
    return build


def cache_args(method, *args):
    def build():
        cache = _cache()
        return Call(lambda: getattr(cache, method)(*args), guarded=lambda: _cache_state(cache))
    return build


def attend_nan(backend):
    def build():
        cache = _cache()
        k0, v0 = _rnd((2, 3, 2, 16), seed=8), _rnd((2, 3, 2, 16), seed=9)
        q, k, v = _step(4)
        q, k = _poison(q, k)
        keys, values = torch.cat([k0, k], 1), torch.cat([v0, v], 1)
        return Call(lambda: cache.attend(0, q, k, v, backend=backend),
                    oracle=lambda: reference.attention(q, keys, values, causal=True, dtype=torch.float64)[0])
    return build


def construct(cls, *args, **kwargs):
    return lambda: Call(lambda: cls(*args, **kwargs))


def allocator_call(method, *args):
    def build():
        alloc = attn.PageAllocator(6)
        alloc.allocate(3)
        return Call(lambda: getattr(alloc, method)(*args), guarded=lambda: (vars(alloc),))
    return build


# ---- modules -----------------------------------------------------------------------------------

def _mha(backend="cpu"):
    torch.manual_seed(0)
    return attn.MultiheadAttention(32, 4, batch_first=True, backend=backend)


def mha(query=None, key=None, value=None, backend="cpu", **kwargs):
    def build():
        module, x = _mha(backend), _rnd((2, 5, 32), torch.float32, 13)
        tensors = [f(x) if f else x for f in (query, key, value)]
        return Call(lambda: module(*tensors, need_weights=False, **kwargs))
    return build


def mha_nan(backend):
    def build():
        module, x = _mha(None), _rnd((2, 5, 32), torch.float32, 13)
        query, key = x.clone(), x.clone()
        query[0, 1, 3] = NAN
        key[1, 2, 5] = INF

        def run(name):
            with attn.use_backend(name):
                return module(query, key, x, need_weights=False)[0]
        return Call(lambda: run(backend), oracle=lambda: run("reference"))
    return build


def _csa(backend="cpu", **kwargs):
    torch.manual_seed(0)
    return attn.CausalSelfAttention(32, 4, 2, backend=backend, **kwargs)


def csa(x=None, backend="cpu", cache_dtype=None, **kwargs):
    def build():
        module, inp = _csa(backend, **kwargs), _rnd((2, 5, 32), torch.float32, 14)
        inp = x(inp) if x else inp
        cache = attn.KVCache(1, 2, 8, 2, 8, dtype=cache_dtype) if cache_dtype else None
        return Call(lambda: module(inp, cache), guarded=lambda: (cache.k_caches[0], cache.lengths()) if cache else ())
    return build


def csa_nan(backend):
    def build():
        module, x = _csa(None), _rnd((2, 5, 32), torch.float32, 14)
        x[0, 2, 7] = NAN  # token 2 of sequence 0: it and every later token see it

        def run(name):
            with attn.use_backend(name):
                return module(x)
        return Call(lambda: run(backend), oracle=lambda: run("reference"))
    return build


# ---- the matrix --------------------------------------------------------------------------------

F64, I32 = (lambda t: t.double()), (lambda t: t.int())
# Every backend with the option (softcap) or op (decode) that "torch" lacks.
KERNEL_BACKENDS = "backends that support it: ['triton', 'cpu', 'reference', 'cuda', 'cuda-sim']"
NOPE = ("'backend'", "'nope'")

ROWS = [
    # flash_attn_func
    Row("flash_attn_func", "wrong_type", fa(q=lambda t: "q"), TypeError, ("'q'", "torch.Tensor", "str")),
    Row("flash_attn_func", "wrong_dtype", fa(q=F64, k=F64, v=F64), TypeError, ("'q'", "float64")),
    Row("flash_attn_func", "mixed_dtypes", fa(k=lambda t: t.float(), backend="reference"), TypeError,
        ("'k'", "same dtype as 'q'", "float32")),
    Row("flash_attn_func", "mixed_devices", fa(k=_meta, v=_meta, backend="cpu"), ValueError,
        ("'k'", "same device as 'q'", "meta")),
    Row("flash_attn_func", "wrong_rank", fa(q=lambda t: t[0]), ValueError, ("'q'", "4-D", "3-D")),
    Row("flash_attn_func", "head_dim_mismatch", fa(k=lambda t: t[..., :8], v=lambda t: t[..., :8]), ValueError,
        ("'k'", "head dim 16")),
    Row("flash_attn_func", "heads_not_divisible", fa_shape(hkv=3, backend="torch"), ValueError,
        ("'k'", "dividing the 4 heads", "3")),
    Row("flash_attn_func", "head_dim_zero", fa_shape(d=0), ValueError, ("'q'", "1..256", "got 0")),
    Row("flash_attn_func", "head_dim_too_large", fa_shape(d=300, backend="cpu"), ValueError,
        ("'q'", "1..256", "300")),
    Row("flash_attn_func", "last_dim_stride", fa(v=_strided, backend="reference"), ValueError,
        ("'v'", "stride 1", "stride 2")),
    *(Row("flash_attn_func", "nan_inf", fa_nan(b), None, variant=b) for b in ("triton", "cpu", "torch", "reference")),
    Row("flash_attn_func", "bad_window", fa(window_size=(3,)), TypeError, ("'window_size'", "pair of ints")),
    Row("flash_attn_func", "bad_window", fa(window_size=torch.tensor([2.0, 0.0]), backend="cpu"), TypeError,
        ("'window_size'", "1-D integer tensor of 2", "dtype torch.float32"), variant="float_tensor"),
    Row("flash_attn_func", "unsupported_option", fa(softcap=30.0, backend="torch"), NotImplementedError,
        ("'softcap'", "backend 'torch'", KERNEL_BACKENDS)),
    Row("flash_attn_func", "unknown_backend", fa(backend="nope"), ValueError, NOPE),

    # scaled_dot_product_attention: (B, H, S, D)
    Row("scaled_dot_product_attention", "wrong_type", sdpa(query=lambda t: t.tolist()), TypeError,
        ("'query'", "torch.Tensor", "list")),
    Row("scaled_dot_product_attention", "wrong_dtype", sdpa(query=I32, key=I32, value=I32), TypeError,
        ("'query'", "int32")),
    Row("scaled_dot_product_attention", "mixed_dtypes", sdpa(value=lambda t: t.bfloat16(), backend="triton"),
        TypeError, ("'value'", "same dtype as 'query'", "bfloat16")),
    Row("scaled_dot_product_attention", "mixed_devices", sdpa(key=_meta, value=_meta), ValueError,
        ("'key'", "same device as 'query'", "meta")),
    Row("scaled_dot_product_attention", "wrong_rank", sdpa(key=lambda t: t[0, 0, 0], backend="reference"), ValueError,
        ("'key'", "at least 2 dims", "1-D")),
    Row("scaled_dot_product_attention", "head_dim_mismatch", sdpa(key=lambda t: t[..., :8], value=lambda t: t[..., :8]),
        ValueError, ("'key'", "head dim 16")),
    Row("scaled_dot_product_attention", "heads_not_divisible", sdpa_shape(hkv=3, backend="cpu"), ValueError,
        ("'key'", "dividing the 4 heads")),
    Row("scaled_dot_product_attention", "head_dim_zero", sdpa_shape(d=0), ValueError,
        ("'query'", "head dim >= 1", "got 0")),
    Row("scaled_dot_product_attention", "head_dim_too_large", sdpa_shape(d=257, backend="triton"),
        NotImplementedError, ("'head_dim>256'", "backend 'triton'", "['torch', 'reference']")),
    *(Row("scaled_dot_product_attention", "nan_inf", sdpa_nan(b), None, variant=b)
      for b in ("triton", "cpu", "torch", "reference")),
    Row("scaled_dot_product_attention", "unsupported_option",
        sdpa(attn_mask=torch.ones(3, 5, dtype=torch.bool), backend="cuda-sim"), NotImplementedError,
        ("'attn_mask'", "backend 'cuda-sim'", "backends that support it: ['triton', 'cpu', 'torch', 'reference']")),
    Row("scaled_dot_product_attention", "unknown_backend", sdpa(backend="nope"), ValueError, NOPE),

    # flash_attn_with_kvcache: every refused call leaves both caches byte-identical
    Row("flash_attn_with_kvcache", "wrong_type", kv(k_cache=None), TypeError, ("'k_cache'", "torch.Tensor")),
    Row("flash_attn_with_kvcache", "wrong_dtype", kv(q=lambda c: c.q.double()), TypeError, ("'q'", "float64")),
    Row("flash_attn_with_kvcache", "mixed_dtypes", kv(k_cache=lambda c: c.k_cache.float(),
                                                      v_cache=lambda c: c.v_cache.float()), TypeError,
        ("'k_cache'", "same dtype as 'q'", "float32"), variant="cache"),
    Row("flash_attn_with_kvcache", "mixed_dtypes", kv(v=lambda c: c.v_new.bfloat16(), backend="triton"), TypeError,
        ("'v'", "same dtype as 'q'", "bfloat16"), variant="new"),
    Row("flash_attn_with_kvcache", "mixed_devices", kv(k_cache=lambda c: _meta(c.k_cache)), ValueError,
        ("'k_cache'", "same device as 'q'", "meta"), variant="cache"),
    Row("flash_attn_with_kvcache", "mixed_devices", kv(v=lambda c: _meta(c.v_new), backend="reference"), ValueError,
        ("'v'", "same device as 'q'", "meta"), variant="new"),
    Row("flash_attn_with_kvcache", "mixed_devices", kv(cache_seqlens=lambda c: _meta(c.cache_seqlens)), ValueError,
        ("'cache_seqlens'", "device cpu", "meta"), variant="index"),
    Row("flash_attn_with_kvcache", "wrong_rank", kv(k_cache=lambda c: c.k_cache[0], v_cache=lambda c: c.v_cache[0]),
        ValueError, ("'k_cache'", "4-D", "3-D")),
    Row("flash_attn_with_kvcache", "head_dim_mismatch", kv(k_cache=lambda c: c.k_cache[..., :16],
                                                           v_cache=lambda c: c.v_cache[..., :16]), ValueError,
        ("'k_cache'", "head dim 32")),
    Row("flash_attn_with_kvcache", "heads_not_divisible", kv(q=lambda c: c.q[:, :, :3]), ValueError,
        ("'k_cache'", "dividing the 3 heads")),
    Row("flash_attn_with_kvcache", "head_dim_zero", kv(**_with_head_dim(0)), ValueError, ("'q'", "1..256", "got 0")),
    Row("flash_attn_with_kvcache", "head_dim_too_large", kv(backend="triton", **_with_head_dim(320)), ValueError,
        ("'q'", "1..256", "320")),
    Row("flash_attn_with_kvcache", "last_dim_stride", kv(k_cache=lambda c: _strided(c.k_cache)), ValueError,
        ("'k_cache'", "stride 1", "stride 2"), variant="cache"),
    Row("flash_attn_with_kvcache", "last_dim_stride", kv(k=lambda c: _strided(c.k_new), backend="triton"), ValueError,
        ("'k'", "stride 1", "stride 2"), variant="new"),
    Row("flash_attn_with_kvcache", "negative_seqlens", kv(cache_seqlens=torch.tensor([-1, 3], dtype=torch.int32)),
        ValueError, ("'cache_seqlens'", "values >= 0", "[-1, 3]")),
    Row("flash_attn_with_kvcache", "negative_seqlens", kv(cache_seqlens=-1, backend="reference"), ValueError,
        ("'cache_seqlens'", "[0, 48]", "-1"), variant="int"),
    Row("flash_attn_with_kvcache", "oversized_seqlens", kv(cache_seqlens=torch.tensor([47, 0], dtype=torch.int32)),
        ValueError, ("'block_table'", "at least 4 pages of 16 keys", "[49, 2]", "3 pages per sequence")),
    Row("flash_attn_with_kvcache", "oversized_seqlens", kv(page_size=None,
                                                          cache_seqlens=torch.tensor([47, 0], dtype=torch.int32)),
        ValueError, ("'cache_seqlens'", "cache_seqlens + 2 <= 48", "[47, 0]"), variant="contiguous"),
    Row("flash_attn_with_kvcache", "oversized_seqlens", kv(cache_seqlens=2 ** 40, backend="triton"), ValueError,
        ("'cache_seqlens'", "[0, 48]", "'block_table': 3 pages of 16", str(2 ** 40)), variant="int"),
    Row("flash_attn_with_kvcache", "block_table_out_of_range", kv(block_table=lambda c: _table(c, c.k_cache.shape[0])),
        ValueError, ("'block_table'", "page indices in [0, 9)")),
    Row("flash_attn_with_kvcache", "block_table_out_of_range", kv(block_table=lambda c: _table(c, -1),
                                                                  backend="triton"),
        ValueError, ("'block_table'", "page indices in [0, 9)"), variant="negative"),
    Row("flash_attn_with_kvcache", "out_of_range", kv(page_size=None, batch_idx=True,
                                                      cache_batch_idx=torch.tensor([0, 4], dtype=torch.int32)),
        ValueError, ("'cache_batch_idx'", "indices in [0, 4)")),
    # int64 past 2**31 used to be narrowed to int32 and wrap into a valid-looking length / row
    Row("flash_attn_with_kvcache", "index_int64", kv(cache_seqlens=torch.tensor([2 ** 32 + 5, 3])), TypeError,
        ("'cache_seqlens'", "int32", "int64"), variant="cache_seqlens"),
    Row("flash_attn_with_kvcache", "index_int64", kv(page_size=None, batch_idx=True,
                                                     cache_batch_idx=torch.tensor([2 ** 32 + 1, 0])),
        TypeError, ("'cache_batch_idx'", "int32", "int64"), variant="cache_batch_idx"),
    Row("flash_attn_with_kvcache", "index_int64", kv(block_table=lambda c: c.block_table.long(), backend="triton"),
        TypeError, ("'block_table'", "int32", "int64"), variant="block_table"),
    Row("flash_attn_with_kvcache", "index_float", kv(cache_seqlens=torch.tensor([38.0, 8.0])), TypeError,
        ("'cache_seqlens'", "int32", "float32"), variant="cache_seqlens"),
    Row("flash_attn_with_kvcache", "index_float", kv(page_size=None, batch_idx=True,
                                                     cache_batch_idx=lambda c: c.cache_batch_idx.double()),
        TypeError, ("'cache_batch_idx'", "int32", "float64"), variant="cache_batch_idx"),
    Row("flash_attn_with_kvcache", "index_float", kv(block_table=lambda c: c.block_table.half()), TypeError,
        ("'block_table'", "int32", "float16"), variant="block_table"),
    *(Row("flash_attn_with_kvcache", "nan_inf", kv_nan(b), None, variant=b) for b in ("triton", "cpu", "reference")),
    Row("flash_attn_with_kvcache", "bad_window", kv(window_size=(1, 2, 3)), TypeError,
        ("'window_size'", "pair of ints")),
    Row("flash_attn_with_kvcache", "bad_window", kv(window_size=torch.tensor([1, 2, 3]), backend="triton"),
        TypeError, ("'window_size'", "shape (3,)"), variant="tensor_of_3"),
    Row("flash_attn_with_kvcache", "unsupported_option", kv(backend="torch"), NotImplementedError,
        ("'decode'", "backend 'torch'", KERNEL_BACKENDS)),
    Row("flash_attn_with_kvcache", "unsupported_option", kv(rotary_cos=torch.ones(48, 16)), NotImplementedError,
        ("'rotary_cos'", "not supported by any backend"), variant="rotary"),
    Row("flash_attn_with_kvcache", "unknown_backend", kv(backend="nope"), ValueError, NOPE),

    # merge_attention_states
    Row("merge_attention_states", "wrong_type", merge(out_a=lambda t: None), TypeError, ("'out_a'", "torch.Tensor")),
    Row("merge_attention_states", "wrong_dtype", merge(out_a=I32, out_b=I32), TypeError, ("'out_a'", "int32")),
    Row("merge_attention_states", "wrong_dtype", merge(lse_a=lambda t: t.half()), TypeError,
        ("'lse_a'", "float32", "float16"), variant="lse"),
    Row("merge_attention_states", "mixed_dtypes", merge(out_b=lambda t: t.float()), TypeError,
        ("'out_b'", "dtype of 'out_a'", "float32")),
    Row("merge_attention_states", "mixed_devices", merge(lse_b=_meta), ValueError, ("'lse_b'", "device cpu", "meta")),
    Row("merge_attention_states", "wrong_rank", merge(lse_a=lambda t: t[0]), ValueError, ("'lse_a'", "3-D", "2-D")),
    Row("merge_attention_states", "head_dim_mismatch", merge(out_b=lambda t: t[..., :8]), ValueError,
        ("'out_b'", "shape of 'out_a'", "(2, 3, 4, 8)")),
    Row("merge_attention_states", "nan_inf", merge_nan(), None),

    # KVCache(...)
    Row("KVCache", "wrong_type", construct(attn.KVCache, 1, 2, 8, 2, "16"), TypeError, ("'head_dim'", "an int")),
    Row("KVCache", "wrong_dtype", construct(attn.KVCache, 1, 2, 8, 2, 16, dtype=torch.float64), TypeError,
        ("'dtype'", "float64")),
    Row("KVCache", "head_dim_zero", construct(attn.KVCache, 1, 2, 8, 2, 0), ValueError, ("'head_dim'", ">= 1")),
    Row("KVCache", "head_dim_too_large", construct(attn.KVCache, 1, 2, 8, 2, 300), ValueError,
        ("'head_dim'", "at most 256", "300")),
    Row("KVCache", "empty_batch", construct(attn.KVCache, 1, 0, 8, 2, 16), ValueError, ("'batch_size'", ">= 1")),
    Row("KVCache.seqlens", "wrong_type", cache_args("seqlens", "0"), TypeError, ("'layer'", "an int")),
    Row("KVCache.seqlens", "out_of_range", cache_args("seqlens", 2), ValueError, ("'layer'", "[0, 2)")),
    Row("KVCache.lengths", "wrong_type", cache_args("lengths", 0.0), TypeError, ("'layer'", "an int")),
    Row("KVCache.lengths", "out_of_range", cache_args("lengths", -1), ValueError, ("'layer'", "[0, 2)")),

    # KVCache.attend: the cache, its lengths, block table and free pages stay as they were
    Row("KVCache.attend", "wrong_type", cache_call("attend", k=lambda t: "k"), TypeError, ("'k'", "torch.Tensor")),
    Row("KVCache.attend", "wrong_type", cache_call("attend", q=lambda t: None), TypeError, ("'q'", "torch.Tensor"),
        variant="q", names="flash_attn_with_kvcache"),
    Row("KVCache.attend", "wrong_dtype", cache_call("attend", q=F64, k=F64, v=F64), TypeError, ("'q'", "float64"),
        names="flash_attn_with_kvcache"),
    Row("KVCache.attend", "mixed_dtypes", cache_call("attend", k=lambda t: t.float(), v=lambda t: t.float()),
        TypeError, ("'k'", "same dtype as 'q'"), names="flash_attn_with_kvcache"),
    Row("KVCache.attend", "mixed_devices", cache_call("attend", k=_meta, v=_meta), ValueError,
        ("'k'", "same device as 'q'", "meta"), names="flash_attn_with_kvcache"),
    Row("KVCache.attend", "wrong_rank", cache_call("attend", k=lambda t: t[0]), ValueError, ("'k'", "4-D", "3-D")),
    Row("KVCache.attend", "head_dim_mismatch", cache_call("attend", step=dict(d=8)), ValueError,
        ("'k_cache'", "head dim 8"), names="flash_attn_with_kvcache"),
    Row("KVCache.attend", "heads_not_divisible", cache_call("attend", step=dict(h=3)), ValueError,
        ("'k_cache'", "dividing the 3 heads"), names="flash_attn_with_kvcache"),
    Row("KVCache.attend", "last_dim_stride", cache_call("attend", k=_strided), ValueError, ("'k'", "stride 1"),
        names="flash_attn_with_kvcache"),
    Row("KVCache.attend", "empty_batch", cache_call("attend", q=lambda t: t[:0], k=lambda t: t[:0], v=lambda t: t[:0]),
        ValueError, ("'q'", "batch size 2 (the cache's)")),
    Row("KVCache.attend", "oversized_seqlens", cache_call("attend", step=dict(n=10)), ValueError,
        ("'k'", "at most 12 tokens")),
    Row("KVCache.attend", "out_of_range", cache_call("attend", layer=2), ValueError, ("'layer'", "[0, 2)")),
    *(Row("KVCache.attend", "nan_inf", attend_nan(b), None, variant=b) for b in ("triton", "cpu", "reference")),
    Row("KVCache.attend", "bad_window", cache_call("attend", window_size=(0.5, 0)), TypeError, ("'window_size'",),
        names="flash_attn_with_kvcache"),
    Row("KVCache.attend", "unsupported_option", cache_call("attend", backend="torch"), NotImplementedError,
        ("'decode'", "backend 'torch'", KERNEL_BACKENDS), names="flash_attn_with_kvcache"),
    Row("KVCache.attend", "unknown_backend", cache_call("attend", backend="nope"), ValueError, NOPE,
        names="flash_attn_with_kvcache"),

    # KVCache.append
    Row("KVCache.append", "wrong_type", cache_call("append", k=lambda t: "k"), TypeError, ("'k'", "torch.Tensor")),
    Row("KVCache.append", "wrong_dtype", cache_call("append", k=F64, v=F64), TypeError, ("'k'", "float64")),
    Row("KVCache.append", "mixed_dtypes", cache_call("append", k=lambda t: t.float(), v=lambda t: t.float()),
        TypeError, ("'k'", "dtype torch.float16 (the cache's)", "float32")),
    Row("KVCache.append", "mixed_dtypes", cache_call("append", v=lambda t: t.float()), TypeError,
        ("'v'", "same dtype as 'k'"), variant="v"),
    Row("KVCache.append", "mixed_devices", cache_call("append", k=_meta, v=_meta), ValueError,
        ("'k'", "device cpu", "meta")),
    Row("KVCache.append", "wrong_rank", cache_call("append", k=lambda t: t[0], v=lambda t: t[0]), ValueError,
        ("'k'", "4-D")),
    Row("KVCache.append", "head_dim_mismatch", cache_call("append", step=dict(d=8)), ValueError, ("'k'", "D=16")),
    Row("KVCache.append", "last_dim_stride", cache_call("append", k=_strided), ValueError, ("'k'", "stride 1")),
    Row("KVCache.append", "empty_batch", cache_call("append", k=lambda t: t[:0], v=lambda t: t[:0]), ValueError,
        ("'k'", "B=2")),
    Row("KVCache.append", "oversized_seqlens", cache_call("append", step=dict(n=10)), ValueError,
        ("'k'", "at most 12 tokens")),
    Row("KVCache.append", "out_of_range", cache_call("append", layer=5), ValueError, ("'layer'", "[0, 2)")),

    # KVCache.crop / reset
    Row("KVCache.crop", "wrong_type", cache_args("crop", 1.5), TypeError, ("'lengths'", "1.5")),
    Row("KVCache.crop", "wrong_type", cache_args("crop", [1, "2"]), TypeError, ("'lengths'", "an int"),
        variant="entry"),
    Row("KVCache.crop", "negative_seqlens", cache_args("crop", [-1, 0]), ValueError, ("'lengths'", ">= 0", "-1")),
    Row("KVCache.reset", "wrong_type", cache_args("reset", 1), TypeError, ("'sequences'", "sequence")),
    Row("KVCache.reset", "out_of_range", cache_args("reset", [0, 5]), ValueError, ("'sequences'", "[0, 2)", "5")),

    # PageAllocator
    Row("PageAllocator", "wrong_type", construct(attn.PageAllocator, 1.5), TypeError, ("'num_pages'", "an int")),
    Row("PageAllocator", "out_of_range", construct(attn.PageAllocator, -1), ValueError, ("'num_pages'", ">= 1")),
    Row("PageAllocator.allocate", "wrong_type", allocator_call("allocate", 1.5), TypeError, ("'n'", "an int")),
    Row("PageAllocator.allocate", "out_of_range", allocator_call("allocate", -1), ValueError, ("'n'", ">= 0")),
    Row("PageAllocator.free", "wrong_type", allocator_call("free", 1), TypeError, ("'pages'", "sequence")),
    Row("PageAllocator.free", "out_of_range", allocator_call("free", [1, 4]), ValueError,
        ("'pages'", "page 4 is not allocated")),
    # freeing a page twice in one call used to put it on the free list twice
    Row("PageAllocator.free", "out_of_range", allocator_call("free", [1, 1]), ValueError,
        ("'pages'", "distinct", "[1, 1]"), variant="repeated"),

    # MultiheadAttention
    Row("MultiheadAttention", "heads_not_divisible", construct(attn.MultiheadAttention, 10, 3), ValueError,
        ("'num_heads'", "divisor of embed_dim=10", "3")),
    Row("MultiheadAttention.from_module", "wrong_type",
        lambda: Call(lambda: attn.MultiheadAttention.from_module(nn.Linear(2, 2))), TypeError,
        ("'module'", "torch.nn.MultiheadAttention", "Linear")),
    Row("MultiheadAttention.forward", "wrong_type", mha(query=lambda t: "x"), TypeError, ("'query'", "torch.Tensor")),
    Row("MultiheadAttention.forward", "wrong_dtype", mha(query=F64, key=F64, value=F64), TypeError,
        ("'query'", "dtype torch.float32 (the module's parameters)", "float64")),
    Row("MultiheadAttention.forward", "mixed_dtypes", mha(key=lambda t: t.half(), value=lambda t: t.half()),
        TypeError, ("'key'", "dtype torch.float32", "float16")),
    Row("MultiheadAttention.forward", "mixed_devices", mha(key=_meta, value=_meta), ValueError,
        ("'key'", "device cpu", "meta")),
    Row("MultiheadAttention.forward", "wrong_rank", mha(query=lambda t: t[None]), ValueError, ("'query'", "3-D")),
    Row("MultiheadAttention.forward", "head_dim_mismatch", mha(key=lambda t: t[..., :16]), ValueError,
        ("'key'", "last dim 32")),
    *(Row("MultiheadAttention.forward", "nan_inf", mha_nan(b), None, variant=b) for b in ("cpu", "torch")),
    Row("MultiheadAttention.forward", "unsupported_option",
        mha(backend="cuda-sim", key_padding_mask=torch.zeros(2, 5, dtype=torch.bool)), NotImplementedError,
        ("'attn_mask'", "backend 'cuda-sim'"), names="scaled_dot_product_attention"),

    # CausalSelfAttention
    Row("CausalSelfAttention", "wrong_type", construct(attn.CausalSelfAttention, 32, "4"), TypeError,
        ("'num_heads'", "an int")),
    Row("CausalSelfAttention", "heads_not_divisible", construct(attn.CausalSelfAttention, 32, 4, 3), ValueError,
        ("'num_kv_heads'", "divisor of num_heads=4")),
    Row("CausalSelfAttention", "head_dim_too_large", construct(attn.CausalSelfAttention, 600, 2), ValueError,
        ("'num_heads'", "at most 256", "300")),
    Row("CausalSelfAttention", "bad_window", construct(attn.CausalSelfAttention, 32, 4, window_size=5), TypeError,
        ("'window_size'", "pair of ints")),
    Row("CausalSelfAttention", "bad_window", construct(attn.CausalSelfAttention, 32, 4, window_size=(2, 0.5)),
        TypeError, ("'window_size'", "(2, 0.5)"), variant="float"),
    Row("CausalSelfAttention.forward", "wrong_type", csa(x=lambda t: "x"), TypeError, ("'x'", "torch.Tensor")),
    Row("CausalSelfAttention.forward", "wrong_dtype", csa(x=F64), TypeError, ("'x'", "float64")),
    Row("CausalSelfAttention.forward", "mixed_dtypes", csa(cache_dtype=torch.float16), TypeError,
        ("'k'", "dtype torch.float16 (the cache's)", "float32"), names="KVCache.append"),
    Row("CausalSelfAttention.forward", "mixed_devices", csa(x=_meta), ValueError, ("'x'", "device cpu", "meta")),
    Row("CausalSelfAttention.forward", "wrong_rank", csa(x=lambda t: t[0]), ValueError, ("'x'", "(B, L, 32)")),
    Row("CausalSelfAttention.forward", "head_dim_mismatch", csa(x=lambda t: t[..., :16]), ValueError,
        ("'x'", "(B, L, 32)", "(2, 5, 16)")),
    Row("CausalSelfAttention.forward", "empty_batch", csa(x=lambda t: t[:0]), ValueError,
        ("'x'", "B, L >= 1", "(0, 5, 32)")),
    *(Row("CausalSelfAttention.forward", "nan_inf", csa_nan(b), None, variant=b) for b in ("triton", "cpu")),
    Row("CausalSelfAttention.forward", "unsupported_option", csa(backend="torch", softcap=30.0), NotImplementedError,
        ("'softcap'", "backend 'torch'", KERNEL_BACKENDS), names="flash_attn_func"),

    Row("use_backend", "unknown_backend", lambda: Call(lambda: attn.use_backend("nope").__enter__()), ValueError,
        ("'name'", "'nope'")),
]


def _nan_masks_agree(out, ref, what: str):
    if isinstance(ref, tuple):
        for i, (o, r) in enumerate(zip(out, ref)):
            _nan_masks_agree(o, r, f"{what}[{i}]")
        return
    assert out.shape == ref.shape, what
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), (
        f"{what}: NaN at {torch.isnan(out).nonzero().tolist()}, oracle {torch.isnan(ref).nonzero().tolist()}")


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(row):
    call = row.build()
    if row.exc is None:
        out, ref = call.run(), call.oracle()
        assert any(torch.isnan(r).any() for r in (ref if isinstance(ref, tuple) else (ref,))), "the oracle has no NaN"
        _nan_masks_agree(out, ref, row.id)
        return
    before = [_freeze(x) for x in call.guarded()]
    with pytest.raises(row.exc) as info:
        call.run()
    message = str(info.value)
    assert message.startswith(f"{row.names or row.fn}: "), message
    for word in row.words:
        assert word in message, f"{word!r} not in {message!r}"
    after = [_freeze(x) for x in call.guarded()]
    assert all(_same(a, b) for a, b in zip(before, after)), "a refused call changed the cache or the pool"


def _public_surface() -> set[str]:
    """attn's exported functions and classes, and the public methods each class defines."""
    surface = set()
    for name in attn.__all__:
        if name in NOT_CALLED:
            continue
        obj = getattr(attn, name)
        surface.add(name)
        if inspect.isclass(obj):
            surface.update(f"{name}.{method}" for method, f in vars(obj).items()
                           if not method.startswith("_") and (inspect.isfunction(f) or isinstance(f, classmethod)))
    return surface


def test_matrix_is_complete():
    assert set(APPLICABLE) == _public_surface()
    assert {kind for kinds in APPLICABLE.values() for kind in kinds} <= set(KINDS)
    declared = {(fn, kind) for fn, kinds in APPLICABLE.items() for kind in kinds}
    covered = {(row.fn, row.kind) for row in ROWS}
    assert not declared - covered, f"applicable but without a row: {sorted(declared - covered)}"
    assert not covered - declared, f"rows for pairs not declared applicable: {sorted(covered - declared)}"
    assert len({row.id for row in ROWS}) == len(ROWS), "row ids must be unique"
