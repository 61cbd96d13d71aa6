"""flash_attn_with_kvcache on the Triton split-KV kernel vs the oracle (docs/design.md §3, 3x rule).

On CPU the kernels run under TRITON_INTERPRET=1; with a GPU the same tests run compiled.
The default run covers every pair of values of the issue's dimensions (attn.testing.pairwise);
the cross-product is under ``-m slow``.
"""
import pytest
import torch
from _decode_cases import check_decode, make_case

import attn
from attn import reference
from attn.testing import assert_parity, pairwise, product

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# The dimensions: (q_len, keys after the call), query heads per kv head (1 = MHA), cache
# layout (None = contiguous, else page size), append of new k/v, num_splits, dtype.
DIMENSIONS = {
    "sizes": [(1, 1), (1, 128), (1, 339), (3, 799), (16, 1024), (64, 800), (1, 4097)],
    "group": [1, 4, 8],
    "page_size": [None, 1, 16, 256],
    "append": [False, True],
    "num_splits": [1, 3, 0],
    "dtype": list(DTYPES),
}


def _ragged(full: int, seqlen_q: int, append: bool) -> list[int]:
    """Keys per sequence: the full cache, the fewest possible (0 cached keys), one in between."""
    least = seqlen_q if append else 0
    return [full, least, max(least, (full * 2) // 3)]


def _run_dims(device, sizes, group, page_size, append, num_splits, dtype):
    """Two sequences (the full cache and the fewest keys) of one kv head: the interpreter's cost
    grows with programs x key tiles, and several kv heads per sequence are covered by the head-dim
    cases below."""
    seqlen_q, seqlen_k = sizes
    case = make_case(batch=2, seqlen_q=seqlen_q, n_heads=group, n_kv_heads=1, head_dim=64,
                     seqlens_k=_ragged(seqlen_k, seqlen_q, append)[:2], capacity=seqlen_k, page_size=page_size,
                     append=append, dtype=dtype, device=device)
    check_decode(case, dtype, num_splits=num_splits)


@pytest.mark.parametrize("dims", pairwise(DIMENSIONS), ids=lambda d: "-".join(map(str, d.values())))
def test_decode_parity(device, dims):
    _run_dims(device, **dims)


@pytest.mark.slow
@pytest.mark.parametrize("dims", product(DIMENSIONS), ids=lambda d: "-".join(map(str, d.values())))
def test_decode_parity_cross_product(device, dims):
    _run_dims(device, **dims)


# Head dims and wide groups the sweep above does not vary:
# (q_len, keys, H, Hkv, D, page size, append, num_splits, dtype)
HEAD_DIM_CASES = [
    (1, 128, 32, 4, 128, 16, False, 3, torch.bfloat16),
    (3, 799, 16, 2, 80, 256, True, 3, torch.float16),
    (16, 300, 4, 4, 32, None, True, 0, torch.bfloat16),
    (3, 128, 4, 1, 256, 1, False, 1, torch.bfloat16),
    (16, 339, 4, 4, 16, 256, False, 3, torch.float32),
    (2, 200, 6, 3, 40, 16, True, 0, torch.float32),
]


@pytest.mark.parametrize("seqlen_q,seqlen_k,n_heads,n_kv_heads,head_dim,page_size,append,num_splits,dtype",
                         HEAD_DIM_CASES)
def test_decode_head_dims(device, seqlen_q, seqlen_k, n_heads, n_kv_heads, head_dim, page_size, append,
                          num_splits, dtype):
    case = make_case(batch=3, seqlen_q=seqlen_q, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                     seqlens_k=_ragged(seqlen_k, seqlen_q, append), capacity=seqlen_k, page_size=page_size,
                     append=append, dtype=dtype, device=device)
    check_decode(case, dtype, num_splits=num_splits)


@pytest.mark.parametrize("batch_idx", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_cache_batch_idx_non_causal(device, dtype, batch_idx):
    case = make_case(batch=3, seqlen_q=5, n_heads=8, n_kv_heads=2, head_dim=64, seqlens_k=[200, 5, 77], capacity=200,
                     page_size=None, append=True, dtype=dtype, device=device, batch_idx=batch_idx)
    check_decode(case, dtype, causal=False, num_splits=3)


@pytest.mark.parametrize(
    "window,softcap,use_alibi,page_size,dtype",
    [
        ((50, 0), 0.0, False, 16, torch.float16),
        ((30, 7), 20.0, False, None, torch.bfloat16),
        ((-1, -1), 0.0, True, 1, torch.float32),
        ((64, -1), 15.0, True, 256, torch.float16),
    ],
)
def test_decode_window_softcap_alibi(device, window, softcap, use_alibi, page_size, dtype):
    causal = window[1] == 0
    case = make_case(batch=2, seqlen_q=4, n_heads=8, n_kv_heads=2, head_dim=64, seqlens_k=[339, 40], capacity=339,
                     page_size=page_size, append=True, dtype=dtype, device=device, seed=3)
    alibi = torch.rand(2, 8, generator=torch.Generator().manual_seed(1)).to(device) if use_alibi else None
    check_decode(case, dtype, causal=causal, window=window, softcap=softcap, alibi=alibi, num_splits=3)


def test_decode_large_logits_and_empty_rows(device):
    """Logits ~1e4 must not overflow; a sequence with no key (nothing cached, nothing appended)
    outputs 0 with lse -inf."""
    case = make_case(batch=2, seqlen_q=2, n_heads=4, n_kv_heads=2, head_dim=32, seqlens_k=[150, 0], capacity=150,
                     page_size=16, append=False, dtype=torch.float16, device=device, seed=5)
    case.q.mul_(40)
    result = check_decode(case, torch.float16, causal=False, num_splits=3)
    out, lse = attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **case.kwargs(), num_splits=3,
                                            return_softmax_lse=True, backend="triton")
    assert (out[1] == 0).all() and torch.isneginf(lse[1]).all()
    assert result.ok


@pytest.mark.parametrize("num_splits", [1, 0])
def test_decode_is_deterministic(device, num_splits):
    """A fixed configuration reproduces bit for bit (no atomics; split count from shapes only)."""
    case = make_case(batch=1, seqlen_q=1, n_heads=8, n_kv_heads=2, head_dim=64, seqlens_k=[700], capacity=800,
                     page_size=16, append=False, dtype=torch.bfloat16, device=device)
    outs = [attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **case.kwargs(), num_splits=num_splits,
                                         return_softmax_lse=True, backend="triton") for _ in range(2)]
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("page_size,speculative", [(None, 1), (16, 4), (1, 3)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_token_by_token_matches_causal_forward(device, page_size, speculative, dtype):
    """Prefill then decode ``speculative`` tokens per step through the cache == one causal pass."""
    batch, seqlen, n_heads, n_kv_heads, head_dim, prefill = 2, 23, 8, 2, 64, 7
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(batch, seqlen, h, head_dim, generator=gen).to(dtype).to(device)
               for h in (n_heads, n_kv_heads, n_kv_heads))
    capacity = 32
    if page_size is None:
        k_cache = torch.randn(batch, capacity, n_kv_heads, head_dim, generator=gen).to(dtype).to(device)
        block_table = None
    else:
        pages = capacity // page_size
        k_cache = torch.randn(batch * pages, page_size, n_kv_heads, head_dim, generator=gen).to(dtype).to(device)
        block_table = torch.randperm(batch * pages, generator=gen).view(batch, pages).to(torch.int32).to(device)
    v_cache = torch.randn_like(k_cache)
    outs, pos = [], 0
    for step in [prefill] + [speculative] * ((seqlen - prefill) // speculative + 1):
        step = min(step, seqlen - pos)
        if step == 0:
            break
        sl = slice(pos, pos + step)
        outs.append(attn.flash_attn_with_kvcache(
            q[:, sl], k_cache, v_cache, k[:, sl], v[:, sl], cache_seqlens=pos, block_table=block_table, causal=True,
            backend="triton"))
        pos += step
    out = torch.cat(outs, dim=1)
    ref, _ = reference.attention(q, k, v, causal=True, dtype=torch.float64)
    pt = None if dtype == torch.float32 else reference.attention(q, k, v, causal=True, dtype=dtype)[0]
    assert_parity(out, ref, pt, factor=3)


def test_reference_backend_decode():
    """The reference backend's decode path (gather the cache, run the oracle with per-sequence
    key lengths) is what "auto" falls back to where no kernel backend runs."""
    case = make_case(batch=2, seqlen_q=2, n_heads=4, n_kv_heads=2, head_dim=32, seqlens_k=[60, 9], capacity=64,
                     page_size=16, append=True, dtype=torch.float32, device="cpu")
    check_decode(case, torch.float32, backend="reference")
