"""The split-count heuristic and the LSE merge that split-KV decode is built on."""
import math

import pytest
import torch

import attn
from attn import reference
from attn.core.splits import MAX_SPLITS, NOMINAL_SM_COUNT, num_splits_heuristic
from attn.testing import assert_parity, random_tensor


def _efficiency(programs, splits, sms):
    waves = programs * splits / sms
    return waves / math.ceil(waves)


@pytest.mark.parametrize("batch,n_kv_heads,n_q_tiles,n_key_tiles", [
    (1, 1, 1, 65), (1, 8, 1, 512), (4, 8, 1, 64), (3, 2, 2, 13), (2, 1, 8, 4), (16, 8, 1, 2048), (1, 1, 1, 1)])
def test_heuristic_fills_waves(batch, n_kv_heads, n_q_tiles, n_key_tiles):
    sms = NOMINAL_SM_COUNT
    programs = batch * n_kv_heads * n_q_tiles
    splits = num_splits_heuristic(batch, n_kv_heads, n_q_tiles, n_key_tiles, sms)
    assert 1 <= splits <= min(MAX_SPLITS, max(n_key_tiles, 1))
    if programs >= 0.8 * sms or n_key_tiles == 1:
        assert splits == 1
        return
    def eligible(s):  # a split count that does not shorten the longest split only adds combine work
        return s == 1 or math.ceil(n_key_tiles / s) != math.ceil(n_key_tiles / (s - 1))

    candidates = [s for s in range(1, min(MAX_SPLITS, sms, n_key_tiles) + 1) if eligible(s)]
    best = max(_efficiency(programs, s, sms) for s in candidates)
    assert eligible(splits) and _efficiency(programs, splits, sms) >= 0.85 * best
    assert all(_efficiency(programs, s, sms) < 0.85 * best for s in candidates if s < splits)


def test_heuristic_splits_a_lone_sequence_and_not_a_full_batch():
    assert num_splits_heuristic(1, 8, 1, 512, 132) > 1
    assert num_splits_heuristic(64, 8, 1, 512, 132) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_merge_of_two_key_halves_equals_attention_over_all(dtype):
    gen = torch.Generator().manual_seed(0)
    q = random_tensor((2, 3, 4, 32), dtype, generator=gen)
    k = random_tensor((2, 50, 2, 32), dtype, generator=gen)
    v = random_tensor((2, 50, 2, 32), dtype, generator=gen)
    out_a, lse_a = reference.attention(q, k[:, :20], v[:, :20], dtype=torch.float32)
    out_b, lse_b = reference.attention(q, k[:, 20:], v[:, 20:], dtype=torch.float32)
    out, lse = attn.merge_attention_states(out_a.to(dtype), lse_a, out_b.to(dtype), lse_b)
    ref, ref_lse = reference.attention(q, k, v, dtype=torch.float64)
    pt, pt_lse = (None, None) if dtype == torch.float32 else reference.attention(q, k, v, dtype=dtype)
    assert out.dtype == dtype
    assert_parity(out, ref, pt, factor=3)
    assert_parity(lse, ref_lse, pt_lse, factor=3, what="lse")


def test_merge_with_an_empty_side():
    """A side that saw no key (lse -inf, out 0) has weight 0; both empty -> 0 and -inf, no NaN."""
    gen = torch.Generator().manual_seed(1)
    out_a = random_tensor((1, 2, 3, 8), torch.float32, generator=gen)
    lse_a = random_tensor((1, 3, 2), torch.float32, generator=gen)
    empty_out, empty_lse = torch.zeros_like(out_a), torch.full_like(lse_a, float("-inf"))
    out, lse = attn.merge_attention_states(out_a, lse_a, empty_out, empty_lse)
    assert torch.allclose(out, out_a, rtol=0, atol=1e-6) and torch.allclose(lse, lse_a, rtol=0, atol=1e-6)
    out, lse = attn.merge_attention_states(empty_out, empty_lse, empty_out, empty_lse)
    assert (out == 0).all() and torch.isneginf(lse).all()


def test_merge_rejects_mismatched_inputs():
    out = torch.randn(1, 2, 3, 8)
    lse = torch.randn(1, 3, 2)
    with pytest.raises(ValueError, match="merge_attention_states: argument 'lse_b' expected shape"):
        attn.merge_attention_states(out, lse, out, lse.transpose(1, 2))
    with pytest.raises(TypeError, match="merge_attention_states: argument 'lse_a' expected dtype float32"):
        attn.merge_attention_states(out, lse.half(), out, lse)


def test_partial_traffic_caps_splits():
    """Short caches with many query rows per program split less: the fp32 partials written and
    read back stay within a quarter of the K/V bytes read."""
    from attn.core.splits import max_splits_for_traffic

    cap = max_splits_for_traffic(capacity=1024, head_dim=128, elem_bytes=2, rows_per_program=64)
    assert cap * 2 * 64 * 129 * 4 <= 0.25 * 2 * 1024 * 128 * 2 < (cap + 1) * 2 * 64 * 129 * 4
    assert num_splits_heuristic(1, 1, 1, 16, 132, max_splits=cap) <= cap
    assert max_splits_for_traffic(capacity=1, head_dim=16, elem_bytes=2, rows_per_program=64) == 1
