"""The "cuda" backend (attn.cuda._cuda, built by nvcc) on a GPU: parity against attn.reference and
agreement with the Triton backend. Skipped automatically where torch.cuda.is_available() is False;
the same kernel source is checked on CPU by tests/test_cuda_sim_forward.py."""
import itertools
import zlib

import pytest
import torch
from test_cuda_sim_forward import MODE_OPTIONS

import attn
from attn.testing import assert_parity, random_tensor

pytestmark = pytest.mark.gpu

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
SHAPES = [(1, 1), (17, 17), (113, 203), (203, 113), (1024, 1024), (4000, 3001), (1, 4096)]
HEAD_DIMS = [32, 64, 96, 128, 256]
MODES = ["none", "causal", "causal_topleft", "window", "local", "softcap", "alibi"]
HEADS = {"mha": (4, 4), "gqa": (8, 2), "mqa": (6, 1)}


def _cases():
    cases = []
    for i, (dtype, head_dim, mode) in enumerate(itertools.product(DTYPES, HEAD_DIMS, MODES)):
        cases.append(dict(dtype=dtype, head_dim=head_dim, mode=mode, shape=SHAPES[i % len(SHAPES)],
                          heads=list(HEADS)[i % len(HEADS)]))
    return cases


def _ids(case):
    sq, sk = case["shape"]
    return f"{case['dtype']}-d{case['head_dim']}-{sq}x{sk}-{case['heads']}-{case['mode']}"


def _run(backend, q, k, v, mode):
    if mode == "causal_topleft":
        out = attn.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
            enable_gqa=q.shape[2] != k.shape[2], backend=backend,
        ).transpose(1, 2)
        return out, None
    out, lse, _ = attn.flash_attn_func(q, k, v, return_attn_probs=True, backend=backend, **_options(q, mode))
    return out, lse


def _options(q, mode):
    """flash_attn_func options of a mode (see test_cuda_sim_forward.MODE_OPTIONS); ALiBi slopes
    are fixed per head count."""
    options = dict(MODE_OPTIONS[mode])
    if options.pop("alibi", False):
        options["alibi_slopes"] = torch.linspace(0.05, 0.5, q.shape[2], device=q.device)
    return options


@pytest.mark.parametrize("case", _cases(), ids=_ids)
def test_cuda_matches_reference_and_triton(case):
    dtype = DTYPES[case["dtype"]]
    (seqlen_q, seqlen_k), (n_heads, n_kv_heads) = case["shape"], HEADS[case["heads"]]
    gen = torch.Generator().manual_seed(zlib.crc32(_ids(case).encode()))
    q = random_tensor((2, seqlen_q, n_heads, case["head_dim"]), dtype, generator=gen).cuda()
    k = random_tensor((2, seqlen_k, n_kv_heads, case["head_dim"]), dtype, generator=gen).cuda()
    v = random_tensor((2, seqlen_k, n_kv_heads, case["head_dim"]), dtype, generator=gen).cuda()
    out, lse = _run("cuda", q, k, v, case["mode"])
    mode = case["mode"]
    ref_kwargs = dict(causal=True, bottom_right=False) if mode == "causal_topleft" else _options(q, mode)
    ref, ref_lse = attn.reference.attention(q, k, v, dtype=torch.float64, **ref_kwargs)
    pt, pt_lse = attn.reference.attention(q, k, v, dtype=dtype, **ref_kwargs)
    assert_parity(out, ref, pt)
    if lse is not None:
        assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
        assert_parity(lse, ref_lse, pt_lse, what="lse")
    triton_out, _ = _run("triton", q, k, v, case["mode"])
    # Both kernels sit within the parity bound of the oracle, so within twice it of each other.
    bound = 2 * (2 * (pt.double() - ref.double()).abs().max().item() + 1e-5)
    assert (out.double() - triton_out.double()).abs().max().item() <= bound


def test_cuda_runs_on_the_current_stream():
    gen = torch.Generator().manual_seed(9)
    q, k, v = (random_tensor((2, 300, 4, 64), torch.float16, generator=gen).cuda() for _ in range(3))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = attn.flash_attn_func(q, k, v, causal=True, backend="cuda")
    stream.synchronize()
    ref = attn.reference.attention(q, k, v, causal=True, dtype=torch.float64)[0]
    pt = attn.reference.attention(q, k, v, causal=True, dtype=torch.float16)[0]
    assert_parity(out, ref, pt)


def test_cuda_is_the_automatic_choice_for_cuda_tensors():
    from attn.backends import registry

    assert attn.available_backends()["cuda"].available
    assert registry.select("test", None, "cuda", "forward", ["causal", "return_lse"]).name == "cuda"
