"""attn as a drop-in for torch 2.13's SDPA and nn.MultiheadAttention: every call torch accepts runs
and matches torch (docs/design.md §2, the drop-in rule).

The oracle is torch itself: ``torch.nn.functional.scaled_dot_product_attention`` in float64
(``ref``) and in the input dtype (``pt``, the same-dtype term of the parity rule). Shapes, ranks,
batch broadcasting, GQA, value head dims, dtypes and masks are drawn by hypothesis (small
budget); hand cases cover layouts, autocast, torch.func, gradcheck and the module.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attn
from attn.testing import assert_parity

# Backends with a forward on CPU tensors (cuda-sim is run only in hand cases: the emulator is slow).
CPU_BACKENDS = (None, "cpu", "triton", "torch", "reference")
KERNEL_BACKENDS = ("cpu", "triton", "cuda-sim")
FP64 = torch.float64


def _torch_sdpa(query, key, value, dtype, attn_mask=None, **kwargs):
    args = [t.detach().to(dtype).requires_grad_(t.requires_grad) for t in (query, key, value)]
    mask = attn_mask.to(dtype) if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
    return args, F.scaled_dot_product_attention(*args, attn_mask=mask, **kwargs)


def _check_against_torch(query, key, value, backend, grad=True, **kwargs):
    """attn's output (and gradients of a random projection of it) against torch's, by the parity rule."""
    dtype = query.dtype
    inputs = [t.detach().requires_grad_(grad) for t in (query, key, value)]
    out = attn.scaled_dot_product_attention(*inputs, backend=backend, **kwargs)
    ref_in, ref = _torch_sdpa(*inputs, FP64, **kwargs)
    pt_in, pt = _torch_sdpa(*inputs, dtype, **kwargs)
    same_dtype = None if dtype in (torch.float32, FP64) else pt
    assert out.dtype == dtype
    assert_parity(out, ref.to(out.dtype), same_dtype)
    sized = [i for i, n in enumerate(out.shape) if n > 1]  # a size-1 dim's stride is never used
    assert [out.stride(i) for i in sized] == [pt.stride(i) for i in sized], "output memory layout differs from torch's"
    if not grad:
        return
    dout = torch.randn(out.shape, dtype=dtype)
    grads = torch.autograd.grad(out, inputs, dout)
    ref_grads = torch.autograd.grad(ref, ref_in, dout.to(FP64))
    pt_grads = torch.autograd.grad(pt, pt_in, dout)
    for name, g, r, p in zip(("dq", "dk", "dv"), grads, ref_grads, pt_grads):
        assert_parity(g, r.to(g.dtype), None if same_dtype is None else p, factor=3.0, what=name)


def _supports(backend, dtype, head_dim, value_head_dim):
    """Whether an explicit ``backend`` honours the call (the kernels take fp16/bf16/fp32, equal
    head dims up to 256); else attn must refuse, naming torch and reference."""
    if backend in (None, "torch", "reference"):
        return True
    return dtype != FP64 and head_dim == value_head_dim and head_dim <= 256


@st.composite
def _sdpa_call(draw):
    """Inputs of any rank 2..5 with batch dims that broadcast (each dim 1 or full in each input),
    GQA, Ev != E, a mask kind, and a dtype."""
    n_batch = draw(st.integers(0, 2))
    batch = [draw(st.integers(1, 3)) for _ in range(n_batch)]
    heads = draw(st.sampled_from([1, 2, 4]))
    gqa = heads > 1 and draw(st.booleans())
    kv_heads = draw(st.sampled_from([h for h in (1, 2) if heads % h == 0])) if gqa else heads
    lq, lk = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    e = draw(st.sampled_from([8, 16]))
    ev = draw(st.sampled_from([e, 4]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, FP64]))
    rank_drop = draw(st.integers(0, 1)) if n_batch == 0 and not gqa else 0  # (L, E) inputs

    def dims(h):
        bdims = [b if draw(st.booleans()) else 1 for b in batch]
        head = [] if rank_drop else [h if h == heads or gqa else draw(st.sampled_from([1, h]))]
        return bdims + head

    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    query = torch.randn(*batch, *([] if rank_drop else [heads]), lq, e, generator=gen).to(dtype)
    key = torch.randn(*dims(kv_heads), lk, e, generator=gen).to(dtype)
    value = torch.randn(*key.shape[:-1], ev, generator=gen).to(dtype)
    mask_kind = draw(st.sampled_from(["none", "causal", "bool", "float"]))
    kwargs = {"enable_gqa": gqa}
    if mask_kind == "causal":
        kwargs["is_causal"] = True
    elif mask_kind != "none":  # broadcast over every batch dim; every row keeps key 0 visible
        keep = torch.rand(lq, lk, generator=gen) > 0.4
        keep[:, 0] = True
        kwargs["attn_mask"] = keep if mask_kind == "bool" else torch.randn(lq, lk, generator=gen).masked_fill(
            ~keep, float("-inf")).to(dtype)
    backend = draw(st.sampled_from(CPU_BACKENDS))
    return query, key, value, backend, kwargs


@settings(max_examples=15, deadline=None, derandomize=True)
@given(call=_sdpa_call())
def test_sdpa_matches_torch_property(call):
    query, key, value, backend, kwargs = call
    if not _supports(backend, query.dtype, query.shape[-1], value.shape[-1]):
        with pytest.raises(NotImplementedError, match=r"backends that support it: \['torch', 'reference'\]"):
            attn.scaled_dot_product_attention(query, key, value, backend=backend, **kwargs)
        return
    _check_against_torch(query, key, value, backend, **kwargs)


# Hand cases: one per probe class of the drop-in issue, on every CPU backend.
def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


HAND_CASES = {
    "3d": lambda: ((_t(4, 5, 16), _t(4, 7, 16), _t(4, 7, 16)), {}),
    "5d": lambda: ((_t(2, 2, 1, 5, 16), _t(2, 2, 1, 7, 16), _t(2, 2, 1, 7, 16)), {"is_causal": True}),
    "batch_broadcast": lambda: ((_t(2, 2, 2, 5, 16), _t(2, 1, 7, 16), _t(2, 1, 7, 16)), {}),
    "2d_against_3d": lambda: ((_t(5, 16), _t(2, 7, 16), _t(2, 7, 16)), {}),
    "gqa_5d_mask": lambda: ((_t(2, 1, 4, 5, 16), _t(2, 1, 2, 7, 16), _t(1, 1, 2, 7, 16)),
                            {"enable_gqa": True, "attn_mask": torch.rand(1, 4, 5, 7) > 0.3}),
    "value_head_dim": lambda: ((_t(2, 2, 5, 24), _t(2, 2, 7, 24), _t(2, 2, 7, 16)), {"is_causal": True}),
    "float64": lambda: ((_t(1, 2, 5, 8, dtype=FP64),) * 3, {"attn_mask": torch.randn(5, 5, dtype=FP64)}),
    "head_dim_300": lambda: ((_t(1, 1, 4, 300), _t(1, 1, 6, 300), _t(1, 1, 6, 300)), {}),
    "strided_last_dim": lambda: ((_t(1, 2, 16, 5).transpose(-1, -2), _t(1, 2, 7, 16), _t(1, 2, 7, 16)), {}),
    "bshd_layout": lambda: ((_t(1, 5, 3, 16).transpose(1, 2), _t(1, 7, 3, 16).transpose(1, 2),
                             _t(1, 7, 3, 16).transpose(1, 2)), {}),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", sorted(HAND_CASES))
def test_sdpa_hand_cases_match_torch(case, backend):
    torch.manual_seed(sum(map(ord, case)))
    (query, key, value), kwargs = HAND_CASES[case]()
    if not _supports(backend, query.dtype, query.shape[-1], value.shape[-1]):
        with pytest.raises(NotImplementedError, match=r"backends that support it: \['torch', 'reference'\]"):
            attn.scaled_dot_product_attention(query, key, value, backend=backend, **kwargs)
        return
    _check_against_torch(query, key, value, backend, **kwargs)


@pytest.mark.parametrize("case", ["5d", "batch_broadcast", "bshd_layout"])
def test_sdpa_cuda_sim_matches_torch(case):
    torch.manual_seed(sum(map(ord, case)))
    (query, key, value), kwargs = HAND_CASES[case]()
    _check_against_torch(*(t.half() for t in (query, key, value)), "cuda-sim", grad=False, **kwargs)


def test_output_views_like_torch():
    """The regression of the issue: torch's output of a (B, H, L, D) query views as (B*H, L, D)."""
    q = torch.randn(2, 3, 5, 8)
    for backend in CPU_BACKENDS:
        out = attn.scaled_dot_product_attention(q, q, q, backend=backend)
        assert out.view(6, 5, 8).shape == (6, 5, 8)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_autocast_result_dtype_and_values_like_torch(backend, amp_dtype):
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 6, 16, requires_grad=True) for _ in range(3))
    mask = torch.randn(6, 6)
    with torch.autocast("cpu", dtype=amp_dtype):
        out = attn.scaled_dot_product_attention(q, k, v.to(amp_dtype), attn_mask=mask, backend=backend)
        pt = F.scaled_dot_product_attention(q, k, v.to(amp_dtype), attn_mask=mask)
    assert out.dtype == pt.dtype == amp_dtype
    ref = F.scaled_dot_product_attention(*(t.detach().to(amp_dtype).double() for t in (q, k, v)),
                                         attn_mask=mask.to(amp_dtype).double())
    assert_parity(out, ref.to(amp_dtype), pt)
    out.float().sum().backward()
    assert q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()


def _sdpa_sum(backend):
    def loss(q, k, v):
        return attn.scaled_dot_product_attention(q, k, v, is_causal=True, backend=backend).square().sum()
    return loss


def _torch_sum(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).square().sum()


FUNC_BACKENDS = ("triton", "reference", "cpu", "torch")


@pytest.mark.parametrize("backend", FUNC_BACKENDS)
def test_func_grad_and_vjp_like_torch(backend):
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    grads = torch.func.grad(_sdpa_sum(backend), argnums=(0, 1, 2))(q, k, v)
    ref = torch.func.grad(_torch_sum, argnums=(0, 1, 2))(*(t.double() for t in (q, k, v)))
    for g, r in zip(grads, ref):
        assert_parity(g, r.float(), None, what="grad")
    out, pullback = torch.func.vjp(lambda *a: attn.scaled_dot_product_attention(*a, backend=backend), q, k, v)
    ref_out, ref_pullback = torch.func.vjp(F.scaled_dot_product_attention, *(t.double() for t in (q, k, v)))
    cotangent = torch.randn(out.shape)
    for g, r in zip(pullback(cotangent), ref_pullback(cotangent.double())):
        assert_parity(g, r.float(), None, what="vjp")


@pytest.mark.parametrize("backend", FUNC_BACKENDS)
def test_func_vmap_like_torch(backend):
    torch.manual_seed(3)
    q, k, v = (torch.randn(3, 2, 2, 5, 8) for _ in range(3))
    out = torch.func.vmap(lambda q, v: attn.scaled_dot_product_attention(q, k[0], v, backend=backend))(q, v)
    ref = torch.func.vmap(lambda q, v: F.scaled_dot_product_attention(q, k[0].double(), v))(q.double(), v.double())
    assert_parity(out, ref.float(), None)


@pytest.mark.parametrize("backend", FUNC_BACKENDS)
def test_func_vmap_of_grad_like_torch(backend):
    torch.manual_seed(4)
    q, k, v = (torch.randn(3, 1, 2, 5, 8) for _ in range(3))
    grads = torch.func.vmap(torch.func.grad(_sdpa_sum(backend), argnums=(0, 1, 2)))(q, k, v)
    ref = torch.func.vmap(torch.func.grad(_torch_sum, argnums=(0, 1, 2)))(*(t.double() for t in (q, k, v)))
    for g, r in zip(grads, ref):
        assert_parity(g, r.float(), None, what="vmap(grad)")


@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal"])
def test_gradcheck_fp64(mask):
    torch.manual_seed(5)
    q, k, v = (torch.randn(1, 2, 3, 4, dtype=FP64, requires_grad=True) for _ in range(3))
    kwargs = {"causal": {"is_causal": True}, "none": {},
              "bool": {"attn_mask": torch.tensor([[True, False, True]] * 3)},
              "float": {"attn_mask": torch.randn(3, 3, dtype=FP64)}}[mask]
    assert torch.autograd.gradcheck(lambda *a: attn.scaled_dot_product_attention(*a, **kwargs), (q, k, v))


# nn.MultiheadAttention
def _mha_pair(**kwargs):
    torch.manual_seed(6)
    ref = nn.MultiheadAttention(16, 4, batch_first=True, **kwargs).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return ref, attn.MultiheadAttention.from_module(ref)


@pytest.mark.parametrize("need_weights", [False, True])
def test_mha_nested_tensor_like_torch_fast_path(need_weights):
    ref, mha = _mha_pair()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nested tensors are a prototype API
        x = torch.nested.nested_tensor([torch.randn(3, 16), torch.randn(5, 16)])
    with torch.no_grad():
        out, weights = mha(x, x, x, need_weights=need_weights)
        ref_out, ref_weights = ref(x, x, x, need_weights=need_weights)
    assert out.is_nested
    for o, r in zip(out.unbind(), ref_out.unbind()):
        assert_parity(o, r, None)
    if need_weights:
        assert_parity(weights, ref_weights, None, what="weights")
    with pytest.raises(ValueError, match="self-attention"):
        mha(x, x.clone(), x.clone(), need_weights=False)


def test_mha_in_encoder_layer_runs_attn_kernels_in_inference(monkeypatch):
    """torch's fast path would bypass the module; attn's must be called, with torch's result."""
    torch.manual_seed(7)
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0).eval()
    ref = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0).eval()
    ref.load_state_dict(layer.state_dict())
    layer.self_attn = attn.MultiheadAttention.from_module(layer.self_attn)
    calls = []
    real = attn.modules.mha.scaled_dot_product_attention
    monkeypatch.setattr(attn.modules.mha, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        out, want = layer(x), ref(x)
    assert calls, "attn's MultiheadAttention was bypassed by torch's fast path"
    assert_parity(out, want, None)


def test_mha_jit_script_warns_and_matches_torch():
    ref, mha = _mha_pair()
    with pytest.warns(UserWarning, match="torch.jit.script cannot compile attn's forward"):
        scripted = torch.jit.script(mha)
    x = torch.randn(2, 5, 16)  # with grad on: torch's own scripted module fails under no_grad (fast path)
    assert_parity(scripted(x, x, x, need_weights=False)[0], ref(x, x, x, need_weights=False)[0], None)
    with torch.no_grad():  # the scripted module shares the parameters
        mha.in_proj_weight.mul_(2)
        ref.in_proj_weight.mul_(2)
    assert_parity(scripted(x, x, x, need_weights=False)[0], ref(x, x, x, need_weights=False)[0], None)
