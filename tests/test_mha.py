"""attn.MultiheadAttention against torch.nn.MultiheadAttention with the same weights.

The oracle is PyTorch's own module run in float64 (``ref``); PyTorch's module in the input dtype
is the ``pt`` term of the parity rule (attn.testing). Cases are pairwise over layout, masks,
projection variants, dtype and weights; the full cross-product runs under ``-m slow``.
"""
import copy
import itertools
import zlib

import pytest
import torch
from torch import nn

import attn
from attn.testing import assert_parity

E, H = 32, 4
L, S, B = 6, 9, 2

MASKS = ("none", "key_padding", "bool_2d", "float_3d", "both", "causal")


def _inputs(batch_first, kdim, vdim, dtype, gen, self_attention, seqlen_k=S):
    def t(seq, width):
        shape = (B, seq, width) if batch_first else (seq, B, width)
        return torch.randn(shape, generator=gen).to(dtype)

    query = t(L, E)
    if self_attention:
        return query, query, query
    return query, t(seqlen_k, kdim or E), t(seqlen_k, vdim or E)


def _masks(kind, seqlen_k, gen):
    """PyTorch-convention masks (True = masked out); every query keeps at least one key."""
    kpm = attn_mask = None
    is_causal = False
    if kind in ("key_padding", "both"):
        kpm = torch.zeros(B, seqlen_k, dtype=torch.bool)
        kpm[1, seqlen_k - 3:] = True
    if kind in ("bool_2d", "both"):
        attn_mask = torch.rand(L, seqlen_k, generator=gen) > 0.6
        attn_mask[:, 0] = False
    if kind == "float_3d":
        attn_mask = torch.randn(B * H, L, seqlen_k, generator=gen)
    if kind == "causal":
        attn_mask = nn.Transformer.generate_square_subsequent_mask(L)
        is_causal = True
    return kpm, attn_mask, is_causal


def _pair(batch_first, kdim, vdim, add_bias_kv, backend, gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    ref = nn.MultiheadAttention(E, H, batch_first=batch_first, kdim=kdim, vdim=vdim,
                                add_bias_kv=add_bias_kv, add_zero_attn=add_bias_kv)
    with torch.no_grad():
        for p in ref.parameters():  # PyTorch zeroes the biases; make every parameter count
            p.add_(torch.randn_like(p) * 0.1)
    return ref, attn.MultiheadAttention.from_module(ref, backend=backend)


def _run(module, query, key, value, kpm, attn_mask, is_causal, need_weights, dtype):
    module = copy.deepcopy(module).to(dtype)
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.to(dtype)
    return module, module(query.to(dtype), key.to(dtype), value.to(dtype), key_padding_mask=kpm,
                          need_weights=need_weights, attn_mask=attn_mask, is_causal=is_causal)


def _pt_term(dtype, value):
    return None if dtype == torch.float32 else value


# Pairwise: every value of every dimension appears (layout x mask x variant x dtype x weights).
PAIRWISE = [
    # batch_first, mask, (kdim, vdim, add_bias_kv), dtype, need_weights
    (False, "none", (None, None, False), torch.float32, True),
    (True, "key_padding", (24, 20, False), torch.bfloat16, False),
    (False, "bool_2d", (None, None, True), torch.bfloat16, True),
    (True, "float_3d", (None, None, False), torch.float32, False),
    (True, "both", (24, 20, True), torch.float32, True),
    (False, "causal", (None, None, False), torch.bfloat16, False),
    (True, "causal", (None, None, False), torch.float32, True),
    (False, "key_padding", (None, None, True), torch.float32, False),
    (True, "none", (24, 20, False), torch.bfloat16, True),
    (False, "float_3d", (24, 20, True), torch.bfloat16, True),
]
FULL = list(itertools.product((False, True), MASKS, ((None, None, False), (24, 20, True)),
                              (torch.float32, torch.bfloat16), (False, True)))


def _check_forward(batch_first, mask, variant, dtype, need_weights, backend):
    kdim, vdim, add_bias_kv = variant
    self_attention = kdim is None
    seqlen_k = L if self_attention or mask == "causal" else S
    gen = torch.Generator().manual_seed(zlib.crc32(repr((batch_first, mask, variant, dtype, need_weights)).encode()))
    ref_mod, ours = _pair(batch_first, kdim, vdim, add_bias_kv, backend, gen)
    query, key, value = _inputs(batch_first, kdim, vdim, torch.float64, gen, self_attention, seqlen_k)
    kpm, attn_mask, is_causal = _masks(mask, seqlen_k, gen)
    args = (query, key, value, kpm, attn_mask, is_causal, need_weights)
    _, (ref_out, ref_w) = _run(ref_mod, *args, torch.float64)
    _, (pt_out, pt_w) = _run(ref_mod, *args, dtype)
    _, (out, w) = _run(ours, *args, dtype)
    assert out.dtype == dtype
    assert out.is_contiguous() or not pt_out.is_contiguous()  # callers may .view() PyTorch's output
    assert_parity(out, ref_out, _pt_term(dtype, pt_out))
    if need_weights:
        assert_parity(w, ref_w, _pt_term(dtype, pt_w), what="weights")
    else:
        assert w is None and pt_w is None


@pytest.mark.parametrize("batch_first,mask,variant,dtype,need_weights", PAIRWISE)
def test_forward_matches_torch(batch_first, mask, variant, dtype, need_weights):
    _check_forward(batch_first, mask, variant, dtype, need_weights, backend=None)


@pytest.mark.slow
@pytest.mark.parametrize("batch_first,mask,variant,dtype,need_weights", FULL)
def test_forward_matches_torch_full(batch_first, mask, variant, dtype, need_weights):
    _check_forward(batch_first, mask, variant, dtype, need_weights, backend=None)


@pytest.mark.parametrize("batch_first,mask,variant,dtype", [
    (True, "causal", (None, None, False), torch.float32),
    (False, "both", (24, 20, True), torch.float16),
    (True, "float_3d", (None, None, False), torch.bfloat16),
])
def test_forward_triton_kernels(batch_first, mask, variant, dtype, device):
    """The fused path (need_weights=False) on the Triton kernels (the interpreter on CPU)."""
    with torch.no_grad():
        _check_forward(batch_first, mask, variant, dtype, False, backend="triton")


@pytest.mark.parametrize("batch_first,mask,variant,backend", [
    (False, "both", (24, 20, True), "triton"),
    (True, "causal", (None, None, False), "triton"),
    (True, "float_3d", (None, None, False), "triton"),
    (False, "key_padding", (24, 20, True), "torch"),
    (True, "bool_2d", (None, None, False), "reference"),
])
def test_gradients_match_torch(batch_first, mask, variant, backend):
    """Gradients of inputs and of every parameter, fp32 (3x rule reduces to the fp32 bound)."""
    kdim, vdim, add_bias_kv = variant
    self_attention = kdim is None
    seqlen_k = L if self_attention or mask == "causal" else S
    gen = torch.Generator().manual_seed(7)
    ref_mod, ours = _pair(batch_first, kdim, vdim, add_bias_kv, backend, gen)
    query, key, value = _inputs(batch_first, kdim, vdim, torch.float64, gen, self_attention, seqlen_k)
    kpm, attn_mask, is_causal = _masks(mask, seqlen_k, gen)
    grad_out = torch.randn(query.shape[:-1] + (E,), generator=gen, dtype=torch.float64)

    def grads(module, dtype):
        inputs = [t.to(dtype).requires_grad_() for t in ((query,) if self_attention else (query, key, value))]
        q, k, v = (inputs * 3) if self_attention else inputs
        module, (out, _) = _run(module, q, k, v, kpm, attn_mask, is_causal, False, dtype)
        out.backward(grad_out.to(dtype))
        return [t.grad for t in inputs] + [p.grad for p in module.parameters()]

    names = ["query"] + ([] if self_attention else ["key", "value"]) + [n for n, _ in ours.named_parameters()]
    for name, got, want in zip(names, grads(ours, torch.float32), grads(ref_mod, torch.float64)):
        assert_parity(got, want, None, factor=3.0, what=f"grad {name}")


def test_state_dict_round_trip():
    ref = nn.MultiheadAttention(E, H, kdim=24, vdim=20, add_bias_kv=True)
    ours = attn.MultiheadAttention(E, H, kdim=24, vdim=20, add_bias_kv=True)
    assert isinstance(ours, nn.MultiheadAttention)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for name, t in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[name], t), name


def test_unbatched_input():
    gen = torch.Generator().manual_seed(3)
    ref_mod, ours = _pair(True, None, None, False, None, gen)
    x = torch.randn(L, E, generator=gen)
    kpm = torch.zeros(L, dtype=torch.bool)
    kpm[-2:] = True
    for need_weights in (False, True):
        out, w = ours(x, x, x, key_padding_mask=kpm, need_weights=need_weights, average_attn_weights=False)
        ref_out, ref_w = ref_mod(x, x, x, key_padding_mask=kpm, need_weights=need_weights, average_attn_weights=False)
        assert_parity(out, ref_out.double(), None)
        if need_weights:
            assert w.shape == ref_w.shape == (H, L, L)
            assert_parity(w, ref_w.double(), None, what="weights")


def test_fully_masked_query_outputs_zero_attention():
    """A query whose keys are all masked attends to nothing: its attention output is 0, so the
    module returns out_proj's bias there (PyTorch returns NaN)."""
    ours = attn.MultiheadAttention(E, H, batch_first=True)
    with torch.no_grad():
        ours.out_proj.bias.copy_(torch.randn(E))
    x = torch.randn(B, L, E)
    attn_mask = torch.zeros(L, L, dtype=torch.bool)
    attn_mask[2] = True
    for need_weights in (False, True):
        out, w = ours(x, x, x, attn_mask=attn_mask, need_weights=need_weights)
        assert torch.equal(out[:, 2], ours.out_proj.bias.detach().expand(B, E))
        assert not torch.isnan(out).any()
        if need_weights:
            assert torch.equal(w[:, 2], torch.zeros(B, L))


def test_is_causal_without_mask_means_causal():
    gen = torch.Generator().manual_seed(5)
    ref_mod, ours = _pair(True, None, None, False, None, gen)
    x = torch.randn(B, L, E, generator=gen)
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    want, _ = ref_mod(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)
    for need_weights in (False, True):
        out, _ = ours(x, x, x, is_causal=True, need_weights=need_weights)
        assert_parity(out, want.double(), None)


def test_bad_inputs_raise_clear_errors():
    ours = attn.MultiheadAttention(E, H, batch_first=True)
    x = torch.randn(B, L, E)
    with pytest.raises(ValueError, match=r"MultiheadAttention.forward: argument 'query' expected last dim 32"):
        ours(torch.randn(B, L, E + 1), x, x)
    with pytest.raises(ValueError, match=r"argument 'attn_mask' expected shape \(6, 6\) or \(8, 6, 6\)"):
        ours(x, x, x, attn_mask=torch.zeros(L, L + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"argument 'key_padding_mask' expected shape \(2, 6\)"):
        ours(x, x, x, key_padding_mask=torch.zeros(B, L + 1, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"argument 'key' expected a torch.Tensor"):
        ours(x, None, x)
    with pytest.raises(TypeError, match=r"from_module: argument 'module' expected a torch.nn.MultiheadAttention"):
        attn.MultiheadAttention.from_module(nn.Linear(2, 2))


def test_dropout_in_training_names_the_option():
    ours = attn.MultiheadAttention(E, H, dropout=0.1, batch_first=True).train()
    x = torch.randn(B, L, E)
    with pytest.raises(NotImplementedError, match="dropout_p"):
        ours(x, x, x, need_weights=False)
    ours.eval()
    out, _ = ours(x, x, x, need_weights=False)
    assert not torch.isnan(out).any()


# ---- inside PyTorch's transformer layers ----------------------------------------------------

def _layer_pair(kind, gen, backend=None):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    cls = nn.TransformerEncoderLayer if kind == "encoder" else nn.TransformerDecoderLayer
    ref = cls(d_model=E, nhead=H, dim_feedforward=48, dropout=0.0, batch_first=True)
    ours = copy.deepcopy(ref)
    ours.self_attn = attn.MultiheadAttention.from_module(ref.self_attn, backend=backend)
    if kind == "decoder":
        ours.multihead_attn = attn.MultiheadAttention.from_module(ref.multihead_attn, backend=backend)
    return ref, ours


def _layer_call(layer, kind, x, memory, pad):
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    if kind == "encoder":
        return layer(x, src_mask=causal, src_key_padding_mask=pad, is_causal=True)
    return layer(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=pad)


@pytest.mark.parametrize("kind,backend", [("encoder", "torch"), ("decoder", "triton")])
def test_inside_transformer_layers_training(kind, backend):
    """Training mode (no fast path): outputs and every gradient match PyTorch's layer."""
    gen = torch.Generator().manual_seed(11)
    ref, ours = _layer_pair(kind, gen, backend)
    x = torch.randn(B, L, E, generator=gen, dtype=torch.float64)
    memory = torch.randn(B, S, E, generator=gen, dtype=torch.float64)
    pad = torch.zeros(B, L if kind == "encoder" else S, dtype=torch.bool)
    pad[1, -2:] = True
    grad_out = torch.randn(B, L, E, generator=gen, dtype=torch.float64)
    results = []
    for layer, dtype in ((ours, torch.float32), (ref.double(), torch.float64)):
        layer = layer.to(dtype).train()
        xi = x.to(dtype).requires_grad_()
        out = _layer_call(layer, kind, xi, memory.to(dtype), pad)
        out.backward(grad_out.to(dtype))
        results.append([out, xi.grad] + [p.grad for p in layer.parameters()])
    names = ["out", "grad x"] + [f"grad {n}" for n, _ in ours.named_parameters()]
    for name, got, want in zip(names, *results):
        assert_parity(got, want, None, factor=3.0, what=name)


@pytest.mark.parametrize("fastpath", [True, False])
def test_encoder_layer_inference_fast_path(fastpath, monkeypatch):
    """attn's module runs whether PyTorch's fast path is enabled or not (its no-op forward
    pre-hook makes the layer skip the fused native kernel that would bypass it), and agrees."""
    gen = torch.Generator().manual_seed(13)
    ref, ours = _layer_pair("encoder", gen)
    ref.eval()
    ours.eval()
    calls = []
    original = attn.MultiheadAttention.forward

    def counting_forward(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(attn.MultiheadAttention, "forward", counting_forward)
    x = torch.randn(B, L, E, generator=gen)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, -2:] = True
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        with torch.no_grad():
            want = ref.double()(x.double(), src_key_padding_mask=pad)
            out = ours(x, src_key_padding_mask=pad)
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
    assert len(calls) == 1
    assert_parity(out, want, None)
