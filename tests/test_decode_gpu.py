"""Decode at serving sizes on a real GPU, through the Triton and the CUDA C++ kernels (the
interpreter and emulator tests in test_decode.py / test_cuda_sim_decode.py also run there)."""
import pytest
import torch
from _decode_cases import check_decode, make_case

import attn
from attn import reference
from attn.testing import assert_parity, parity

pytestmark = pytest.mark.gpu
BACKENDS = ["triton", "cuda"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page_size", [None, 1, 16, 256])
@pytest.mark.parametrize("seqlen_q", [1, 4])
def test_long_context_parity(backend, page_size, seqlen_q):
    """Batch 1, Llama-style GQA (32 query heads over 8 kv heads, D=128), 32k cached keys:
    the case where only splitting the keys fills the GPU. 4 packed rows (1 token) run the CUDA
    FMA kernel, 16 (4 tokens) its tensor-core kernel."""
    case = make_case(batch=2, seqlen_q=seqlen_q, n_heads=32, n_kv_heads=8, head_dim=128,
                     seqlens_k=[32768, 12345], capacity=32768, page_size=page_size, append=True,
                     dtype=torch.bfloat16, device="cuda")
    check_decode(case, torch.bfloat16, num_splits=0, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_splits", [0, 1])
def test_repeated_calls_are_bitwise_identical(backend, num_splits):
    case = make_case(batch=1, seqlen_q=1, n_heads=32, n_kv_heads=8, head_dim=128, seqlens_k=[20000], capacity=20000,
                     page_size=16, append=False, dtype=torch.float16, device="cuda")
    outs = [attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **case.kwargs(), num_splits=num_splits,
                                         return_softmax_lse=True, backend=backend) for _ in range(3)]
    for out, lse in outs[1:]:
        assert torch.equal(out, outs[0][0]) and torch.equal(lse, outs[0][1])


@pytest.mark.parametrize("seqlen_q,n_heads,head_dim", [(1, 8, 64), (16, 32, 128), (64, 8, 64)])
def test_cuda_agrees_with_triton(seqlen_q, n_heads, head_dim):
    """Both kernel families on the same cache, within the rule of each other."""
    case = make_case(batch=4, seqlen_q=seqlen_q, n_heads=n_heads, n_kv_heads=8 if n_heads == 32 else 2,
                     head_dim=head_dim, seqlens_k=[5000, 1, 777, 4096], capacity=5000, page_size=16, append=False,
                     dtype=torch.float16, device="cuda")
    outs = {b: attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **case.kwargs(), causal=True,
                                            backend=b) for b in BACKENDS}
    ref, pt = (reference.attention(case.q, case.k_logical, case.v_logical, causal=True, seqlens_k=case.seqlens_k,
                                   dtype=t)[0] for t in (torch.float64, torch.float16))
    bound = min(assert_parity(out, ref, pt, factor=3).bound for out in outs.values())
    agreement = parity(outs["cuda"], outs["triton"].double(), pt, factor=3)
    assert agreement.error <= bound, f"cuda vs triton: {agreement}"
