"""attn as a transformers attention implementation vs transformers' own "eager" attention, and the
attention function on its own against the oracle (tests/test_transformers_models.py covers every
architecture family).

Tiny random-weight GPT-2, Llama (GQA, 2 kv heads) and Mistral (sliding window) models are built
from configs (no downloads). Every model pair shares weights; each model gets its own config copy
(set_attn_implementation writes into the config). The bulk runs with attn's automatic backend
(PyTorch on CPU); the Triton kernels (the interpreter on CPU) run the prefill of every family
and one full generation.
"""
import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AttentionInterface,
    AttentionMaskInterface,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

import attn  # noqa: E402
from attn.integrations import transformers as attn_hf  # noqa: E402
from attn.testing import assert_parity  # noqa: E402

VOCAB, PROMPT, NEW_TOKENS = 96, 10, 20
AUTO = attn_hf.register("attn_test_auto")
TRITON = attn_hf.register("attn_test_triton", backend="triton")


def _family(name):
    small = dict(num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    if name == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                         bos_token_id=0, eos_token_id=VOCAB + 1, pad_token_id=0)
        return GPT2LMHeadModel, cfg
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_key_value_heads=2,
                  bos_token_id=0, eos_token_id=VOCAB + 1, pad_token_id=0, **small)
    if name == "llama":
        return LlamaForCausalLM, LlamaConfig(**common)
    return MistralForCausalLM, MistralConfig(sliding_window=6, **common)  # prompt + new tokens cross it


_MODELS = {}


def _models(family, implementation):
    """(eager model, model on ``implementation``) with identical weights, eval mode."""
    key = (family, implementation)
    if key not in _MODELS:
        cls, cfg = _family(family)
        torch.manual_seed(1234)
        eager = cls(copy.deepcopy(cfg)).eval()
        eager.set_attn_implementation("eager")
        ours = cls(copy.deepcopy(cfg)).eval()
        ours.load_state_dict(eager.state_dict(), strict=True)
        ours.set_attn_implementation(implementation)
        _MODELS[key] = (eager, ours)
    return _MODELS[key]


def _prompt(batch):
    """Token ids and a 2-D attention mask; batch 2 is left-padded (3 pads in row 1)."""
    gen = torch.Generator().manual_seed(99)
    ids = torch.randint(1, VOCAB, (batch, PROMPT), generator=gen)
    mask = torch.ones(batch, PROMPT, dtype=torch.long)
    if batch == 2:
        mask[1, :3] = 0
        ids[1, :3] = 0
    return ids, mask


def _check_prefill(family, implementation, batch):
    eager, ours = _models(family, implementation)
    ids, mask = _prompt(batch)
    with torch.no_grad():
        want = eager(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    # Padded positions see no key: attn outputs 0 there, eager an average of every value. (Eager
    # in float64 is no oracle here: its finfo.min mask overflows to -inf and NaNs the pad rows.)
    real = mask.bool()
    return assert_parity(got[real], want[real].double(), None, what=f"{family} logits")


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral"])
@pytest.mark.parametrize("batch", [1, 2])
def test_prefill_logits_match_eager(family, batch):
    _check_prefill(family, AUTO, batch)


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral"])
@pytest.mark.parametrize("batch", [1, 2])
def test_prefill_logits_triton_kernels(family, batch):
    _check_prefill(family, TRITON, batch)


def _check_generate(family, implementation, batch, cache):
    eager, ours = _models(family, implementation)
    ids, mask = _prompt(batch)
    kwargs = dict(attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
    if cache == "static":
        kwargs["cache_implementation"] = "static"
    want = eager.generate(ids, **kwargs)
    got = ours.generate(ids, **kwargs)
    assert got.shape == (batch, PROMPT + NEW_TOKENS)
    assert torch.equal(got, want), f"{family}/{cache}/batch {batch}: {got.tolist()} != {want.tolist()}"


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_generate_matches_eager(family, cache, batch):
    _check_generate(family, AUTO, batch, cache)


@pytest.mark.parametrize("batch,cache", [(1, "dynamic"), (2, "static")])
def test_greedy_generate_triton_kernels(batch, cache):
    """Llama (GQA) end to end on the Triton kernels: unmasked causal prefill and decode
    (batch 1), masked prefill and decode (left-padded batch 2, static cache)."""
    _check_generate("llama", TRITON, batch, cache)


# ---- the attention function on its own: every dispatch case against the oracle ----------------

class _Module(torch.nn.Module):
    def __init__(self, is_causal=True):
        super().__init__()
        self.is_causal = is_causal


def _qkv(batch, n_heads, n_kv_heads, seqlen_q, seqlen_k, head_dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # query as transformers makes it: a transposed view of (B, Lq, H, D)
    q = torch.randn(batch, seqlen_q, n_heads, head_dim, generator=gen).transpose(1, 2)
    k = torch.randn(batch, n_kv_heads, seqlen_k, head_dim, generator=gen)
    v = torch.randn(batch, n_kv_heads, seqlen_k, head_dim, generator=gen)
    return q, k, v


def _oracle(q, k, v, **kwargs):
    out, _ = attn.reference.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                      dtype=torch.float64, **kwargs)
    return out


CASES = [
    # name, Lq, Lk, is_causal, mask kind, sliding_window, softcap, position_bias
    ("causal prefill", 9, 9, True, None, None, None, False),
    ("decode, no mask", 1, 13, True, None, None, None, False),
    ("empty static cache prefill", 5, 12, True, None, None, None, False),
    ("sliding window, no mask", 7, 7, True, None, 4, None, False),
    ("softcap (gemma2)", 6, 6, True, None, None, 5.0, False),
    ("bidirectional", 6, 8, False, None, None, None, False),
    ("padded bool mask", 6, 6, True, "padded", None, None, False),
    ("decode with mask", 1, 10, True, "padded", None, None, False),
    ("softcap with padded mask (gemma2)", 6, 6, True, "padded", None, 5.0, False),
    ("softcap, decode with mask", 1, 10, True, "padded", None, 5.0, False),
    ("position bias, encoder (t5)", 6, 6, False, "padded", None, None, True),
    ("position bias, causal decode (t5)", 1, 9, True, None, None, None, True),
    ("position bias, empty static cache (t5)", 5, 12, True, None, None, None, True),
]


def _position_bias(seqlen_q, seqlen_k, seed=1):
    """(1, H, Lq, Lk) float bias as T5 builds it: shared by the batch."""
    return torch.randn(1, 4, seqlen_q, seqlen_k, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("name,seqlen_q,seqlen_k,is_causal,mask_kind,window,softcap,biased", CASES,
                         ids=[c[0] for c in CASES])
def test_attention_function_cases(backend, name, seqlen_q, seqlen_k, is_causal, mask_kind, window, softcap, biased):
    q, k_cache, v_cache = _qkv(2, 4, 2, seqlen_q, seqlen_k)
    k, v = k_cache, v_cache
    scale = 0.3
    mask = None
    bias = _position_bias(seqlen_q, seqlen_k) if biased else None
    expect = dict(softmax_scale=scale, causal=is_causal, softcap=softcap or 0.0)
    if mask_kind == "padded":
        keep = attn.reference.visibility(2, seqlen_q, seqlen_k, causal=is_causal)
        keep[1, ..., :2] = False  # row 1 is left-padded by 2
        mask = keep
        expect = dict(softmax_scale=scale, softcap=softcap or 0.0, attn_mask=keep)
    elif is_causal and 1 < seqlen_q < seqlen_k:  # only the first Lq slots are written
        k, v = k[:, :, :seqlen_q], v[:, :, :seqlen_q]
        expect["bottom_right"] = False
    if window:
        expect["window_size"] = (window - 1, 0)
    if biased:
        cut = bias[..., :k.shape[2]]
        expect["attn_mask"] = cut if mask is None else cut.masked_fill(~mask, float("-inf"))
    out, weights = attn_hf.attention_forward(
        _Module(is_causal), q, k_cache, v_cache, mask, scaling=scale, sliding_window=window, softcap=softcap,
        position_bias=bias, backend=backend, position_ids=None, use_cache=True,
    )
    assert weights is None
    assert out.shape == (2, seqlen_q, 4, 16)
    assert_parity(out, _oracle(q, k, v, **expect), None)


def test_position_bias_gets_its_gradient():
    """T5 learns its relative position bias: under auto the bias gets the oracle's gradient
    (routed to a backend that gives it); a pinned backend that cannot give it refuses."""
    q, k, v = _qkv(2, 4, 2, 5, 5)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, ..., :2] = False
    grad_out = torch.randn(2, 5, 4, 16, generator=torch.Generator().manual_seed(3))
    bias = _position_bias(5, 5).requires_grad_()
    out, _ = attn_hf.attention_forward(_Module(False), q, k, v, mask, position_bias=bias)
    (got,) = torch.autograd.grad(out, bias, grad_out)
    want_bias = bias.detach().double().requires_grad_()
    want_out = _oracle(q, k, v, attn_mask=want_bias.masked_fill(~mask, float("-inf")))
    (want,) = torch.autograd.grad(want_out, want_bias, grad_out.double())
    assert_parity(got, want, None)
    with pytest.raises(NotImplementedError, match=r"'position_bias'.*backend 'cpu'.*\['torch', 'reference'\]"):
        attn_hf.attention_forward(_Module(False), q, k, v, mask, position_bias=bias, backend="cpu")


def test_options_that_change_the_math_raise():
    q, k, v = _qkv(1, 4, 2, 3, 3)
    with pytest.raises(NotImplementedError, match="option 's_aux'"):
        attn_hf.attention_forward(_Module(), q, k, v, None, s_aux=torch.zeros(4))
    with pytest.raises(NotImplementedError, match="option 'output_attentions'"):
        attn_hf.attention_forward(_Module(), q, k, v, None, output_attentions=True)
    with pytest.raises(NotImplementedError, match="option 'cu_seq_lens_q'"):
        attn_hf.attention_forward(_Module(), q, k, v, None, cu_seq_lens_q=torch.tensor([0, 3], dtype=torch.int32))
    training = _Module().train()
    with pytest.raises(NotImplementedError, match=r"attention dropout \(dropout=0.1 in _Module, training\)"):
        attn_hf.attention_forward(training, q, k, v, None, dropout=0.1)


def test_options_that_do_not_change_the_math_are_ignored():
    """Bookkeeping arguments of other layers (Mixtral's router, ModernBERT's determinism flag,
    generate's output_hidden_states, ...) and dropout outside training leave the result as the
    oracle's."""
    q, k, v = _qkv(1, 4, 2, 3, 3)
    out, _ = attn_hf.attention_forward(
        _Module().eval(), q, k, v, None, dropout=0.1, output_router_logits=False, deterministic=False,
        output_hidden_states=False, output_attentions=False, indices=torch.arange(3), some_future_argument=1,
    )
    assert_parity(out, _oracle(q, k, v, causal=True), None)


def test_register_adds_both_functions_and_checks_the_name():
    assert AUTO in AttentionInterface._global_mapping
    assert AttentionMaskInterface._global_mapping[AUTO] is attn_hf.mask_function
    assert attn_hf.register(AUTO) == AUTO  # registering again replaces our own entry
    with pytest.raises(ValueError, match="without 'flash'"):
        attn_hf.register("my_flash_attn")
    with pytest.raises(ValueError, match="transformers' own"):
        attn_hf.register("sdpa")
    with pytest.raises(TypeError, match="argument 'name' expected a non-empty str"):
        attn_hf.register("")
    with pytest.raises(ValueError, match="argument 'backend' expected one of"):
        attn_hf.register(backend="tritonn")


def test_default_names_say_what_runs():
    assert attn_hf.register() == "attn"
    assert attn_hf.register(backend="cpu") == "attn_cpu"
    assert attn_hf.register(backend="cuda-sim") == "attn_cuda_sim"
    assert attn_hf.register(backend="triton") == "attn_triton"


def _count_paths(monkeypatch):
    calls = []

    def counting(name, original):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)
        return wrapper

    for name in ("run_forward", "flash_attn_with_kvcache"):
        monkeypatch.setattr(attn_hf, name, counting(name, getattr(attn_hf, name)))
    return calls


def test_kernel_per_step(monkeypatch):
    """Unpadded generation: prefill on the forward kernel, each new token on the decode kernel;
    a left-padded batch runs the masked forward."""
    calls = _count_paths(monkeypatch)
    _, ours = _models("llama", AUTO)
    ids, mask = _prompt(1)
    ours.generate(ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    layers = ours.config.num_hidden_layers
    assert calls == ["run_forward"] * layers + ["flash_attn_with_kvcache"] * 2 * layers
    calls.clear()
    ids, mask = _prompt(2)
    ours.generate(ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert calls == ["run_forward"] * 3 * layers


def test_pinned_backend_without_decode_kernel_decodes_on_its_forward(monkeypatch):
    """"torch" has no decode kernel: unpadded decode must go to its forward, with eager's tokens;
    "cpu" has one and keeps it."""
    calls = _count_paths(monkeypatch)
    eager, ours = _models("llama", attn_hf.register("attn_test_torch", backend="torch"))
    ids, mask = _prompt(1)
    kwargs = dict(attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(ours.generate(ids, **kwargs), eager.generate(ids, **kwargs))
    assert set(calls) == {"run_forward"}
    calls.clear()
    _, ours = _models("llama", attn_hf.register("attn_test_cpu", backend="cpu"))
    ours.generate(ids, **kwargs)
    assert "flash_attn_with_kvcache" in calls


@pytest.mark.parametrize("batch", [1, 2])
def test_compiled_model_matches_eager(batch):
    """torch.compile(fullgraph=True) over a whole Llama forward: no graph break, attn's op in the
    graph, same logits."""
    from torch._dynamo.backends.registry import lookup_backend

    _, ours = _models("llama", TRITON)
    ids, mask = _prompt(batch)
    codes = []

    def capture(gm, example_inputs):
        codes.append(gm.code)
        return lookup_backend("aot_eager")(gm, example_inputs)

    with torch.no_grad():
        want = ours(ids, attention_mask=mask).logits
        got = torch.compile(lambda i, m: ours(i, attention_mask=m).logits, fullgraph=True, backend=capture)(ids, mask)
    assert len(codes) == 1 and "torch.ops.attn." in codes[0]
    assert_parity(got, want.double(), None)
