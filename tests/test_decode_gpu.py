"""Decode at serving sizes on a real GPU (the interpreter tests in test_decode.py also run there)."""
import pytest
import torch
from _decode_cases import make_case
from test_decode import _check

import attn

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("page_size", [None, 1, 16, 256])
@pytest.mark.parametrize("seqlen_q", [1, 4])
def test_long_context_parity(page_size, seqlen_q):
    """Batch 1, Llama-style GQA (32 query heads over 8 kv heads, D=128), 32k cached keys:
    the case where only splitting the keys fills the GPU."""
    case = make_case(batch=2, seqlen_q=seqlen_q, n_heads=32, n_kv_heads=8, head_dim=128,
                     seqlens_k=[32768, 12345], capacity=32768, page_size=page_size, append=True,
                     dtype=torch.bfloat16, device="cuda")
    _check(case, torch.bfloat16, num_splits=0)


@pytest.mark.parametrize("num_splits", [0, 1])
def test_repeated_calls_are_bitwise_identical(num_splits):
    case = make_case(batch=1, seqlen_q=1, n_heads=32, n_kv_heads=8, head_dim=128, seqlens_k=[20000], capacity=20000,
                     page_size=16, append=False, dtype=torch.float16, device="cuda")
    outs = [attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **case.kwargs(), num_splits=num_splits,
                                         return_softmax_lse=True, backend="triton") for _ in range(3)]
    for out, lse in outs[1:]:
        assert torch.equal(out, outs[0][0]) and torch.equal(lse, outs[0][1])
