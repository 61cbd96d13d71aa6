"""Backend selection: names, the context manager, availability reasons, capability errors."""
import pytest
import torch

import attn
from attn.testing import assert_parity

q = torch.randn(1, 9, 2, 16)
k = torch.randn(1, 11, 2, 16)
v = torch.randn(1, 11, 2, 16)


def test_available_backends_explains_each():
    infos = attn.available_backends()
    assert {"triton", "torch", "reference"} <= set(infos)
    for name, info in infos.items():
        assert info.name == name and isinstance(info.available, bool) and info.detail
    assert infos["torch"].available and infos["reference"].available


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="argument 'backend'.*'nope'"):
        attn.flash_attn_func(q, k, v, backend="nope")
    with pytest.raises(ValueError, match="'name'"):
        with attn.use_backend("nope"):
            pass


def test_unsupported_option_names_option_and_supporters():
    with pytest.raises(NotImplementedError) as info:
        attn.flash_attn_func(q, k, v, softcap=1.0, backend="torch")
    message = str(info.value)
    assert "'softcap'" in message and "'torch'" in message and "reference" in message


def test_use_backend_applies_and_restores():
    with attn.use_backend("torch"):
        with pytest.raises(NotImplementedError, match="'torch'"):
            attn.flash_attn_func(q, k, v, return_attn_probs=True)
    out, lse, _ = attn.flash_attn_func(q, k, v, return_attn_probs=True)  # auto: falls through to reference
    assert lse is not None and out.shape == q.shape


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("kwargs", [{}, {"causal": True}, {"window_size": (3, 2)},
                                    {"alibi_slopes": torch.tensor([0.5, 0.1])}])
def test_pytorch_backends_agree_with_the_oracle(backend, kwargs):
    qh, kh, vh = (t.half() for t in (q, k, v))
    out = attn.flash_attn_func(qh, kh, vh, backend=backend, **kwargs)
    ref = attn.reference.attention(qh, kh, vh, dtype=torch.float64, **kwargs)[0]
    pt = attn.reference.attention(qh, kh, vh, dtype=torch.float16, **kwargs)[0]
    assert_parity(out, ref, pt)


def test_torch_backend_zeroes_rows_that_see_nothing():
    qq = torch.randn(1, 20, 2, 16)
    out = attn.flash_attn_func(qq, k[:, :5], v[:, :5], causal=True, backend="torch")
    assert torch.equal(out[:, :15], torch.zeros_like(out[:, :15])) and not torch.isnan(out).any()


def test_auto_on_cpu_never_picks_the_interpreter():
    """The tests run with TRITON_INTERPRET=1, so "triton" is usable on CPU, but auto skips it."""
    from attn.backends import registry

    assert attn.available_backends()["triton"].available
    picked = registry.select("test", "auto", "cpu", "forward", ["causal"])
    assert picked.name != "triton"
