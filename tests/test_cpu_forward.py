"""Forward parity of the C++ CPU backend (attn.cpu._cpu) against attn.reference.

The grid is the Triton forward tests' grid (tests/test_forward.py) plus SDPA masks and the
instruction set (every kernel build this CPU can run: AVX-512, AVX2, the portable fallback).
Also: thread-count independence and determinism, agreement with the other executable
backends, gradients (autograd through the recomputed forward), and "auto" choosing "cpu".
"""
import math
import zlib

import pytest
import torch
from test_forward import DTYPES, GRID, HEADS, make_qkv

import attn
from attn.backends import registry
from attn.cpu.isa import supported_isas
from attn.testing import assert_parity, pairwise, parity, product, random_tensor

ISAS = supported_isas()
CPU_GRID = dict(GRID, mode=GRID["mode"] + ["mask_bool", "mask_float"], isa=ISAS)


def _ids(case):
    sq, sk = case["shape"]
    return (f"{case['dtype']}-d{case['head_dim']}-{sq}x{sk}-{case['heads']}-{case['mode']}-{case['layout']}-"
            f"{case['isa']}")


@pytest.fixture
def isa(monkeypatch):
    def use(name):
        monkeypatch.setenv("ATTN_CPU_ISA", name)
    return use


def _options(mode, batch, n_heads, seqlen_q, seqlen_k, gen):
    """(flash_attn_func kwargs, reference kwargs) for one mode; masks go through SDPA."""
    if mode == "causal":
        return dict(causal=True), dict(causal=True)
    if mode == "window":
        return dict(window_size=(37, 11)), dict(window_size=(37, 11))
    if mode == "window_causal":
        return dict(causal=True, window_size=(50, -1)), dict(causal=True, window_size=(50, -1))
    if mode == "softcap":
        return dict(softcap=2.5), dict(softcap=2.5)
    if mode == "alibi":
        slopes = torch.rand(batch, n_heads, generator=gen) * 0.3
        return dict(alibi_slopes=slopes), dict(alibi_slopes=slopes)
    if mode == "mask_bool":
        mask = torch.rand(batch, 1, seqlen_q, seqlen_k, generator=gen) > 0.3
        return dict(attn_mask=mask), dict(attn_mask=mask, bottom_right=False)
    if mode == "mask_float":
        bias = torch.randn(1, n_heads, seqlen_q, seqlen_k, generator=gen)
        return dict(attn_mask=bias), dict(attn_mask=bias, bottom_right=False)
    if mode == "causal_topleft":
        return dict(is_causal=True), dict(causal=True, bottom_right=False)
    return {}, {}


def run_cpu(q, k, v, mode, kwargs):
    """Runs the "cpu" backend through the public entry point that expresses ``mode``."""
    if mode in ("causal_topleft", "mask_bool", "mask_float"):
        out = attn.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), enable_gqa=q.shape[2] != k.shape[2],
            backend="cpu", **kwargs,
        ).transpose(1, 2)
        return out, None
    out, lse, _ = attn.flash_attn_func(q, k, v, return_attn_probs=True, backend="cpu", **kwargs)
    return out, lse


def run_case(case, isa):
    isa(case["isa"])
    dtype = DTYPES[case["dtype"]]
    seqlen_q, seqlen_k = case["shape"]
    n_heads, n_kv_heads = HEADS[case["heads"]]
    batch = 2
    seed = zlib.crc32(_ids(case).encode())
    q, k, v = make_qkv(batch, seqlen_q, seqlen_k, n_heads, n_kv_heads, case["head_dim"], dtype, case["layout"], "cpu",
                       seed=seed)
    kwargs, ref_kwargs = _options(case["mode"], batch, n_heads, seqlen_q, seqlen_k, torch.Generator().manual_seed(seed))
    out, lse = run_cpu(q, k, v, case["mode"], kwargs)
    ref, ref_lse = attn.reference.attention(q, k, v, dtype=torch.float64, **ref_kwargs)
    pt = None if dtype == torch.float32 else attn.reference.attention(q, k, v, dtype=dtype, **ref_kwargs)[0]
    assert_parity(out, ref, pt)
    if lse is not None:
        assert lse.dtype == torch.float32 and lse.shape == (batch, n_heads, seqlen_q)
        assert_parity(lse, ref_lse.double(), None, what="lse")


@pytest.mark.parametrize("case", pairwise(CPU_GRID), ids=_ids)
def test_cpu_forward_pairwise(case, isa):
    run_case(case, isa)


@pytest.mark.slow
@pytest.mark.parametrize("case", product(CPU_GRID), ids=_ids)
def test_cpu_forward_full_product(case, isa):
    run_case(case, isa)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_fully_masked_rows_are_zero_with_neg_inf_lse(dtype):
    """Sq > Sk with bottom-right causal: the first Sq - Sk queries see no key."""
    q, k, v = make_qkv(2, 70, 20, 4, 2, 64, DTYPES[dtype], "bshd", "cpu", seed=3)
    out, lse, _ = attn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend="cpu")
    assert torch.equal(out[:, :50], torch.zeros_like(out[:, :50]))
    assert torch.isneginf(lse[:, :, :50]).all()
    assert torch.isfinite(lse[:, :, 50:]).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_large_logits_stay_finite(dtype):
    """q.k of magnitude ~1e4: the running max keeps exp2 in range."""
    q, k, v = make_qkv(1, 64, 96, 2, 2, 64, DTYPES[dtype], "bshd", "cpu", seed=4)
    q = (q.float() * (1e4 / math.sqrt(64))).to(q.dtype)
    out, lse, _ = attn.flash_attn_func(q, k, v, softmax_scale=1.0, return_attn_probs=True, backend="cpu")
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    ref = attn.reference.attention(q, k, v, softmax_scale=1.0, dtype=torch.float64)[0]
    pt = None if dtype == "fp32" else attn.reference.attention(q, k, v, softmax_scale=1.0, dtype=DTYPES[dtype])[0]
    assert_parity(out, ref, pt)


def test_strided_inputs_without_copies():
    """Slices of a larger buffer (non-contiguous batch and head strides, an offset)."""
    gen = torch.Generator().manual_seed(6)
    big = random_tensor((3, 90, 10, 72), torch.float16, generator=gen)
    q, k, v = big[1:, 5:80, 1:9:2, 4:68], big[:2, :60, 2:4, 0:64], big[1:3, 30:90, 6:8, 8:72]
    assert q.stride(-1) == 1 and not q.is_contiguous()
    out = attn.flash_attn_func(q, k, v, causal=True, backend="cpu")
    ref = attn.reference.attention(q, k, v, causal=True, dtype=torch.float64)[0]
    pt = attn.reference.attention(q, k, v, causal=True, dtype=torch.float16)[0]
    assert_parity(out, ref, pt)


@pytest.fixture
def threads():
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


@pytest.mark.parametrize("isa_name", ISAS)
def test_thread_count_independent_and_deterministic(isa_name, isa, threads):
    """Each output row is computed by one thread in a fixed order: the result is bitwise the
    same for any thread count and on every run."""
    isa(isa_name)
    q, k, v = make_qkv(2, 300, 301, 4, 2, 64, torch.float32, "bshd", "cpu", seed=7)
    results = []
    for count in (1, 2, 2, 3):
        threads(count)
        results.append(attn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend="cpu")[:2])
    for out, lse in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(lse, results[0][1])


def _other_backends():
    """Executable backends other than cpu/reference/torch (triton under the interpreter, cuda-sim)."""
    found = []
    for name, info in attn.available_backends().items():
        if info.available and name not in ("cpu", "reference", "torch") and "cpu" in registry.load(name).devices:
            found.append(name)
    return found


@pytest.mark.parametrize("other", _other_backends())
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])  # what every GPU backend takes
def test_agrees_with_other_backends(other, dtype):
    """Same inputs through another executable backend: the two outputs differ by no more than
    the parity rule lets either differ from the oracle."""
    q, k, v = make_qkv(1, 130, 200, 4, 2, 64, DTYPES[dtype], "bshd", "cpu", seed=8)
    kwargs = dict(causal=True)
    if "window_size" in registry.load(other).capabilities["forward"]:
        kwargs["window_size"] = (60, -1)
    mine = attn.flash_attn_func(q, k, v, backend="cpu", **kwargs)
    theirs = attn.flash_attn_func(q, k, v, backend=other, **kwargs)
    ref = attn.reference.attention(q, k, v, dtype=torch.float64, **kwargs)[0]
    pt = attn.reference.attention(q, k, v, dtype=DTYPES[dtype], **kwargs)[0]
    bound = parity(mine, ref, pt).bound
    assert (mine.double() - theirs.double()).abs().max().item() <= 2 * bound


@pytest.mark.parametrize("mode", ["causal", "softcap", "mask_float"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_gradients_match_reference(mode, dtype):
    """Backward recomputes through SDPA (the oracle for softcap): 3x rule on dq, dk, dv."""
    gen = torch.Generator().manual_seed(9)
    q, k, v = make_qkv(2, 45, 70, 4, 2, 32, DTYPES[dtype], "bshd", "cpu", seed=9)
    kwargs, ref_kwargs = _options(mode, 2, 4, 45, 70, gen)
    grad = random_tensor(q.shape, DTYPES[dtype], generator=gen)

    def grads(fn, cast):
        leaves = [t.detach().to(cast).requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        out.backward(grad.to(cast))
        return [t.grad for t in leaves]

    mine = grads(lambda a, b, c: run_cpu(a, b, c, mode, kwargs)[0], DTYPES[dtype])
    ref = grads(lambda a, b, c: attn.reference.attention(a, b, c, dtype=torch.float64, **ref_kwargs)[0], torch.float64)
    pt = None if dtype == "fp32" else grads(
        lambda a, b, c: attn.reference.attention(a, b, c, dtype=DTYPES[dtype], **ref_kwargs)[0], DTYPES[dtype])
    for i, name in enumerate(("dq", "dk", "dv")):
        assert_parity(mine[i], ref[i], None if pt is None else pt[i], factor=3.0, what=name)


def test_auto_picks_cpu_for_cpu_tensors():
    backend = registry.select("test", "auto", "cpu", "forward", ["causal", "softcap", "return_lse", "backward"])
    assert backend.name == "cpu"


def test_unknown_isa_is_a_clear_error(isa):
    isa("sse9")
    q, k, v = make_qkv(1, 8, 8, 1, 1, 16, torch.float32, "bshd", "cpu", seed=10)
    with pytest.raises(ValueError, match="sse9"):
        attn.flash_attn_func(q, k, v, backend="cpu")


def test_compiles_without_graph_breaks():
    """Inference under torch.compile(fullgraph=True): the C++ forward runs as the differentiable
    attn::flash_attn_forward op (a pybind11 launch cannot be traced) and equals eager bit for bit;
    opcheck validates the op, its fake and its autograd with a mask, ALiBi, a window and softcap."""
    from attn.ops.forward import flash_attn_forward

    gen = torch.Generator().manual_seed(6)
    q, k, v = (random_tensor((2, 40, h, 32), torch.float32, generator=gen) for h in (4, 2, 2))

    def call(q, k, v):
        return attn.flash_attn_func(q, k, v, causal=True, window_size=(16, 0), backend="cpu")

    assert torch.equal(call(q, k, v), torch.compile(call, fullgraph=True, backend="aot_eager")(q, k, v))
    bias = torch.randn(2, 4, 40, 40, generator=gen)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    torch.library.opcheck(flash_attn_forward, (q, k, v, bias, torch.rand(2, 4), 0.2, False, 10, 3, True, 20.0, "cpu"))
