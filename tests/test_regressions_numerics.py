"""Regression tests for the kernel-numerics faults of issue 15 (items 2, 5, 6, 7).

Each test replays the issue's input on every backend the call applies to. Expected values come
from PyTorch computed independently of attn (``torch.softmax`` / ``F.scaled_dot_product_attention``
in fp64, one row at a time over the keys the row sees), never from attn itself.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import attn
from attn.testing import assert_parity, random_tensor

FORWARD_BACKENDS = ["cpu", "triton", "cuda-sim", "torch", "reference"]
CUDA_HIDDEN_V_GAP = pytest.mark.xfail(
    strict=True, reason="the CUDA kernels still multiply 0 * NaN for hidden keys of a partly visible tile "
                        "(docs/design.md §3, README Known limits)")
MASK_BACKENDS = ["cpu", "triton", "torch", "reference"]  # forward with attn_mask
DECODE_BACKENDS = ["cpu", "triton", "cuda-sim", "reference"]


def _require(backend):
    info = attn.available_backends()[backend]
    if not info.available:
        pytest.skip(f"backend {backend!r} does not run here: {info.detail}")


def _rows_over_visible(q, k, v, visible, scale):
    """fp64 ``(Sq, D)`` output of one head: row ``i`` is softmax over the keys ``visible[i]``
    marks, times those keys' value rows only (hidden rows never enter the sum)."""
    q, k, v = q.double(), k.double(), v.double()
    out = torch.zeros(q.shape[0], v.shape[1], dtype=torch.float64)
    for i in range(q.shape[0]):
        keys = visible[i].nonzero().flatten()
        if keys.numel():
            p = torch.softmax((q[i] @ k[keys].T) * scale, dim=-1)
            out[i] = p @ v[keys]
    return out


def _assert_nonfinite_then_parity(out, expected, dtype):
    """NaN and +-Inf exactly where ``expected`` has them; the finite part by the parity rule
    (``pt``: the expected values rounded to the input dtype stand for same-precision torch)."""
    out = out.double()
    assert torch.equal(torch.isnan(out), torch.isnan(expected)), "NaN pattern differs from the oracle"
    assert torch.equal(torch.isposinf(out), torch.isposinf(expected))
    assert torch.equal(torch.isneginf(out), torch.isneginf(expected))
    finite = torch.isfinite(expected)
    pt = None if dtype == torch.float32 else expected[finite].to(dtype)
    assert_parity(out[finite], expected[finite], pt)


# ---- item 2: a large finite additive mask is a normal softmax, not "no key visible" -------------

@pytest.mark.parametrize("backend", MASK_BACKENDS)
def test_finfo_min_mask_is_not_an_empty_row_issue_input(backend):
    _require(backend)
    q, k = torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 2, 1)
    v = torch.tensor([1.0, 3.0]).view(1, 1, 2, 1)
    mask = torch.full((1, 1, 1, 2), -3.4028e38)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double())
    assert expected.item() == 2.0
    out = attn.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=backend)
    assert out.item() == 2.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", MASK_BACKENDS)
def test_finfo_min_mask_left_padding(backend, dtype):
    """transformers' left-padded causal mask from finfo(dtype).min: row 0 masks every key with
    finfo.min (torch averages v over all keys), row 1 sees keys 3.. only; a row with two huge
    finite values puts all weight on the larger."""
    _require(backend)
    gen = torch.Generator().manual_seed(15)
    q, k, v = (random_tensor((1, 2, 6, 16), dtype, generator=gen) for _ in range(3))
    lo = torch.finfo(dtype).min
    mask = torch.zeros(1, 1, 6, 6, dtype=dtype)
    mask[..., :3] = lo  # left padding: keys 0..2 are padding
    mask = mask + torch.triu(torch.full((6, 6), lo, dtype=torch.float32), 1).to(dtype)
    mask[..., 0, :] = lo  # the padding query itself sees only finfo.min
    mask[..., 1, :] = torch.tensor([lo, lo / 2, lo, lo, lo, lo], dtype=torch.float32).to(dtype)
    out = attn.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=backend)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double())
    pt = None if dtype == torch.float32 else F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.isfinite(ref).all()
    assert_parity(out, ref, pt)


# ---- item 6: a key hidden from a row never affects it, even holding NaN or Inf -----------------

@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("backend", [pytest.param(b, marks=CUDA_HIDDEN_V_GAP) if b == "cuda-sim" else b
                                     for b in FORWARD_BACKENDS])
def test_hidden_value_row_does_not_leak_causal(backend, bad):
    """The issue's input: fp16 (1, 200, 1, 32), v[150] non-finite, causal. Rows 0..149 cannot
    see key 150 and must be finite; rows 150.. see it (NaN, or +Inf with p > 0)."""
    _require(backend)
    gen = torch.Generator().manual_seed(6)
    q, k, v = (random_tensor((1, 200, 1, 32), torch.float16, generator=gen) for _ in range(3))
    v[0, 150, 0] = bad
    out = attn.flash_attn_func(q, k, v, causal=True, backend=backend)
    visible = torch.ones(200, 200, dtype=torch.bool).tril()
    expected = _rows_over_visible(q[0, :, 0], k[0, :, 0], v[0, :, 0], visible, 32 ** -0.5)
    assert torch.isfinite(expected[:150]).all() and not torch.isfinite(expected[150:]).any()
    _assert_nonfinite_then_parity(out[0, :, 0], expected, torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("backend", MASK_BACKENDS)
def test_hidden_value_row_does_not_leak_bool_mask(backend, dtype):
    """A bool mask hides keys 2 and 5 (NaN and -Inf value rows) from some rows only."""
    _require(backend)
    gen = torch.Generator().manual_seed(7)
    q, k, v = (random_tensor((1, 1, 8, 16), dtype, generator=gen) for _ in range(3))
    v[0, 0, 2, 3] = math.nan
    v[0, 0, 5, :] = -math.inf
    keep = torch.rand(8, 8, generator=gen) > 0.3
    keep[:4, 2] = False
    keep[4:, 5] = False
    keep[:, 0] = True
    out = attn.scaled_dot_product_attention(q, k, v, attn_mask=keep, backend=backend)
    expected = _rows_over_visible(q[0, 0], k[0, 0], v[0, 0], keep, 16 ** -0.5)
    assert torch.isfinite(expected[:, :3]).any() and torch.isnan(expected[:, 3]).any()
    _assert_nonfinite_then_parity(out[0, 0], expected, dtype)


# ---- item 7 (and the cache part of item 6): slots past cache_seqlens never reach the output ----

@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_decode_ignores_slots_past_cache_seqlens_issue_input(backend):
    _require(backend)
    q, k_cache = torch.ones(1, 1, 1, 1).half(), torch.ones(1, 2, 1, 1).half()
    v_cache = torch.tensor([1.0, math.nan]).half().view(1, 2, 1, 1)
    seqlens = torch.tensor([1], dtype=torch.int32)
    out = attn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, backend=backend)
    assert out.item() == 1.0


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
@pytest.mark.parametrize("backend", DECODE_BACKENDS)
def test_decode_ignores_garbage_past_cache_seqlens(backend, paged):
    """Sequences of 21 and 5 keys in a cache of 32 slots (paged: pages of 16); every unused slot
    and the unused page hold NaN/Inf, as serving engines leave them. Two causal queries each."""
    _require(backend)
    gen = torch.Generator().manual_seed(8)
    lengths = [21, 5]
    q = random_tensor((2, 2, 2, 32), torch.float16, generator=gen)
    k = random_tensor((2, 32, 1, 32), torch.float16, generator=gen)
    v = random_tensor((2, 32, 1, 32), torch.float16, generator=gen)
    for b, n in enumerate(lengths):
        k[b, n:] = math.inf
        v[b, n:] = math.nan
        v[b, n + 1:] = -math.inf
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    kw = {}
    if paged:  # sequence b's pages: 2b, 2b+1 of a pool of 4 pages of 16
        k_cache, v_cache = k.view(4, 16, 1, 32), v.view(4, 16, 1, 32)
        kw["block_table"] = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    else:
        k_cache, v_cache = k, v
    out = attn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, causal=True,
                                       backend=backend, **kw)
    for b, n in enumerate(lengths):
        visible = torch.arange(32)[None, :] <= (torch.arange(2)[:, None] + n - 2)
        for h in range(2):
            expected = _rows_over_visible(q[b, :, h], k[b, :, 0], v[b, :, 0], visible, 32 ** -0.5)
            assert torch.isfinite(expected).all()
            _assert_nonfinite_then_parity(out[b, :, h], expected, torch.float16)


@pytest.mark.parametrize("bad", [math.nan, -math.inf], ids=["nan", "-inf"])
@pytest.mark.parametrize("backend", [pytest.param(b, marks=CUDA_HIDDEN_V_GAP) if b == "cuda-sim" else b
                                     for b in DECODE_BACKENDS])
def test_decode_hidden_value_row_does_not_leak(backend, bad):
    """Decode with two causal new tokens over 11 keys: key 10 (the second token's own) is hidden
    from the first token, so its non-finite value must reach the second token only; key 2 is
    left of both tokens' window (6 keys back) and is all NaN."""
    _require(backend)
    gen = torch.Generator().manual_seed(9)
    q = random_tensor((1, 2, 4, 32), torch.float16, generator=gen)
    k = random_tensor((1, 16, 2, 32), torch.float16, generator=gen)
    v = random_tensor((1, 16, 2, 32), torch.float16, generator=gen)
    v[0, 10, :, 5] = bad
    v[0, 2] = math.nan
    seqlens = torch.tensor([11], dtype=torch.int32)
    out = attn.flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens, causal=True, window_size=(6, 0),
                                       backend=backend)
    pos = torch.arange(16)
    visible = (pos[None, :] <= torch.tensor([9, 10])[:, None]) & (pos[None, :] >= torch.tensor([3, 4])[:, None])
    for h in range(4):
        expected = _rows_over_visible(q[0, :, h], k[0, :, h // 2], v[0, :, h // 2], visible, 32 ** -0.5)
        assert torch.isfinite(expected[0]).all() and not torch.isfinite(expected[1, 5])
        _assert_nonfinite_then_parity(out[0, :, h], expected, torch.float16)


# ---- item 5: cpu fp32 accuracy for large scale * D --------------------------------------------

@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_fp32_rule_holds_at_large_scale(backend):
    """The issue's input: q, k, v (1, 1, 16, 64) fp32, seed 4, softmax scale 10, against the fp32
    rule of docs/design.md §3 (the cpu kernel was 5.3e-5 off, bound 4.2e-5)."""
    _require(backend)
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 1, 16, 64) for _ in range(3))
    out = attn.scaled_dot_product_attention(q, k, v, scale=10.0, backend=backend)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=10.0)
    assert_parity(out, ref, None)
