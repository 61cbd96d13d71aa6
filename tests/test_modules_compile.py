"""torch.compile(fullgraph=True) over attn's modules: no graph breaks, same results as eager.

``aot_eager`` runs Dynamo and AOTAutograd (fake tensors through the ops' fake implementations,
the backward graph through their autograd registration) without generating code, so a graph
break or a missing fake implementation fails here exactly as it would under Inductor.
"""
import copy

import pytest
import torch
from torch import nn
from torch._dynamo.backends.registry import lookup_backend

import attn
from attn.models import GPT, GPTConfig
from attn.ops.decode import flash_attn_decode
from attn.testing import assert_parity

E, H, B, L = 32, 4, 2, 7


class CaptureGraphs:
    """A torch.compile backend: records each Dynamo graph's code, then runs ``aot_eager``."""

    def __init__(self):
        self.codes = []

    def __call__(self, gm, example_inputs):
        self.codes.append(gm.code)
        return lookup_backend("aot_eager")(gm, example_inputs)


def _compiled_matches_eager(module, make_inputs, call, grad: bool, attn_ops: bool = True):
    """Runs ``call(module, *inputs)`` eagerly and compiled (fullgraph); compares outputs and,
    with ``grad``, the gradients of the inputs and parameters. One graph; with ``attn_ops`` it
    holds attn's custom ops (the "reference" backend is plain PyTorch, traced through)."""
    results, base, capture = [], make_inputs(), CaptureGraphs()
    for compiled in (False, True):
        m = copy.deepcopy(module)
        inputs = [t.clone().requires_grad_(grad and t.is_floating_point()) for t in base]
        fn = torch.compile(call, fullgraph=True, backend=capture) if compiled else call
        with torch.set_grad_enabled(grad):
            out = fn(m, *inputs)
        got = [out]
        if grad:
            out.backward(torch.ones_like(out))
            got += [t.grad for t in inputs if t.requires_grad] + [p.grad for p in m.parameters()]
        results.append(got)
    for i, (want, got) in enumerate(zip(*results)):
        assert_parity(got, want.double(), None, what=f"result {i}")
    assert len(capture.codes) == 1
    assert ("torch.ops.attn." in capture.codes[0]) == attn_ops


@pytest.mark.parametrize("backend,grad", [("triton", False), ("triton", True), ("reference", True)])
def test_multihead_attention(backend, grad):
    torch.manual_seed(0)
    module = attn.MultiheadAttention(E, H, batch_first=True, backend=backend)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, -2:] = True

    def call(m, x):
        masked, _ = m(x, x, x, key_padding_mask=pad, need_weights=False)
        causal, _ = m(x, x, x, is_causal=True, need_weights=False)
        return masked + causal

    _compiled_matches_eager(module, lambda: [torch.randn(B, L, E)], call, grad, attn_ops=backend == "triton")


def test_transformer_encoder_layer():
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=48, dropout=0.0, batch_first=True)
    layer.self_attn = attn.MultiheadAttention.from_module(layer.self_attn, backend="triton")
    _compiled_matches_eager(layer, lambda: [torch.randn(B, L, E)], lambda m, x: m(x, is_causal=False), True)


@pytest.mark.parametrize("grad", [False, True])
def test_causal_self_attention(grad):
    torch.manual_seed(2)
    module = attn.CausalSelfAttention(E, H, num_kv_heads=2, backend="triton")
    _compiled_matches_eager(module, lambda: [torch.randn(B, L, E)], lambda m, x: m(x), grad)


def test_gpt_forward():
    torch.manual_seed(3)
    config = GPTConfig(vocab_size=64, max_seqlen=16, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32)
    model = GPT(config, backend="triton")
    idx = torch.randint(0, 64, (B, L))
    _compiled_matches_eager(model, lambda: [idx], lambda m, i: m(i), False)


# ---- decode ------------------------------------------------------------------------------------

def _decode_args(paged):
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 1, 4, 16, generator=gen)
    shape = (6, 4, 2, 16) if paged else (2, 24, 2, 16)  # 6 pages of 4 slots, or 24 slots per row
    k_cache, v_cache = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    seqlens = torch.tensor([5, 11], dtype=torch.int32)
    block_table = torch.tensor([[3, 0, 5], [1, 4, 2]], dtype=torch.int32) if paged else None
    return (q, k_cache, v_cache, seqlens, None, block_table, None, None, 0.25, True, -1, 0, True, 0.0, 0, "triton")


@pytest.mark.parametrize("paged", [False, True])
def test_decode_op_opcheck(paged):
    """Schema, fake implementation and AOT dispatch of the decode op agree with the kernel."""
    torch.library.opcheck(flash_attn_decode, _decode_args(paged))


def test_gpt_decode_step():
    """A decode step of the mini GPT through attn.KVCache, compiled: the cache append is traced,
    the decode kernel is the op, and the compiled cache holds what the eager one holds."""
    torch.manual_seed(5)
    config = GPTConfig(vocab_size=64, max_seqlen=16, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32)
    model = GPT(config, backend="triton").eval()
    capture = CaptureGraphs()
    step = torch.compile(lambda tokens, cache: model(tokens, cache), fullgraph=True, backend=capture)
    prompt = torch.randint(0, 64, (B, 5))
    with torch.no_grad():
        eager_cache, compiled_cache = model.make_cache(B, 8), model.make_cache(B, 8)
        model(prompt, eager_cache)
        model(prompt, compiled_cache)
        for token in torch.randint(0, 64, (2, B, 1)):
            want, got = model(token, eager_cache), step(token, compiled_cache)
            assert_parity(got, want.double(), None)
    assert compiled_cache.lengths(0) == eager_cache.lengths(0) == [7, 7]
    for layer in range(config.num_layers):
        assert torch.equal(compiled_cache.k_caches[layer], eager_cache.k_caches[layer])
    assert capture.codes and all("torch.ops.attn.flash_attn_decode" in code for code in capture.codes)
