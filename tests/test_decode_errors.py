"""flash_attn_with_kvcache refuses bad input with a clear error, before writing into the cache."""
import pytest
import torch
from _decode_cases import make_case

import attn

FN = "flash_attn_with_kvcache"


def _case(page_size=16, device="cpu", batch_idx=False):
    return make_case(batch=2, seqlen_q=2, n_heads=4, n_kv_heads=2, head_dim=32, seqlens_k=[40, 10], capacity=48,
                     page_size=page_size, append=True, dtype=torch.float16, device=device, batch_idx=batch_idx)


def _refused(case, exc, match, **overrides):
    """The call raises ``exc`` matching ``match`` and both caches stay byte-identical."""
    k_before, v_before = case.k_cache.clone(), case.v_cache.clone()
    kwargs = {**case.kwargs(), **overrides}
    q = kwargs.pop("q", case.q)
    k_cache = kwargs.pop("k_cache", case.k_cache)
    with pytest.raises(exc, match=match):
        attn.flash_attn_with_kvcache(q, k_cache, case.v_cache, causal=True, backend="triton", **kwargs)
    assert torch.equal(case.k_cache.view(torch.int16), k_before.view(torch.int16))
    assert torch.equal(case.v_cache.view(torch.int16), v_before.view(torch.int16))


@pytest.mark.parametrize("page_size", [None, 16])
def test_append_overflow_is_refused(page_size):
    """A contiguous cache names 'cache_seqlens'; a paged one names 'block_table', whose width is what
    falls short (the pool may have free pages)."""
    case = _case(page_size)
    capacity = 48
    match = (rf"{FN}: argument 'cache_seqlens' expected cache_seqlens \+ 2 <= {capacity}" if page_size is None else
             rf"{FN}: argument 'block_table' expected at least 4 pages of 16 keys .* got 3 pages per sequence")
    _refused(case, ValueError, match, cache_seqlens=torch.tensor([capacity - 1, 0], dtype=torch.int32))


def test_negative_cache_seqlens_is_refused():
    _refused(_case(), ValueError, "'cache_seqlens' expected values >= 0", cache_seqlens=torch.tensor([-1, 3]).int())


def test_block_table_outside_pool_is_refused():
    case = _case()
    table = case.block_table.clone()
    table[1, 0] = case.k_cache.shape[0]  # one past the last page, in a page sequence 1 uses
    _refused(case, ValueError, r"'block_table' expected page indices in \[0, ", block_table=table)
    table[1, 0] = -1
    _refused(case, ValueError, r"'block_table' expected page indices in \[0, ", block_table=table)


def test_unused_block_table_entries_are_not_checked():
    """Entries past a sequence's last page (vLLM pads with -1 or garbage) are never read."""
    case = _case()
    table = case.block_table.clone()
    table[1, 1:] = -1  # sequence 1 holds 10 keys: page 0 only
    attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **{**case.kwargs(), "block_table": table},
                                 causal=True, backend="triton")
    assert torch.equal(case.k_cache, case.k_cache_expected)


@pytest.mark.parametrize(
    "override,exc,match",
    [
        ({"cache_seqlens": torch.tensor([3.0, 1.0])}, TypeError, "'cache_seqlens' expected dtype int32"),
        ({"cache_seqlens": 2.5}, TypeError, "'cache_seqlens' expected an int or an int32 tensor"),
        ({"cache_seqlens": torch.tensor([3], dtype=torch.int32)}, ValueError, r"'cache_seqlens' expected shape \(2,\)"),
        ({"block_table": torch.zeros(2, 3)}, TypeError, "'block_table' expected dtype int32"),
        ({"k": torch.randn(2, 2, 2, 32)}, TypeError, "'k' expected the same dtype as 'q'"),
        ({"k_cache": torch.randn(9, 16, 2, 32)}, TypeError, "'k_cache' expected the same dtype as 'q'"),
        ({"k_cache": torch.randn(9, 16, 3, 32).half()}, ValueError, "'v_cache' expected the same shape as 'k_cache'"),
        ({"q": torch.randn(2, 2, 3, 32).half()}, ValueError, "'k_cache' expected a number of heads dividing the 3"),
        ({"k": None}, ValueError, "'k' expected a tensor when 'k'/'v' is given"),
        ({"q": torch.randn(2, 2, 4, 32).half(), "k": torch.randn(2, 2, 1, 32).half(),
          "v": torch.randn(2, 2, 1, 32).half()}, ValueError, "'k' expected 2 heads like 'k_cache'"),
        ({"num_splits": -1}, ValueError, "'num_splits' expected an int >= 0"),
        ({"cache_batch_idx": torch.tensor([0, 1], dtype=torch.int32)}, ValueError,
         "'cache_batch_idx' expected None with a paged cache"),
        ({"rotary_cos": torch.randn(48, 16)}, NotImplementedError, "option 'rotary_cos' is not supported"),
        ({"cache_leftpad": torch.zeros(2, dtype=torch.int32)}, NotImplementedError,
         "option 'cache_leftpad' is not supported"),
    ],
)
def test_bad_arguments_are_refused(override, exc, match):
    _refused(_case(), exc, f"{FN}: .*{match}" if exc is not NotImplementedError else match, **override)


def test_cache_batch_idx_out_of_range_or_repeated_is_refused():
    case = _case(page_size=None, batch_idx=True)
    rows = case.k_cache.shape[0]
    _refused(case, ValueError, rf"'cache_batch_idx' expected indices in \[0, {rows}\)",
             cache_batch_idx=torch.tensor([0, rows], dtype=torch.int32))
    _refused(case, ValueError, "'cache_batch_idx' expected distinct indices when appending",
             cache_batch_idx=torch.tensor([1, 1], dtype=torch.int32))


def test_contiguous_cache_batch_must_match_without_batch_idx():
    case = _case(page_size=None, batch_idx=True)  # cache has 4 rows for 2 sequences
    _refused(case, ValueError, "'k_cache' expected batch size 2 .* or pass 'cache_batch_idx'", cache_batch_idx=None)


def test_backend_without_decode_is_refused_before_writing():
    case = _case()
    k_before = case.k_cache.clone()
    with pytest.raises(NotImplementedError, match="backend 'torch'"):
        attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **case.kwargs(), backend="torch")
    assert torch.equal(case.k_cache.view(torch.int16), k_before.view(torch.int16))
