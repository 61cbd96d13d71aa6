"""flash-attn's users switch without changing a line (issue 23).

* Every form in which flash-attn 2.x takes an argument (``window_size`` as a tuple, list or int
  tensor; scalars as Python or numpy numbers or 0-d tensors; flags by truth value) gives the
  plain form's output, and the plain form matches the oracle; malformed forms are refused naming
  the argument.
* ALiBi and masks are added in fp32 on every backend: the case flash-attn's own tests exposed
  (Sq=799, Sk=3, D=32, fp16/bf16, ALiBi) forward and backward against the fp64 oracle.
* An over-full paged cache names ``block_table``.
* ``attn.flash_attn_interface`` is flash-attn's import path, with flash-attn's signatures.
"""
import inspect

import numpy as np
import pytest
import torch
from _decode_cases import make_case

import attn
from attn import reference
from attn.testing import assert_parity, random_tensor

GEN_SEED = 23


def _qkv(dtype=torch.float32, batch=2, seqlen_q=9, seqlen_k=13, n_heads=4, n_kv_heads=2, head_dim=16):
    gen = torch.Generator().manual_seed(GEN_SEED)
    return (random_tensor((batch, seqlen_q, n_heads, head_dim), dtype, generator=gen),
            random_tensor((batch, seqlen_k, n_kv_heads, head_dim), dtype, generator=gen),
            random_tensor((batch, seqlen_k, n_kv_heads, head_dim), dtype, generator=gen))


def _same_as_plain(form_kwargs, plain_kwargs, backend="cpu"):
    """flash_attn_func with ``form_kwargs`` equals the call with ``plain_kwargs`` bit for bit, and the
    plain call matches the fp64 oracle (so the comparison is not between two wrong answers)."""
    q, k, v = _qkv()
    out = attn.flash_attn_func(q, k, v, **form_kwargs, backend=backend)
    plain = attn.flash_attn_func(q, k, v, **plain_kwargs, backend=backend)
    assert torch.equal(out, plain)
    assert_parity(plain, reference.attention(q, k, v, dtype=torch.float64, **plain_kwargs)[0], None)


# ---- accepted forms --------------------------------------------------------------------------

WINDOW_FORMS = {
    "list": [3, 2],
    "int64_tensor": torch.tensor([3, 2]),  # flash-attn's tests: torch.randint(0, seqlen_k, (2,))
    "int32_tensor": torch.tensor([3, 2], dtype=torch.int32),
    "numpy_ints": (np.int64(3), np.int32(2)),
    "0d_tensors": (torch.tensor(3), torch.tensor(2)),
    "numpy_array": np.array([3, 2]),
}


@pytest.mark.parametrize("form", list(WINDOW_FORMS))
def test_window_size_forms(form):
    _same_as_plain(dict(window_size=WINDOW_FORMS[form]), dict(window_size=(3, 2)))


def test_window_size_negative_means_unbounded():
    """flash-attn treats every negative side as -1."""
    _same_as_plain(dict(window_size=(-7, torch.tensor(-3))), dict(window_size=(-1, -1)))
    _same_as_plain(dict(window_size=torch.tensor([-5, 1])), dict(window_size=(-1, 1)))


SCALAR_FORMS = {
    "numpy_float64": np.float64(0.25),
    "numpy_float32": np.float32(0.25),
    "0d_fp32_tensor": torch.tensor(0.25),
    "0d_fp64_tensor": torch.tensor(0.25, dtype=torch.float64),
}


@pytest.mark.parametrize("form", list(SCALAR_FORMS))
@pytest.mark.parametrize("name", ["softmax_scale", "softcap"])
def test_scalar_forms(name, form):
    _same_as_plain({name: SCALAR_FORMS[form]}, {name: 0.25})


def test_integer_scalar_forms():
    _same_as_plain(dict(softmax_scale=torch.tensor(1), softcap=np.int64(2)), dict(softmax_scale=1.0, softcap=2.0))


@pytest.mark.parametrize("truthy", [np.bool_(True), torch.tensor(True), 1], ids=["numpy", "0d_tensor", "int"])
def test_flags_by_truth_value(truthy):
    q, k, v = _qkv()
    out, lse, probs = attn.flash_attn_func(q, k, v, dropout_p=torch.tensor(0.0), causal=truthy,
                                           deterministic=truthy, return_attn_probs=truthy, backend="cpu")
    plain, plain_lse, _ = attn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend="cpu")
    assert torch.equal(out, plain) and torch.equal(lse, plain_lse) and probs is None
    assert_parity(plain, reference.attention(q, k, v, causal=True, dtype=torch.float64)[0], None)
    falsy = attn.flash_attn_func(q, k, v, causal=np.bool_(False), return_attn_probs=torch.tensor(0), backend="cpu")
    assert isinstance(falsy, torch.Tensor)
    assert_parity(falsy, reference.attention(q, k, v, dtype=torch.float64)[0], None)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_kvcache_forms(backend):
    case = make_case(batch=2, seqlen_q=1, n_heads=4, n_kv_heads=2, head_dim=32, seqlens_k=[20, 20], capacity=32,
                     page_size=8, append=False, dtype=torch.float32, device="cpu")
    common = dict(block_table=case.block_table, causal=True, backend=backend)
    out, lse = attn.flash_attn_with_kvcache(
        case.q, case.k_cache, case.v_cache, cache_seqlens=20, softmax_scale=np.float32(0.25),
        window_size=torch.tensor([6, 0]), softcap=torch.tensor(3.0), rotary_interleaved=False,
        num_splits=np.int64(2), return_softmax_lse=np.bool_(True), **common)
    plain, plain_lse = attn.flash_attn_with_kvcache(
        case.q, case.k_cache, case.v_cache, cache_seqlens=case.cache_seqlens, softmax_scale=0.25,
        window_size=(6, 0), softcap=3.0, num_splits=2, return_softmax_lse=True, **common)
    assert torch.equal(out, plain) and torch.equal(lse, plain_lse)
    ref, ref_lse = reference.attention(case.q, case.k_logical, case.v_logical, softmax_scale=0.25, causal=True,
                                       window_size=(6, 0), softcap=3.0, seqlens_k=case.seqlens_k, dtype=torch.float64)
    assert_parity(plain, ref, None)
    assert_parity(plain_lse, ref_lse, None, what="lse")
    split = attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, cache_seqlens=20,
                                         num_splits=torch.tensor(2), **common)
    assert torch.equal(split, attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, cache_seqlens=20,
                                                           num_splits=2, **common))


@pytest.mark.parametrize("form", [np.float64(0.25), torch.tensor(0.25)], ids=["numpy", "0d_tensor"])
def test_sdpa_scale_forms(form):
    """PyTorch's SDPA takes a 0-d tensor or numpy scalar as ``scale``; so does attn's."""
    q, k, v = (t.transpose(1, 2) for t in _qkv(n_kv_heads=4))
    out = attn.scaled_dot_product_attention(q, k, v, scale=form, backend="cpu")
    plain = attn.scaled_dot_product_attention(q, k, v, scale=0.25, backend="cpu")
    assert torch.equal(out, plain)
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=form)
    assert_parity(plain, ref, None)


# ---- refused forms ---------------------------------------------------------------------------

BAD_FLASH = [
    ("window_size", torch.tensor([3, 2, 1]), TypeError, "shape (3,)"),
    ("window_size", torch.tensor([3.0, 2.0]), TypeError, "dtype torch.float32"),
    ("window_size", torch.tensor([[3, 2]]), TypeError, "shape (1, 2)"),
    ("window_size", (1.5, 0), TypeError, "(1.5, 0)"),
    ("window_size", (True, 0), TypeError, "(True, 0)"),
    ("softmax_scale", torch.tensor([0.5, 0.25]), TypeError, "shape (2,)"),
    ("softmax_scale", torch.tensor(0.5, requires_grad=True), TypeError, "requires_grad=True"),
    ("softmax_scale", True, TypeError, "True"),
    ("softmax_scale", np.float32("inf"), ValueError, "inf"),
    ("softcap", torch.tensor([1.0]), TypeError, "shape (1,)"),
    ("softcap", torch.tensor(-1.0), ValueError, "-1.0"),
    ("dropout_p", torch.tensor([0.0, 0.0]), TypeError, "shape (2,)"),
    ("causal", torch.tensor([True, False]), TypeError, "shape (2,)"),
    ("return_attn_probs", np.array([True, False]), TypeError, "array"),
]


@pytest.mark.parametrize("name, value, exc, actual", BAD_FLASH,
                         ids=[f"{n}-{i}" for i, (n, *_) in enumerate(BAD_FLASH)])
def test_flash_attn_func_refuses_bad_forms(name, value, exc, actual):
    q, k, v = _qkv()
    with pytest.raises(exc) as info:
        attn.flash_attn_func(q, k, v, **{name: value})
    message = str(info.value)
    assert message.startswith(f"flash_attn_func: argument '{name}' expected ") and actual in message, message


BAD_KVCACHE = [
    ("window_size", torch.tensor([3, 2, 1]), TypeError, "shape (3,)"),
    ("num_splits", 2.0, TypeError, "2.0"),
    ("num_splits", torch.tensor(2.0), TypeError, "dtype torch.float32"),
    ("num_splits", np.int64(-1), ValueError, "-1"),
    ("softcap", torch.tensor([1.0, 2.0]), TypeError, "shape (2,)"),
    ("cache_seqlens", torch.tensor([20, 20]), TypeError, "int64"),  # int32 only, as flash-attn (docs/design.md §5)
    ("return_softmax_lse", torch.tensor([True, True]), TypeError, "shape (2,)"),
]


@pytest.mark.parametrize("name, value, exc, actual", BAD_KVCACHE,
                         ids=[f"{n}-{i}" for i, (n, *_) in enumerate(BAD_KVCACHE)])
def test_flash_attn_with_kvcache_refuses_bad_forms(name, value, exc, actual):
    case = make_case(batch=2, seqlen_q=1, n_heads=4, n_kv_heads=2, head_dim=32, seqlens_k=[20, 20], capacity=32,
                     page_size=None, append=False, dtype=torch.float32, device="cpu")
    kwargs = {"cache_seqlens": case.cache_seqlens, name: value}
    with pytest.raises(exc) as info:
        attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **kwargs)
    message = str(info.value)
    assert message.startswith(f"flash_attn_with_kvcache: argument '{name}' expected ") and actual in message, message


def test_sdpa_refuses_scale_tensor_of_two():
    q, k, v = (t.transpose(1, 2) for t in _qkv(n_kv_heads=4))
    with pytest.raises(TypeError, match=r"scaled_dot_product_attention: argument 'scale' expected .*shape \(2,\)"):
        attn.scaled_dot_product_attention(q, k, v, scale=torch.tensor([0.5, 0.5]))


# ---- item 1: biases in fp32 on every backend -------------------------------------------------

def _device(backend, device):
    """Triton runs on the session's device (the interpreter on CPU); the other backends on CPU."""
    return device if backend == "triton" else "cpu"


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


# The Triton interpreter is slow at 799 rows; it runs the harsher dtype only.
ALIBI_CASES = [(b, d) for b in ("cpu", "cuda-sim", "torch", "reference") for d in DTYPES] + [("triton", "bf16")]


@pytest.mark.parametrize("backend, dtype", ALIBI_CASES, ids=[f"{b}-{d}" for b, d in ALIBI_CASES])
def test_alibi_far_from_the_diagonal(backend, dtype, device):
    """flash-attn's splitkv case: 799 queries on 3 keys, so ALiBi reaches about -240 (fp16's step
    there is 0.25, bf16's 2.0). The bias must be added in fp32: forward (2x rule) and, where the
    backend has a backward, gradients (3x rule) against the fp64 oracle."""
    dtype, device = DTYPES[dtype], _device(backend, device)
    gen = torch.Generator().manual_seed(GEN_SEED)
    q = random_tensor((1, 799, 2, 32), dtype, generator=gen).to(device)
    k, v = (random_tensor((1, 3, 1, 32), dtype, generator=gen).to(device) for _ in range(2))
    slopes = (torch.rand(1, 2, generator=gen) * 0.3 + 0.2).to(device)
    dout = random_tensor(q.shape, dtype, generator=gen).to(device)
    backward = backend != "cuda-sim"
    inputs = [t.clone().requires_grad_(backward) for t in (q, k, v)]
    out = attn.flash_attn_func(*inputs, alibi_slopes=slopes, backend=backend)

    def oracle(compute):
        leaves = [t.detach().to(compute if compute == torch.float64 else dtype).requires_grad_() for t in (q, k, v)]
        o, _ = reference.attention(*leaves, alibi_slopes=slopes, dtype=compute)
        return o, (torch.autograd.grad(o, leaves, dout.to(o.dtype)) if backward else ())

    (ref, ref_grads), (pt, pt_grads) = oracle(torch.float64), oracle(dtype)
    assert_parity(out, ref, pt, factor=2.0)
    if backward:
        grads = torch.autograd.grad(out, inputs, dout)
        for name, g, r, p in zip("qkv", grads, ref_grads, pt_grads):
            assert_parity(g, r, p, factor=3.0, what=f"d{name}")


@pytest.mark.parametrize("backend", ["triton", "cpu", "torch", "reference"])
def test_fp32_mask_is_not_rounded(backend, device):
    """An fp32 SDPA mask near -300 with 16-bit inputs: rounding it to fp16 (step 0.25) would change
    every probability; it must reach the softmax, forward and backward, as given."""
    device = _device(backend, device)
    gen = torch.Generator().manual_seed(GEN_SEED)
    q, k, v, dout = (random_tensor((1, 40, 2, 16), torch.float16, generator=gen).to(device) for _ in range(4))
    mask = (-300.0 + torch.rand(40, 40, generator=gen) * 0.25).to(device)
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attn.scaled_dot_product_attention(*(t.transpose(1, 2) for t in inputs), attn_mask=mask,
                                            backend=backend).transpose(1, 2)
    grads = torch.autograd.grad(out, inputs, dout)
    expected = []
    for compute in (torch.float64, torch.float16):
        leaves = [t.to(compute).requires_grad_() for t in (q, k, v)]
        o, _ = reference.attention(*leaves, attn_mask=mask, bottom_right=False, dtype=compute)
        expected.append((o, torch.autograd.grad(o, leaves, dout.to(compute))))
    (ref, ref_grads), (pt, pt_grads) = expected
    assert_parity(out, ref, pt, factor=2.0)
    for name, g, r, p in zip("qkv", grads, ref_grads, pt_grads):
        assert_parity(g, r, p, factor=3.0, what=f"d{name}")


# ---- item 3: an over-full paged cache names block_table --------------------------------------

@pytest.mark.parametrize("backend", ["triton", "cpu", "cuda-sim", "reference"])
def test_overfull_paged_cache_names_block_table(backend):
    case = make_case(batch=2, seqlen_q=2, n_heads=4, n_kv_heads=2, head_dim=32, seqlens_k=[30, 8], capacity=32,
                     page_size=16, append=True, dtype=torch.float16, device="cpu")
    k_before, v_before = case.k_cache.clone(), case.v_cache.clone()
    full = torch.tensor([31, 6], dtype=torch.int32)  # 31 + 2 new keys need 3 pages; the table has 2
    with pytest.raises(ValueError, match=r"flash_attn_with_kvcache: argument 'block_table' expected at least 3 pages "
                                         r"of 16 keys .*\[33, 8\] keys when appending 2 tokens, got 2 pages"):
        attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **{**case.kwargs(), "cache_seqlens": full},
                                     backend=backend)
    with pytest.raises(ValueError, match=r"argument 'cache_seqlens' expected an int in \[0, 32\] \(the capacity of "
                                         r"'block_table': 2 pages of 16 keys\), got 33"):
        attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **{**case.kwargs(), "cache_seqlens": 33},
                                     backend=backend)
    assert torch.equal(case.k_cache, k_before) and torch.equal(case.v_cache, v_before)


# ---- the compatibility module ----------------------------------------------------------------

# flash-attn 2.x's signatures (flash_attn/flash_attn_interface.py), parameter names and defaults in order.
FLASH_ATTN_SIGNATURES = {
    "flash_attn_func": [("q", None), ("k", None), ("v", None), ("dropout_p", 0.0), ("softmax_scale", None),
                        ("causal", False), ("window_size", (-1, -1)), ("softcap", 0.0), ("alibi_slopes", None),
                        ("deterministic", False), ("return_attn_probs", False)],
    "flash_attn_with_kvcache": [("q", None), ("k_cache", None), ("v_cache", None), ("k", None), ("v", None),
                                ("rotary_cos", None), ("rotary_sin", None), ("cache_seqlens", None),
                                ("cache_batch_idx", None), ("cache_leftpad", None), ("block_table", None),
                                ("softmax_scale", None), ("causal", False), ("window_size", (-1, -1)),
                                ("softcap", 0.0), ("rotary_interleaved", True), ("alibi_slopes", None),
                                ("num_splits", 0), ("return_softmax_lse", False)],
}


@pytest.mark.parametrize("name", list(FLASH_ATTN_SIGNATURES))
def test_flash_attn_interface_has_flash_attns_signatures(name):
    """Positional and keyword calls written for flash-attn bind the same way; attn adds only the
    keyword-only ``backend``."""
    from attn import flash_attn_interface

    fn = getattr(flash_attn_interface, name)
    assert fn is getattr(attn, name)
    params = list(inspect.signature(fn).parameters.values())
    positional = [(p.name, None if p.default is inspect.Parameter.empty else p.default)
                  for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional == FLASH_ATTN_SIGNATURES[name]
    assert [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY] == ["backend"]


def test_flash_attn_interface_positional_call():
    from attn.flash_attn_interface import flash_attn_func

    q, k, v = _qkv()
    out, lse, _ = flash_attn_func(q, k, v, 0.0, 0.3, True, torch.tensor([4, 0]), 0.0, None, False, True)
    ref, ref_lse = reference.attention(q, k, v, softmax_scale=0.3, causal=True, window_size=(4, 0),
                                       dtype=torch.float64)
    assert_parity(out, ref, None)
    assert_parity(lse, ref_lse, None, what="lse")
