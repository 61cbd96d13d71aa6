"""Regressions of issue 15 (autograd and API part): public bug reports replayed on attn.

One test per item, parametrized over the backends it applies to ("triton" runs under the
interpreter, "cuda-sim" under the SIMT emulator). Expected values come from PyTorch's own math
SDPA in fp64 (an independent computation), never from attn.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import attn
from attn.testing import assert_parity, random_tensor

BACKENDS = ("triton", "cpu", "cuda-sim", "torch", "reference")
WITH_BACKWARD = ("triton", "cpu", "torch", "reference")


def _math_sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """PyTorch's math SDPA in fp64 on ``(B, H, S, D)`` inputs (GQA expanded here)."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)


def _leaves(shapes, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [random_tensor(s, dtype, generator=gen).requires_grad_() for s in shapes]


def _fp64(*tensors):
    return [t.detach().double().requires_grad_() for t in tensors]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("backend", ["triton", "cpu", "reference"])
def test_item1_gradient_through_lse_and_alibi(backend, dtype):
    """Gradients reach q, k, v through ``lse`` as well as ``out``, and ``alibi_slopes`` gets its
    own (the torch and reference backends always gave both). Old cpu code: ``lse`` without grad,
    dq off by ~1.9 in fp16; slopes got None on triton and cpu."""
    q, k, v = _leaves([(1, 5, 2, 8), (1, 7, 1, 8), (1, 7, 1, 8)], dtype, seed=1)
    slopes = torch.rand(2, generator=torch.Generator().manual_seed(2)).requires_grad_()
    gen = torch.Generator().manual_seed(3)
    dout, dlse = random_tensor((1, 5, 2, 8), torch.float64, generator=gen), random_tensor((1, 2, 5), torch.float64,
                                                                                         generator=gen)
    out, lse, _ = attn.flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes, return_attn_probs=True,
                                       backend=backend)
    assert lse.requires_grad
    ((out.double() * dout).sum() + (lse.double() * dlse).sum()).backward()

    def truth(qt, kt, vt, slopes_t):  # (B, H, S, D) fp64; bottom-right ALiBi + causal as an additive mask
        i = torch.arange(5).view(5, 1) + 2  # Sk - Sq = 2
        j = torch.arange(7).view(1, 7)
        bias = -slopes_t.view(2, 1, 1) * (i - j).abs()
        bias = bias.masked_fill(j > i, float("-inf"))
        o = _math_sdpa(qt, kt, vt, attn_mask=bias.unsqueeze(0))
        scores = torch.matmul(qt, kt.repeat_interleave(2, dim=1).transpose(-1, -2)) / 8 ** 0.5 + bias
        return o, torch.logsumexp(scores, dim=-1)

    refs = _fp64(q, k, v, slopes)
    o, l = truth(*(t.transpose(1, 2) for t in refs[:3]), refs[3])
    ((o.transpose(1, 2) * dout).sum() + (l * dlse).sum()).backward()
    for name, mine, ref in zip(("dq", "dk", "dv", "dslopes"), (q, k, v, slopes), refs):
        assert mine.grad is not None, f"{name} missing"
        # fp16: the 3x rule against the 16-bit oracle's own error, at least half an fp16 ulp.
        pt = None if dtype == torch.float32 or name == "dslopes" else ref.grad.to(dtype)
        tol = 2e-2 if dtype == torch.float16 and name == "dslopes" else None
        if tol is None:
            assert_parity(mine.grad, ref.grad, pt, factor=3.0, what=name)
        else:
            torch.testing.assert_close(mine.grad.double(), ref.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", (None,) + BACKENDS)
def test_item3_jvp_is_correct_or_refused(backend):
    """torch.func.jvp through SDPA: the true tangent (auto goes to "reference"), or
    NotImplementedError naming 'forward_ad' — never the old silent all-zero tangent."""
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float16 if backend == "cuda-sim" else torch.float32
    primals = [random_tensor(s, dtype, generator=gen) for s in ((1, 1, 3, 32), (1, 1, 4, 32), (1, 1, 4, 32))]
    tangents = [random_tensor(p.shape, dtype, generator=gen) for p in primals]

    def call(q, k, v):
        return attn.scaled_dot_product_attention(q, k, v, backend=backend)

    if backend not in (None, "reference"):
        with pytest.raises(NotImplementedError, match="forward_ad"):
            torch.func.jvp(call, tuple(primals), tuple(tangents))
        return
    _, tangent = torch.func.jvp(call, tuple(primals), tuple(tangents))
    _, truth = torch.func.jvp(_math_sdpa, tuple(t.double() for t in primals), tuple(t.double() for t in tangents))
    assert truth.abs().max() > 0.1
    assert_parity(tangent, truth, None, what="tangent")


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("name", ["key_padding_mask", "attn_mask"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_item4_mha_refuses_integer_masks(dtype, name, need_weights):
    """PyTorch refuses integer masks ("only bool and floating types of <name> are supported");
    attn did read them as an additive +1 (need_weights=True) or named SDPA's 'attn_mask' for a
    key_padding_mask."""
    torch_mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    mha = attn.MultiheadAttention.from_module(torch_mha, backend="reference")
    x = torch.randn(2, 3, 16)
    mask = {"key_padding_mask": torch.zeros(2, 3, dtype=dtype), "attn_mask": torch.zeros(3, 3, dtype=dtype)}[name]
    with pytest.raises(AssertionError, match=name):
        torch_mha(x, x, x, need_weights=need_weights, **{name: mask})
    with pytest.raises(TypeError, match=f"MultiheadAttention.forward: argument '{name}' expected a bool or floating"):
        mha(x, x, x, need_weights=need_weights, **{name: mask})


EMPTY_CASES = {"batch": ((0, 2, 3, 32), (0, 2, 5, 32)), "queries": ((1, 2, 0, 32), (1, 2, 5, 32)),
               "keys": ((1, 2, 3, 32), (1, 2, 0, 32))}


@pytest.mark.parametrize("case", EMPTY_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_item8_empty_inputs(backend, case):
    """Like PyTorch: empty output for B=0 or Sq=0, zeros (and lse -inf) for Sk=0, zero gradients;
    no kernel launch. Old code: ValueError on every backend. Decode with B=0 as well."""
    q_shape, kv_shape = EMPTY_CASES[case]
    grad = backend in WITH_BACKWARD
    q, k, v = _leaves([q_shape, kv_shape, kv_shape], torch.float16, seed=4)
    for t in (q, k, v):
        t.requires_grad_(grad)
    truth = _math_sdpa(*_fp64(q, k, v))
    out = attn.scaled_dot_product_attention(q, k, v, backend=backend)
    assert out.shape == truth.shape and out.dtype == q.dtype and torch.equal(out.double(), truth)
    if backend != "torch":
        flash = [t.transpose(1, 2) for t in (q, k, v)]
        out, lse, _ = attn.flash_attn_func(*flash, return_attn_probs=True, backend=backend)
        assert out.shape == flash[0].shape and torch.equal(out.double(), truth.transpose(1, 2))
        assert lse.shape == (q.shape[0], 2, q.shape[2]) and bool(torch.isneginf(lse).all())
    if grad:
        out.float().sum().backward()
        for t in (q, k, v):
            assert t.grad.shape == t.shape and not t.grad.any()
    if backend != "torch" and case == "batch":
        cache = torch.zeros(0, 8, 2, 32, dtype=torch.float16)
        out = attn.flash_attn_with_kvcache(q.detach().transpose(1, 2), cache, cache.clone(),
                                           cache_seqlens=torch.zeros(0, dtype=torch.int32), backend=backend)
        assert out.shape == (0, 3, 2, 32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_item9_vmap_and_fullgraph_compile(backend):
    """No Python branch on tensor values in a traced path: vmap over a batch of problems, and (for
    "torch", whose NaN check broke it) torch.compile(fullgraph=True), with a NaN query row that
    must stay NaN while every other row matches PyTorch's math SDPA."""
    dtype = torch.float16 if backend == "cuda-sim" else torch.float32
    q, k, v = (random_tensor((3, 1, 2, 4, 32), dtype, generator=torch.Generator().manual_seed(s)) for s in (5, 6, 7))
    q[1, 0, 1, 2, 3] = float("nan")

    def call(q, k, v):
        return attn.scaled_dot_product_attention(q, k, v, is_causal=True, backend=backend)

    truth = torch.stack([_math_sdpa(*(t[b].double() for t in (q, k, v)), is_causal=True) for b in range(3)])
    results = [(torch.func.vmap(call)(q, k, v), truth)]
    if backend == "torch":
        results.append((torch.compile(call, fullgraph=True, backend="eager")(q[1], k[1], v[1]), truth[1]))
    for out, truth in results:
        nan_rows = torch.isnan(truth)
        assert torch.equal(torch.isnan(out), nan_rows)
        assert_parity(out.masked_fill(nan_rows, 0), truth.masked_fill(nan_rows, 0),
                      None if dtype == torch.float32 else truth.to(dtype).masked_fill(nan_rows, 0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_item10_float_mask_gets_its_gradient(backend):
    """A float attn_mask that alone requires grad gets dS summed over its broadcast dims, on every
    backend with a backward (old code: cpu raised at backward, triton returned None); "cuda-sim"
    (no mask, no backward) refuses at the call."""
    gen = torch.Generator().manual_seed(8)
    q, k, v = (random_tensor(s, torch.float32, generator=gen) for s in ((2, 2, 6, 16), (2, 2, 9, 16), (2, 2, 9, 16)))
    mask = random_tensor((1, 2, 6, 9), torch.float32, generator=gen).requires_grad_()
    dout = random_tensor(q.shape, torch.float32, generator=gen)
    if backend == "cuda-sim":
        with pytest.raises(NotImplementedError, match="backends that support it"):
            attn.scaled_dot_product_attention(q.half(), k.half(), v.half(), attn_mask=mask, backend=backend)
        return
    (attn.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=backend) * dout).sum().backward()
    mask64 = mask.detach().double().requires_grad_()
    (_math_sdpa(q.double(), k.double(), v.double(), attn_mask=mask64) * dout.double()).sum().backward()
    assert mask.grad is not None
    assert_parity(mask.grad, mask64.grad, None, what="dmask")


@pytest.mark.parametrize("need_weights", [True, False])
def test_item11_mha_without_keys(need_weights):
    """S=0 keys: PyTorch returns out_proj(0) and (B, L, 0) weights; attn raised IndexError from
    amax() with need_weights=True."""
    torch_mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    torch.nn.init.normal_(torch_mha.out_proj.bias)
    mha = attn.MultiheadAttention.from_module(torch_mha, backend="cpu")
    x, empty = torch.randn(2, 3, 16), torch.randn(2, 0, 16)
    out, weights = mha(x, empty, empty, need_weights=need_weights)
    ref_out, ref_weights = torch_mha(x, empty, empty, need_weights=need_weights)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    assert (weights is None) == (ref_weights is None)
    if need_weights:
        assert weights.shape == ref_weights.shape == (2, 3, 0)
