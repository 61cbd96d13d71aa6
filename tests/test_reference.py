"""The oracle itself, checked against independent implementations.

attn.reference is what every kernel is measured against, so its semantics are pinned here
against PyTorch's own SDPA (top-left causal, masks, GQA) and against hand-derived cases for the
flash-attn conventions PyTorch lacks (bottom-right causal, windows, softcap, ALiBi).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from attn import reference
from attn.testing import random_tensor


def _qkv(b, sq, sk, h, hkv, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (random_tensor((b, sq, h, d), torch.float64, generator=gen),
            random_tensor((b, sk, hkv, d), torch.float64, generator=gen),
            random_tensor((b, sk, hkv, d), torch.float64, generator=gen))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
def test_matches_torch_sdpa_top_left(causal, heads):
    q, k, v = _qkv(2, 37, 53, *heads, 32)
    out, lse = reference.attention(q, k, v, causal=causal, bottom_right=False, dtype=torch.float64)
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=causal, enable_gqa=heads[0] != heads[1]).transpose(1, 2)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    assert lse.shape == (2, heads[0], 37)


def test_matches_torch_sdpa_with_masks():
    q, k, v = _qkv(2, 20, 30, 3, 3, 16, seed=1)
    mask = torch.rand(2, 3, 20, 30, generator=torch.Generator().manual_seed(2)) > 0.4
    mask[..., 0] = True  # PyTorch's math path gives NaN for rows that see nothing
    out, _ = reference.attention(q, k, v, attn_mask=mask, dtype=torch.float64)
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)


def test_bottom_right_causal_equals_top_left_on_the_suffix():
    """Bottom-right causal with Sk > Sq is top-left causal of the last Sq queries over Sk."""
    q, k, v = _qkv(1, 50, 50, 2, 2, 16, seed=3)
    full, _ = reference.attention(q, k, v, causal=True, dtype=torch.float64)
    suffix, _ = reference.attention(q[:, 30:], k, v, causal=True, bottom_right=True, dtype=torch.float64)
    torch.testing.assert_close(suffix, full[:, 30:])


def test_window_visibility_matches_definition():
    keep = reference.visibility(1, 6, 9, window_size=(2, 1))[0, 0]
    off = 9 - 6
    for i in range(6):
        for j in range(9):
            assert bool(keep[i, j]) == (i + off - 2 <= j <= i + off + 1)


def test_fully_masked_rows_and_lse():
    q, k, v = _qkv(1, 8, 3, 1, 1, 8, seed=4)
    out, lse = reference.attention(q, k, v, causal=True, dtype=torch.float64)
    assert torch.equal(out[:, :5], torch.zeros_like(out[:, :5]))
    assert torch.isneginf(lse[..., :5]).all() and torch.isfinite(lse[..., 5:]).all()
    scores = (q[0, 7, 0] @ k[0, :, 0].T) / math.sqrt(8)
    assert torch.allclose(lse[0, 0, 7].double(), torch.logsumexp(scores, 0), atol=1e-6)


def test_softcap_and_alibi_by_hand():
    q, k, v = _qkv(1, 4, 6, 2, 2, 8, seed=5)
    slopes = torch.tensor([0.5, 0.25], dtype=torch.float32)
    out, _ = reference.attention(q, k, v, softcap=3.0, alibi_slopes=slopes, dtype=torch.float64)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    s = 3.0 * torch.tanh(s / 3.0)
    i, j = torch.arange(4).view(4, 1), torch.arange(6).view(1, 6)
    s = s - slopes.double().view(1, 2, 1, 1) * (i + 2 - j).abs()
    want = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)
    torch.testing.assert_close(out, want)


def test_seqlens_k_pads_keys_per_batch():
    q, k, v = _qkv(2, 3, 10, 2, 1, 8, seed=6)
    lens = torch.tensor([4, 10])
    out, _ = reference.attention(q, k, v, causal=True, seqlens_k=lens, dtype=torch.float64)
    first, _ = reference.attention(q[:1], k[:1, :4], v[:1, :4], causal=True, dtype=torch.float64)
    torch.testing.assert_close(out[:1], first)
