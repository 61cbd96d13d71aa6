"""Decode against a very long cache: 100,000 keys, past 65,536 (16-bit positions or page counts
would wrap) and not a multiple of the page size (the last page is partly filled).

One query of one sequence on one KV head is a single program, so the heuristic (num_splits=0)
splits the keys the most it can: this is the split-KV combine at its widest. The backends are
those with a decode op that run on CPU tensors here ("torch" has none: SDPA has no KV cache).
Head dim 64: one the CUDA decode kernels (run here by the emulator, "cuda-sim") are compiled for.
Measured on 2 shared cores: about 6 s per layout under the Triton interpreter, under half a
second on "cuda-sim", "cpu" and "reference".
"""
import pytest
import torch
from _decode_cases import make_case

import attn
from attn.backends import registry as registry
from attn.testing import assert_parity

SEQLEN_K = 100_000

DECODE_BACKENDS = [name for name in registry.names()
                   if registry.usable(name, "cpu") and "decode" in registry.load(name).capabilities]
# The interpreted Triton kernel takes ~45 s per case here; its long-cache path is also covered by
# tests/test_decode.py (4097 keys, many splits), so it runs with -m slow.
BACKEND_PARAMS = [pytest.param(b, marks=pytest.mark.slow) if b == "triton" else b for b in DECODE_BACKENDS]


@pytest.mark.parametrize("page_size", [256, None], ids=["paged256", "contiguous"])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_decode_against_100k_keys(backend, page_size):
    case = make_case(batch=1, seqlen_q=1, n_heads=2, n_kv_heads=1, head_dim=64, seqlens_k=[SEQLEN_K],
                     capacity=SEQLEN_K, page_size=page_size, append=True, dtype=torch.float16, device="cpu")
    out, lse = attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **case.kwargs(), num_splits=0,
                                            return_softmax_lse=True, backend=backend)
    assert torch.equal(case.k_cache, case.k_cache_expected) and torch.equal(case.v_cache, case.v_cache_expected)
    args = (case.q, case.k_logical, case.v_logical)
    ref, ref_lse = attn.reference.attention(*args, seqlens_k=case.seqlens_k, dtype=torch.float64)
    pt, pt_lse = attn.reference.attention(*args, seqlens_k=case.seqlens_k, dtype=torch.float16)
    assert_parity(out, ref, pt, factor=3.0, what=f"{backend} out")
    assert_parity(lse, ref_lse, pt_lse, factor=3.0, what=f"{backend} lse")
