"""attn.CausalSelfAttention with attn.KVCache, and the mini GPT in attn.models.

Decoding token by token (prefill on the fused forward, then the decode kernel) must equal one
causal forward over the whole sequence; the oracle is the same module on the "reference"
backend in fp32, the same-dtype term the module on PyTorch's SDPA ("torch").
"""
import copy

import pytest
import torch

import attn
from attn.models import GPT, GPTConfig
from attn.testing import assert_parity

E, H = 64, 4


def _module(num_kv_heads, backend, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    m = attn.CausalSelfAttention(E, H, num_kv_heads, backend=backend)
    return m.to(dtype)


def _incremental(module, x, chunks, page_size):
    """Runs ``x (B, L, E)`` through ``module`` in chunks (the first is the prefill)."""
    batch, seqlen, _ = x.shape
    cache = attn.KVCache(1, batch, seqlen, module.num_kv_heads, module.head_dim, dtype=x.dtype,
                         device=x.device, page_size=page_size)
    outs, start = [], 0
    for size in chunks:
        outs.append(module(x[:, start:start + size], cache))
        start += size
    assert start == seqlen and cache.lengths(0) == [seqlen] * batch
    return torch.cat(outs, dim=1)


def _oracle(module, x):
    ref = copy.deepcopy(module).float()
    ref.backend = "reference"
    with torch.no_grad():
        return ref(x.float())


# (num_kv_heads, dtype, chunks after the prefill, page_size): pairwise over GQA/MHA/MQA, dtypes,
# single-token and multi-token decode steps, contiguous and paged caches.
CASES = [
    (2, torch.float32, [4] + [1] * 6, None),
    (4, torch.float16, [3, 1, 1, 3, 1, 1], 4),
    (1, torch.bfloat16, [5, 1, 2, 1, 1], None),
    (2, torch.float16, [1] * 10, None),
    (4, torch.float32, [6, 2, 2], 3),
]


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("num_kv_heads,dtype,chunks,page_size", CASES)
def test_decode_token_by_token_equals_causal_forward(backend, num_kv_heads, dtype, chunks, page_size, device):
    module = _module(num_kv_heads, backend, dtype).to(device)
    x = torch.randn(2, sum(chunks), E, device=device).to(dtype)
    with torch.no_grad():
        full = module(x)
        steps = _incremental(module, x, chunks, page_size)
        pt = None
        if dtype != torch.float32:
            same_dtype = copy.deepcopy(module)
            same_dtype.backend = "torch"
            pt = same_dtype(x)
    ref = _oracle(module, x)
    assert_parity(full, ref, pt, what="full causal forward")
    assert_parity(steps, ref, pt, factor=3.0, what="prefill + decode")  # 3x: split decode


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_gradients_match_reference(num_kv_heads):
    """Training path (no cache): gradients of the input and every parameter through the Triton
    backward equal the oracle's (fp32 rule)."""
    x = torch.randn(2, 9, E)
    grad_out = torch.randn(2, 9, E)
    grads = []
    for backend in ("triton", "reference"):
        module = _module(num_kv_heads, backend)
        xi = x.clone().requires_grad_()
        module(xi).backward(grad_out)
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
    names = ["x"] + [n for n, _ in _module(num_kv_heads, None).named_parameters()]
    for name, got, want in zip(names, *grads):
        assert_parity(got, want.double(), None, factor=3.0, what=f"grad {name}")


def test_bad_arguments():
    with pytest.raises(ValueError, match="argument 'num_kv_heads' expected a divisor of num_heads=4, got 3"):
        attn.CausalSelfAttention(E, H, 3)
    with pytest.raises(ValueError, match="argument 'num_heads' expected a divisor of embed_dim=64, got 5"):
        attn.CausalSelfAttention(E, 5)
    with pytest.raises(ValueError, match=r"argument 'x' expected \(B, L, 64\)"):
        attn.CausalSelfAttention(E, H)(torch.randn(2, 3, E + 1))


def _gpt(backend, seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=64, max_seqlen=32, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64)
    return GPT(config, backend=backend).eval()


@pytest.mark.parametrize("page_size", [None, 4])
def test_gpt_generates_identically_on_triton_and_reference(page_size):
    prompt = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    want = _gpt("reference").generate(prompt, 10, use_cache=False)
    got = _gpt("triton").generate(prompt, 10, page_size=page_size)
    assert got.shape == (2, 16)
    assert torch.equal(got[:, :6], prompt)
    assert torch.equal(got, want), f"{got.tolist()} != {want.tolist()}"


def test_gpt_logits_with_cache_match_full_forward():
    model = _gpt("reference")
    idx = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(idx)
        cache = model.make_cache(3, 12)
        steps = torch.cat([model(idx[:, :5], cache)] + [model(idx[:, i:i + 1], cache) for i in range(5, 12)], dim=1)
    assert_parity(steps, full.double(), None)


def test_gpt_rejects_sequences_past_max_seqlen():
    model = _gpt("reference")
    with pytest.raises(ValueError, match="GPT.forward: argument 'idx' expected at most 32 positions"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="argument 'max_new_tokens' expected an int >= 0"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), -1)


def test_prefill_runs_the_forward_kernel_and_decode_the_decode_kernel(monkeypatch):
    import attn.api.kvcache
    import attn.modules.causal_self_attention as csa

    calls = []
    def counting(name, original):
        def wrapper(q, *args, **kwargs):
            calls.append((name, q.shape[1]))
            return original(q, *args, **kwargs)
        return wrapper

    for mod, name in ((csa, "flash_attn_func"), (attn.api.kvcache, "flash_attn_with_kvcache")):
        monkeypatch.setattr(mod, name, counting(name, getattr(mod, name)))
    module = _module(2, "reference")
    x = torch.randn(1, 7, E)
    with torch.no_grad():
        _incremental(module, x, [5, 1, 1], None)
    assert calls == [("flash_attn_func", 5), ("flash_attn_with_kvcache", 1), ("flash_attn_with_kvcache", 1)]
