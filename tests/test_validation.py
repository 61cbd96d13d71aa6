"""Bad input raises a clear TypeError/ValueError naming the argument, expected and actual."""
import pytest
import torch

import attn

q = torch.randn(2, 16, 4, 32)
k = torch.randn(2, 24, 2, 32)
v = torch.randn(2, 24, 2, 32)


@pytest.mark.parametrize("backend", ["triton", "torch", "reference"])
@pytest.mark.parametrize(
    "args, kwargs, exc, words",
    [
        ((q.double(), k, v), {}, TypeError, ["'q'", "float64"]),
        ((q, k.half(), v), {}, TypeError, ["'k'", "same dtype"]),
        ((q[0], k, v), {}, ValueError, ["'q'", "4-D", "3-D"]),
        ((q, torch.randn(2, 24, 3, 32), torch.randn(2, 24, 3, 32)), {}, ValueError, ["'k'", "dividing"]),
        ((q, torch.randn(2, 24, 2, 16), torch.randn(2, 24, 2, 16)), {}, ValueError, ["'k'", "head dim 32"]),
        ((q, k, torch.randn(2, 25, 2, 32)), {}, ValueError, ["'v'", "same shape"]),
        ((q, torch.randn(3, 24, 2, 32), torch.randn(3, 24, 2, 32)), {}, ValueError, ["'k'", "batch size 2"]),
        ((torch.randn(2, 16, 4, 300), torch.randn(2, 24, 2, 300), torch.randn(2, 24, 2, 300)), {}, ValueError,
         ["'q'", "1..256", "300"]),
        ((torch.randn(2, 16, 4, 64)[..., ::2], k, v), {}, ValueError, ["'q'", "stride 1", "stride 2"]),
        ((q, k, v), {"window_size": (3,)}, TypeError, ["'window_size'"]),
        ((q, k, v), {"window_size": torch.tensor([2, 0, 1])}, TypeError, ["'window_size'", "shape (3,)"]),
        ((q, k, v), {"softcap": -1.0}, ValueError, ["'softcap'", ">= 0"]),
        ((q, k, v), {"softmax_scale": float("nan")}, ValueError, ["'softmax_scale'", "finite"]),
        ((q, k, v), {"dropout_p": 1.5}, ValueError, ["'dropout_p'"]),
        ((q, k, v), {"alibi_slopes": torch.ones(3)}, ValueError, ["'alibi_slopes'", "(4,)"]),
        ((q, k, v), {"alibi_slopes": torch.ones(4, dtype=torch.float64)}, TypeError, ["'alibi_slopes'", "float32"]),
        (("q", k, v), {}, TypeError, ["'q'", "torch.Tensor", "str"]),
    ],
)
def test_flash_attn_func_rejects(backend, args, kwargs, exc, words):
    with pytest.raises(exc) as info:
        attn.flash_attn_func(*args, backend=backend, **kwargs)
    message = str(info.value)
    assert message.startswith("flash_attn_func: "), message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"attn_mask": torch.ones(3, 16, 24, dtype=torch.bool)}, ValueError, ["'attn_mask'", "broadcastable"]),
        ({"attn_mask": torch.ones(16, 24, dtype=torch.int32)}, TypeError, ["'attn_mask'", "int32"]),
        ({"attn_mask": torch.ones(16, 24, dtype=torch.bool), "is_causal": True}, ValueError, ["'attn_mask'"]),
        ({"scale": "x"}, TypeError, ["'scale'"]),
    ],
)
def test_sdpa_rejects(kwargs, exc, words):
    query, key, value = q.transpose(1, 2), k.repeat_interleave(2, 2).transpose(1, 2), v.repeat_interleave(2, 2).transpose(1, 2)
    with pytest.raises(exc) as info:
        attn.scaled_dot_product_attention(query, key, value, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_sdpa_gqa_needs_enable_gqa():
    with pytest.raises(ValueError, match="enable_gqa"):
        attn.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))


def test_dropout_is_not_implemented():
    with pytest.raises(NotImplementedError, match="dropout_p"):
        attn.flash_attn_func(q, k, v, dropout_p=0.1)
