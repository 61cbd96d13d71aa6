"""Gradients of the Triton backend (FlashAttention-2 backward) against the oracle.

Every gradient is checked elementwise with the 3x rule of docs/design.md §3:
``ref`` = autograd through :func:`attn.reference.attention` on fp64 copies, ``pt`` = the same in
the input dtype (None for fp32 inputs, which get the tight fp32 bound). Kernel outputs are
poisoned by conftest, so an unwritten gradient element fails as NaN.
"""
from __future__ import annotations

import itertools

import pytest
import torch

import attn
from attn import reference
from attn.testing import assert_parity, random_tensor

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (32, 59, 64, 128, 256)
SEQLENS = ((1, 239), (113, 203), (128, 128), (203, 113), (256, 512), (511, 512))
HEADS = {"mha": (2, 2), "gqa": (4, 2), "mqa": (3, 1)}
MODES = ("causal", "causal_top_left", "full", "window", "softcap")
WINDOW = (48, 16)
SOFTCAP = 2.0

# Default grid: every value of every dimension appears, big shapes spread over dtypes and modes
# (the biggest ones in 16-bit: interpreted fp32 products cost ~4x the time).
DEFAULT_CASES = [
    (torch.float16, 64, (128, 128), "mha", "causal"),
    (torch.bfloat16, 128, (113, 203), "gqa", "causal"),
    (torch.float32, 59, (203, 113), "mqa", "causal_top_left"),
    (torch.float16, 256, (1, 239), "gqa", "window"),
    (torch.bfloat16, 32, (256, 512), "mqa", "softcap"),
    (torch.float32, 128, (113, 203), "mha", "full"),
    (torch.float16, 59, (511, 512), "gqa", "causal_top_left"),
    (torch.bfloat16, 256, (203, 113), "mha", "causal"),
    (torch.float32, 32, (113, 203), "gqa", "window"),
    (torch.bfloat16, 64, (1, 239), "mqa", "causal_top_left"),
    (torch.float32, 64, (128, 128), "gqa", "softcap"),
    (torch.float16, 128, (203, 113), "mqa", "softcap"),
    (torch.bfloat16, 59, (128, 128), "mha", "window"),
    (torch.float32, 256, (128, 128), "mqa", "causal"),
    (torch.float16, 32, (113, 203), "mha", "full"),
]
SLOW_CASES = [c for c in itertools.product(DTYPES, HEAD_DIMS, SEQLENS, HEADS, MODES) if c not in DEFAULT_CASES]


def _case_id(case) -> str:
    dtype, head_dim, (sq, sk), heads, mode = case
    return f"{str(dtype)[6:]}-d{head_dim}-{sq}x{sk}-{heads}-{mode}"


def _inputs(batch, seqlen_q, seqlen_k, n_heads, n_kv_heads, head_dim, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = random_tensor((batch, seqlen_q, n_heads, head_dim), dtype, generator=gen).to(device)
    k = random_tensor((batch, seqlen_k, n_kv_heads, head_dim), dtype, generator=gen).to(device)
    v = random_tensor((batch, seqlen_k, n_kv_heads, head_dim), dtype, generator=gen).to(device)
    dout = random_tensor((batch, seqlen_q, n_heads, head_dim), dtype, generator=gen).to(device)
    return q, k, v, dout


def _mode_options(mode: str) -> dict:
    """Public-API keyword arguments (flash_attn_func) and the matching reference options."""
    return {
        "causal": dict(causal=True),
        "causal_top_left": dict(causal=True, bottom_right=False),
        "full": dict(),
        "window": dict(window_size=WINDOW),
        "softcap": dict(softcap=SOFTCAP),
    }[mode]


def _call_triton(q, k, v, options: dict, **extra):
    """The public API on the Triton backend: SDPA for top-left causal, flash_attn_func otherwise."""
    options = dict(options)
    if options.pop("bottom_right", True) is False:
        out = attn.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=options.pop("causal"),
            enable_gqa=q.shape[2] != k.shape[2], backend="triton", **extra,
        )
        return out.transpose(1, 2)
    return attn.flash_attn_func(q, k, v, backend="triton", **options, **extra)


def _reference_grads(q, k, v, dout, dtype, options: dict, **extra):
    """Gradients of ``sum(out * dout)`` through the oracle computed in ``dtype``."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out, _ = reference.attention(*leaves, dtype=dtype, **options, **extra)
    return torch.autograd.grad(out, leaves, dout.to(dtype))


def _check_grads(q, k, v, dout, options: dict, ref_options: dict, api_extra=None):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = _call_triton(*leaves, options, **(api_extra or {}))
    grads = torch.autograd.grad(out, leaves, dout)
    ref = _reference_grads(q, k, v, dout, torch.float64, ref_options)
    pt = _reference_grads(q, k, v, dout, q.dtype, ref_options) if q.dtype != torch.float32 else (None,) * 3
    return [assert_parity(g, r, p, factor=3.0, what=f"d{name}") for name, g, r, p in zip("qkv", grads, ref, pt)]


def _run_case(case, device):
    dtype, head_dim, (seqlen_q, seqlen_k), heads, mode = case
    n_heads, n_kv_heads = HEADS[heads]
    q, k, v, dout = _inputs(1, seqlen_q, seqlen_k, n_heads, n_kv_heads, head_dim, dtype, device)
    options = _mode_options(mode)
    ref_options = dict(options)
    if "window_size" in ref_options:
        ref_options["window_size"] = tuple(ref_options["window_size"])
    _check_grads(q, k, v, dout, options, ref_options)


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=_case_id)
def test_grad_parity(case, device):
    _run_case(case, device)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=_case_id)
def test_grad_parity_full_grid(case, device):
    _run_case(case, device)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_grad_alibi(dtype, causal, device):
    """ALiBi (per batch and head slopes) is an additive bias: no gradient of its own."""
    q, k, v, dout = _inputs(2, 77, 130, 4, 2, 32, dtype, device, seed=1)
    slopes = torch.rand(2, 4, generator=torch.Generator().manual_seed(2)).to(device)
    options = dict(causal=causal)
    _check_grads(q, k, v, dout, options, dict(options, alibi_slopes=slopes), api_extra=dict(alibi_slopes=slopes))


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_grad_attn_mask(dtype, mask_kind, device):
    """SDPA's attn_mask (broadcast over heads) as an additive bias, including a fully masked row
    (its gradients must be 0, not NaN)."""
    q, k, v, dout = _inputs(2, 70, 90, 4, 4, 64, dtype, device, seed=3)
    gen = torch.Generator().manual_seed(4)
    keep = torch.rand(2, 1, 70, 90, generator=gen) > 0.3
    keep[:, :, 5] = False
    mask = keep if mask_kind == "bool" else torch.randn(2, 1, 70, 90, generator=gen).masked_fill(~keep, float("-inf"))
    mask = mask.to(device)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = attn.scaled_dot_product_attention(*(t.transpose(1, 2) for t in leaves), attn_mask=mask, backend="triton")
    grads = torch.autograd.grad(out.transpose(1, 2), leaves, dout)
    ref = _reference_grads(q, k, v, dout, torch.float64, dict(bottom_right=False, attn_mask=mask))
    pt = _reference_grads(q, k, v, dout, dtype, dict(bottom_right=False, attn_mask=mask)) \
        if dtype != torch.float32 else (None,) * 3
    for name, g, r, p in zip("qkv", grads, ref, pt):
        assert_parity(g, r, p, factor=3.0, what=f"d{name}")
    assert torch.all(grads[0][:, 5] == 0)


def test_grad_through_lse(device):
    """The LSE output is differentiable too: d(lse)/d(scores) = P enters as Delta -= dLSE."""
    q, k, v, dout = _inputs(1, 100, 140, 2, 1, 32, torch.float32, device, seed=5)
    dlse = random_tensor((1, 2, 100), torch.float32, generator=torch.Generator().manual_seed(6)).to(device)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, lse, _ = attn.flash_attn_func(*leaves, causal=True, return_attn_probs=True, backend="triton")
    grads = torch.autograd.grad((out, lse), leaves, (dout, dlse))
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = reference.attention(*ref_leaves, causal=True, dtype=torch.float64)
    ref = torch.autograd.grad((ref_out, ref_lse), ref_leaves, (dout.double(), dlse.double()))
    for name, g, r in zip("qkv", grads, ref):
        assert_parity(g, r, None, factor=3.0, what=f"d{name}")


def test_grad_strided_inputs(device):
    """q, k, v as strided views of packed qkv; dout with stride 0 (from ``out.sum()``)."""
    gen = torch.Generator().manual_seed(7)
    qkv = random_tensor((2, 96, 3, 4, 32), torch.float16, generator=gen).to(device)
    q, k, v = qkv.unbind(2)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    packed = qkv.detach().clone().requires_grad_()
    out = attn.flash_attn_func(*packed.unbind(2), causal=True, backend="triton")
    (grad_packed,) = torch.autograd.grad(out.float().sum(), packed)
    dout = torch.ones_like(q)
    ref = _reference_grads(*leaves, dout, torch.float64, dict(causal=True))
    pt = _reference_grads(*leaves, dout, torch.float16, dict(causal=True))
    for name, g, r, p in zip("qkv", grad_packed.unbind(2), ref, pt):
        assert_parity(g, r, p, factor=3.0, what=f"d{name}")


def test_backward_is_bitwise_reproducible(device):
    """No atomics anywhere: backward passes give identical bits run to run, with
    ``deterministic`` True or False (GQA group reduction included)."""
    q, k, v, dout = _inputs(1, 150, 170, 4, 1, 64, torch.bfloat16, device, seed=8)

    def grads(deterministic):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = attn.flash_attn_func(*leaves, causal=True, deterministic=deterministic, backend="triton")
        return torch.autograd.grad(out, leaves, dout)

    first = grads(True)
    for again in (grads(True), grads(False)):
        for a, b in zip(first, again):
            assert not torch.isnan(a).any()
            assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_grad_parity_gpu(dtype, mode, device):
    """On a GPU: compiled kernels, batch 2, every head dim, long sequences."""
    for head_dim in HEAD_DIMS:
        q, k, v, dout = _inputs(2, 1000, 1531, 8, 2, head_dim, dtype, device, seed=head_dim)
        options = _mode_options(mode)
        _check_grads(q, k, v, dout, options, dict(options))


@pytest.mark.gpu
def test_backward_is_bitwise_reproducible_gpu(device):
    q, k, v, dout = _inputs(4, 2048, 2048, 16, 2, 128, torch.bfloat16, device, seed=9)

    def grads():
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = attn.flash_attn_func(*leaves, causal=True, deterministic=True, backend="triton")
        return torch.autograd.grad(out, leaves, dout)

    first = grads()
    for _ in range(3):
        for a, b in zip(first, grads()):
            assert torch.equal(a, b)
