"""Forward parity of the Triton kernel (interpreter on CPU, compiled on GPU) against attn.reference.

Both public entry points are exercised: ``flash_attn_func`` (bottom-right causal, windows,
softcap, ALiBi) and ``scaled_dot_product_attention`` (top-left causal, masks), in both memory
layouts. The default run covers every pair of values of every dimension; ``-m slow`` runs the
full product.
"""
import math
import zlib

import pytest
import torch

import attn
from attn.testing import assert_parity, pairwise, product, random_tensor

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
HEAD_DIMS = [16, 40, 59, 64, 96, 128, 256]
SHAPES = [(1, 1), (1, 239), (17, 17), (113, 203), (128, 217), (203, 113), (256, 512), (512, 256), (1023, 1024)]
HEADS = {"mha": (2, 2), "gqa": (8, 2), "mqa": (3, 1)}
MODES = ["none", "causal", "causal_topleft", "window", "window_causal", "softcap", "alibi"]
LAYOUTS = ["bshd", "bhsd"]
GRID = dict(dtype=list(DTYPES), head_dim=HEAD_DIMS, shape=SHAPES, heads=list(HEADS), mode=MODES, layout=LAYOUTS)


def _ids(case):
    sq, sk = case["shape"]
    return f"{case['dtype']}-d{case['head_dim']}-{sq}x{sk}-{case['heads']}-{case['mode']}-{case['layout']}"


def make_qkv(batch, seqlen_q, seqlen_k, n_heads, n_kv_heads, head_dim, dtype, layout, device, seed=0, scale=1.0):
    """Random q (B, Sq, H, D), k/v (B, Sk, Hkv, D); ``bhsd`` stores them head-major and returns
    transposed views, so the kernel sees non-contiguous sequence strides."""
    gen = torch.Generator().manual_seed(seed)

    def one(seqlen, heads, s=1.0):
        if layout == "bhsd":
            return random_tensor((batch, heads, seqlen, head_dim), dtype, generator=gen, scale=s).to(device).transpose(1, 2)
        return random_tensor((batch, seqlen, heads, head_dim), dtype, generator=gen, scale=s).to(device)

    return one(seqlen_q, n_heads, scale), one(seqlen_k, n_kv_heads), one(seqlen_k, n_kv_heads)


def run_case(case, device, batch=None):
    dtype = DTYPES[case["dtype"]]
    seqlen_q, seqlen_k = case["shape"]
    n_heads, n_kv_heads = HEADS[case["heads"]]
    head_dim, mode = case["head_dim"], case["mode"]
    if batch is None:  # keep interpreter time bounded: one sequence for the largest shapes
        batch = 1 if seqlen_q * seqlen_k > 60_000 else 2
    q, k, v = make_qkv(batch, seqlen_q, seqlen_k, n_heads, n_kv_heads, head_dim, dtype, case["layout"], device,
                       seed=zlib.crc32(_ids(case).encode()))
    kwargs = {}
    if mode == "causal":
        kwargs["causal"] = True
    elif mode == "window":
        kwargs["window_size"] = (37, 11)
    elif mode == "window_causal":
        kwargs.update(causal=True, window_size=(50, -1))
    elif mode == "softcap":
        kwargs["softcap"] = 2.5
    elif mode == "alibi":
        kwargs["alibi_slopes"] = torch.rand(batch, n_heads, generator=torch.Generator().manual_seed(1)).to(device) * 0.3

    if mode == "causal_topleft":
        out = attn.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
            enable_gqa=n_heads != n_kv_heads, backend="triton",
        ).transpose(1, 2)
        ref_kwargs = dict(causal=True, bottom_right=False)
        lse = None
    else:
        out, lse, _ = attn.flash_attn_func(q, k, v, return_attn_probs=True, backend="triton", **kwargs)
        ref_kwargs = dict(kwargs)
    ref, ref_lse = attn.reference.attention(q, k, v, dtype=torch.float64, **ref_kwargs)
    pt = None if dtype == torch.float32 else attn.reference.attention(q, k, v, dtype=dtype, **ref_kwargs)[0]
    result = assert_parity(out, ref, pt, factor=2.0)
    if lse is not None:
        assert lse.dtype == torch.float32 and lse.shape == (batch, n_heads, seqlen_q)
        assert not torch.isnan(lse).any()
        lse_tol = 1e-4 if dtype == torch.float32 else 2e-3
        finite = torch.isfinite(ref_lse)
        assert torch.equal(torch.isfinite(lse), finite), "lse: -inf pattern differs from the reference"
        assert (lse[finite].double() - ref_lse[finite].double()).abs().max().item() <= lse_tol * max(
            1.0, ref_lse[finite].abs().max().item())
    return result


@pytest.mark.parametrize("case", pairwise(GRID), ids=_ids)
def test_forward_pairwise(case, device):
    run_case(case, device)


@pytest.mark.slow
@pytest.mark.parametrize("case", product(GRID), ids=_ids)
def test_forward_full_product(case, device):
    run_case(case, device)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_fully_masked_rows_are_zero_with_neg_inf_lse(dtype, device):
    """Sq > Sk with bottom-right causal: the first Sq - Sk queries see no key."""
    q, k, v = make_qkv(2, 70, 20, 4, 2, 64, DTYPES[dtype], "bshd", device, seed=3)
    out, lse, _ = attn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend="triton")
    assert torch.equal(out[:, :50], torch.zeros_like(out[:, :50]))
    assert torch.isneginf(lse[:, :, :50]).all()
    assert torch.isfinite(lse[:, :, 50:]).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_large_logits_stay_finite(dtype, device):
    """q.k of magnitude ~1e4: the running max keeps exp2 in range."""
    q, k, v = make_qkv(1, 64, 96, 2, 2, 64, DTYPES[dtype], "bshd", device, seed=4)
    q = (q.float() * (1e4 / math.sqrt(64))).to(q.dtype)  # logits ~ 1e4 * N(0, 1) before scaling
    out, lse, _ = attn.flash_attn_func(q, k, v, softmax_scale=1.0, return_attn_probs=True, backend="triton")
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    ref = attn.reference.attention(q, k, v, softmax_scale=1.0, dtype=torch.float64)[0]
    pt = attn.reference.attention(q, k, v, softmax_scale=1.0, dtype=DTYPES[dtype])[0]
    assert_parity(out, ref, pt)


@pytest.mark.parametrize("mask_kind", ["bool", "float", "bool_2d_broadcast"])
def test_sdpa_attn_mask(mask_kind, device):
    gen = torch.Generator().manual_seed(5)
    b, h, sq, sk, d = 2, 4, 77, 130, 64
    query = random_tensor((b, h, sq, d), torch.float16, generator=gen).to(device)
    key = random_tensor((b, h, sk, d), torch.float16, generator=gen).to(device)
    value = random_tensor((b, h, sk, d), torch.float16, generator=gen).to(device)
    if mask_kind == "bool":
        mask = (torch.rand(b, h, sq, sk, generator=gen) > 0.3).to(device)
        mask[0, 1, 5] = False  # one row that sees nothing: output 0 by contract
    elif mask_kind == "float":
        mask = (torch.randn(b, 1, sq, sk, generator=gen) * 2).to(device)
    else:
        mask = (torch.rand(sq, sk, generator=gen) > 0.5).to(device)
    out = attn.scaled_dot_product_attention(query, key, value, attn_mask=mask, backend="triton")
    bias = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    ref = attn.reference.attention(q, k, v, attn_mask=bias, dtype=torch.float64)[0].transpose(1, 2)
    pt = attn.reference.attention(q, k, v, attn_mask=bias, dtype=torch.float16)[0].transpose(1, 2)
    assert_parity(out, ref, pt)
    if mask_kind == "bool":
        assert torch.equal(out[0, 1, 5], torch.zeros_like(out[0, 1, 5]))


def test_strided_inputs_without_copies(device):
    """Slices of a larger buffer (non-contiguous batch and head strides, an offset)."""
    gen = torch.Generator().manual_seed(6)
    big = random_tensor((3, 90, 10, 72), torch.float16, generator=gen).to(device)
    q = big[1:, 5:80, 1:9:2, 4:68]  # (2, 75, 4, 64), last dim contiguous
    k = big[:2, :60, 2:4, 0:64]
    v = big[1:3, 30:90, 6:8, 8:72]
    assert q.stride(-1) == 1 and not q.is_contiguous()
    out = attn.flash_attn_func(q, k, v, causal=True, backend="triton")
    ref = attn.reference.attention(q, k, v, causal=True, dtype=torch.float64)[0]
    pt = attn.reference.attention(q, k, v, causal=True, dtype=torch.float16)[0]
    assert_parity(out, ref, pt)


GPU_SHAPES = [(1, 4096), (1024, 1024), (2048, 2048), (4000, 3001), (4096, 8192)]


@pytest.mark.gpu
@pytest.mark.parametrize("case", pairwise(dict(GRID, shape=GPU_SHAPES)), ids=_ids)
def test_forward_gpu_large(case):
    run_case(case, "cuda", batch=2)
