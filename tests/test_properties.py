"""Property-based parity: hypothesis searches shapes, strides and options for disagreements
between each executable backend and attn.reference.

Default runs draw a bounded number of examples per backend (CI budget); ``-m slow`` draws many
more. Failures hypothesis finds are added below as ``@example`` regression cases.
"""
import zlib

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import attn
from attn import _backends as _registry
from attn.testing import assert_parity, random_tensor

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _backends():
    """Backends that can execute forward calls on CPU tensors in this session."""
    return [name for name in _registry.names() if _registry.usable(name, "cpu")]


@st.composite
def forward_cases(draw, max_len=600):
    n_kv_heads = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 2, 4]))
    causal = draw(st.booleans())
    left = draw(st.sampled_from([-1, 0, 1, 17, 200]))
    right = draw(st.sampled_from([-1, 0, 5, 64]))
    return dict(
        batch=draw(st.integers(1, 2)),
        seqlen_q=draw(st.integers(1, max_len)),
        seqlen_k=draw(st.integers(1, max_len)),
        n_kv_heads=n_kv_heads,
        n_heads=n_kv_heads * group,
        head_dim=draw(st.integers(1, 256)),
        dtype=draw(st.sampled_from(DTYPES)),
        causal=causal,
        window=(left, right),
        softcap=draw(st.sampled_from([0.0, 0.0, 1.5, 30.0])),
        layout=draw(st.sampled_from(["bshd", "bhsd", "padded"])),
        scale=draw(st.sampled_from([None, 0.05, 1.0])),
    )


def _make(shape, dtype, layout, gen):
    """A tensor of logical shape (B, S, H, D) in one of three memory layouts."""
    b, s, h, d = shape
    if layout == "bhsd":
        return random_tensor((b, h, s, d), dtype, generator=gen).transpose(1, 2)
    if layout == "padded":  # a slice of a larger buffer: odd batch/seq/head strides and an offset
        big = random_tensor((b + 1, s + 3, h + 1, d + 5), dtype, generator=gen)
        return big[1:, 2:2 + s, 1:, 3:3 + d]
    return random_tensor(shape, dtype, generator=gen)


def check_forward(case, backend):
    gen = torch.Generator().manual_seed(zlib.crc32(repr(sorted(case.items())).encode()))
    b, sq, sk, h, hkv, d = (case[k] for k in ("batch", "seqlen_q", "seqlen_k", "n_heads", "n_kv_heads", "head_dim"))
    q = _make((b, sq, h, d), case["dtype"], case["layout"], gen)
    k = _make((b, sk, hkv, d), case["dtype"], case["layout"], gen)
    v = _make((b, sk, hkv, d), case["dtype"], case["layout"], gen)
    kwargs = dict(causal=case["causal"], window_size=case["window"], softcap=case["softcap"],
                  softmax_scale=case["scale"])
    try:
        out = attn.flash_attn_func(q, k, v, backend=backend, **kwargs)
    except NotImplementedError as exc:  # an option this backend declares unsupported
        assert "option" in str(exc)
        return
    ref = attn.reference.attention(q, k, v, dtype=torch.float64, **kwargs)[0]
    pt = None if case["dtype"] == torch.float32 else attn.reference.attention(q, k, v, dtype=case["dtype"], **kwargs)[0]
    assert_parity(out, ref, pt, what=f"{backend} {case}")


@pytest.mark.parametrize("backend", _backends())
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=forward_cases(max_len=300))
@example(case=dict(batch=1, seqlen_q=1, seqlen_k=1, n_kv_heads=1, n_heads=1, head_dim=1, dtype=torch.float16,
                   causal=True, window=(-1, -1), softcap=0.0, layout="padded", scale=None))
def test_forward_matches_reference(backend, case):
    check_forward(case, backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", _backends())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=forward_cases())
def test_forward_matches_reference_deep(backend, case):
    check_forward(case, backend)


@pytest.mark.parametrize("backend", _backends())
def test_forward_is_deterministic(backend):
    gen = torch.Generator().manual_seed(11)
    q = random_tensor((2, 130, 4, 64), torch.float16, generator=gen)
    k = random_tensor((2, 190, 2, 64), torch.float16, generator=gen)
    v = random_tensor((2, 190, 2, 64), torch.float16, generator=gen)
    first = attn.flash_attn_func(q, k, v, causal=True, backend=backend)
    second = attn.flash_attn_func(q, k, v, causal=True, backend=backend)
    assert torch.equal(first, second)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("edge", ["identical_keys", "dominant_key", "one_key", "head_dim_1"])
def test_numerical_edges(backend, edge):
    gen = torch.Generator().manual_seed(12)
    b, sq, sk, h, d = 1, 33, 70, 2, 32
    if edge == "one_key":
        sk = 1
    if edge == "head_dim_1":
        d = 1
    q = random_tensor((b, sq, h, d), torch.float16, generator=gen)
    k = random_tensor((b, sk, h, d), torch.float16, generator=gen)
    v = random_tensor((b, sk, h, d), torch.float16, generator=gen)
    if edge == "identical_keys":  # uniform attention: the output is the mean of v
        k = k[:, :1].expand(b, sk, h, d).contiguous()
    if edge == "dominant_key":  # one key wins by a logit margin of ~1e4: one-hot attention
        k = k.clone()
        k[:, 17] = (q.float().mean(1) * 300).clamp(-6e4, 6e4).half()
    out = attn.flash_attn_func(q, k, v, backend=backend)
    ref = attn.reference.attention(q, k, v, dtype=torch.float64)[0]
    pt = attn.reference.attention(q, k, v, dtype=torch.float16)[0]
    assert_parity(out, ref, pt)
    if edge == "identical_keys":
        torch.testing.assert_close(out.float(), v.float().mean(1, keepdim=True).expand_as(out), atol=2e-3, rtol=0)


@pytest.mark.parametrize("backend", _backends())
def test_nan_inputs_propagate_without_crashing(backend):
    """Documented behaviour: NaN in q/k/v yields NaN in the affected rows; nothing crashes."""
    q = torch.randn(1, 8, 2, 16, dtype=torch.float16)
    k = torch.randn(1, 8, 2, 16, dtype=torch.float16)
    v = torch.randn(1, 8, 2, 16, dtype=torch.float16)
    q[0, 3, 1, 0] = float("nan")
    out = attn.flash_attn_func(q, k, v, backend=backend)
    assert torch.isnan(out[0, 3, 1]).all()
    assert not torch.isnan(out[0, :3]).any() and not torch.isnan(out[0, 3, 0]).any()
