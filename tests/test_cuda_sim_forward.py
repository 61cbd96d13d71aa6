"""Forward parity of the CUDA C++ kernel, executed on CPU by the SIMT emulator ("cuda-sim").

Every case runs under an emulator schedule and cp.async landing mode, so races (missing
barriers, missing cp.async waits) that a lucky order would hide show up as NaN or wrong values.
The default run covers every combination of dtype, head dim, heads and mode (none, causal in both
alignments, causal sliding window, two-sided window, softcap, ALiBi), with the shapes and the eight
schedule x cp.async pairs rotating through them; ``-m slow`` runs the full product under all
eight schedule/cp.async combinations.
"""
import itertools
import math
import zlib

import pytest
import torch

import attn
from attn.cuda.emulator import CP_ASYNC_MODES, SCHEDULES, emulator
from attn.testing import assert_parity, random_tensor

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
HEAD_DIMS = [64, 128]
SHAPES = [(1, 1), (17, 17), (113, 203), (128, 128), (203, 113), (256, 512)]
HEADS = {"mha": (2, 2), "gqa": (4, 2), "mqa": (3, 1)}
MODES = ["none", "causal", "causal_topleft", "window", "local", "softcap", "alibi"]
# flash_attn_func options of each mode but "causal_topleft" (SDPA's is_causal, run separately).
MODE_OPTIONS = {
    "none": {},
    "causal": dict(causal=True),
    "window": dict(window_size=(37, 0)),  # causal sliding window
    "local": dict(window_size=(50, 20)),
    "softcap": dict(causal=True, softcap=15.0),
    "alibi": dict(alibi=True),
}
EMULATIONS = list(itertools.product(SCHEDULES, CP_ASYNC_MODES))
GRID = dict(dtype=list(DTYPES), head_dim=HEAD_DIMS, shape=SHAPES, heads=list(HEADS), mode=MODES)


def default_cases() -> list[dict]:
    """Every combination of dtype, head dim, heads and mode, with the shapes and the
    schedule x cp.async pairs rotating through them (each appears 6 and 4-5 times)."""
    small = dict(dtype=list(DTYPES), head_dim=HEAD_DIMS, heads=list(HEADS), mode=MODES)
    cases = []
    for i, values in enumerate(itertools.product(*small.values())):
        case = dict(zip(small, values), shape=SHAPES[i % len(SHAPES)], emulation=EMULATIONS[i % len(EMULATIONS)])
        cases.append(case)
    return cases


def _ids(case):
    sq, sk = case["shape"]
    schedule, cp_async = case["emulation"]
    return f"{case['dtype']}-d{case['head_dim']}-{sq}x{sk}-{case['heads']}-{case['mode']}-{schedule}-cp@{cp_async}"


def run_case(case, batch=1):
    dtype = DTYPES[case["dtype"]]
    seqlen_q, seqlen_k = case["shape"]
    n_heads, n_kv_heads = HEADS[case["heads"]]
    head_dim, mode = case["head_dim"], case["mode"]
    gen = torch.Generator().manual_seed(zlib.crc32(_ids(case).encode()))
    q = random_tensor((batch, seqlen_q, n_heads, head_dim), dtype, generator=gen)
    k = random_tensor((batch, seqlen_k, n_kv_heads, head_dim), dtype, generator=gen)
    v = random_tensor((batch, seqlen_k, n_kv_heads, head_dim), dtype, generator=gen)
    options = dict(MODE_OPTIONS.get(mode, {}))
    if options.pop("alibi", False):
        options["alibi_slopes"] = torch.rand(n_heads, generator=gen) * 0.5
    schedule, cp_async = case["emulation"]
    with emulator(schedule=schedule, seed=zlib.crc32(_ids(case).encode()), cp_async=cp_async):
        if mode == "causal_topleft":
            out = attn.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                enable_gqa=n_heads != n_kv_heads, backend="cuda-sim",
            ).transpose(1, 2)
            lse = None
        else:
            out, lse, _ = attn.flash_attn_func(q, k, v, return_attn_probs=True, backend="cuda-sim", **options)
    ref_kwargs = dict(causal=True, bottom_right=False) if mode == "causal_topleft" else options
    ref, ref_lse = attn.reference.attention(q, k, v, dtype=torch.float64, **ref_kwargs)
    pt, pt_lse = attn.reference.attention(q, k, v, dtype=dtype, **ref_kwargs)
    result = assert_parity(out, ref, pt, factor=2.0)
    if lse is not None:
        assert lse.dtype == torch.float32 and lse.shape == (batch, n_heads, seqlen_q)
        assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), "lse: -inf rows differ from the reference"
        assert_parity(lse, ref_lse, pt_lse, factor=2.0, what="lse")
    return result


@pytest.mark.parametrize("case", default_cases(), ids=_ids)
def test_forward_default(case):
    run_case(case)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [dict(zip(GRID, values), emulation=e) for values in itertools.product(*GRID.values()) for e in EMULATIONS],
    ids=_ids,
)
def test_forward_full_product(case):
    run_case(case)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("emulation", EMULATIONS, ids=lambda e: f"{e[0]}-cp@{e[1]}")
def test_every_schedule_and_cp_async_mode(dtype, emulation):
    """One multi-tile causal case (Sq != Sk, partial tiles, GQA) under every emulation."""
    run_case(dict(dtype=dtype, head_dim=64, shape=(150, 190), heads="gqa", mode="causal", emulation=emulation))


@pytest.mark.parametrize("head_dim", [32, 40, 96, 256])
def test_other_head_dims(head_dim):
    """32 and 256 have their own kernels; 40 and 96 are zero-padded to the next one."""
    run_case(dict(dtype="bf16", head_dim=head_dim, shape=(70, 90), heads="gqa", mode="causal",
                  emulation=("random", "wait")), batch=2)


def test_fully_masked_rows_are_zero_with_neg_inf_lse():
    """Sq > Sk with bottom-right causal: the first Sq - Sk queries see no key."""
    gen = torch.Generator().manual_seed(3)
    q = random_tensor((2, 70, 2, 64), torch.float16, generator=gen)
    k = random_tensor((2, 20, 1, 64), torch.float16, generator=gen)
    v = random_tensor((2, 20, 1, 64), torch.float16, generator=gen)
    with emulator(cp_async="wait"):
        out, lse, _ = attn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend="cuda-sim")
    assert torch.equal(out[:, :50], torch.zeros_like(out[:, :50]))
    assert torch.isneginf(lse[:, :, :50]).all()
    assert torch.isfinite(lse[:, :, 50:]).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_large_logits_stay_finite(dtype):
    gen = torch.Generator().manual_seed(4)
    q = random_tensor((1, 64, 2, 64), DTYPES[dtype], generator=gen, scale=1e4 / math.sqrt(64))
    k = random_tensor((1, 96, 2, 64), DTYPES[dtype], generator=gen)
    v = random_tensor((1, 96, 2, 64), DTYPES[dtype], generator=gen)
    with emulator():
        out, lse, _ = attn.flash_attn_func(q, k, v, softmax_scale=1.0, return_attn_probs=True, backend="cuda-sim")
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    ref = attn.reference.attention(q, k, v, softmax_scale=1.0, dtype=torch.float64)[0]
    pt = attn.reference.attention(q, k, v, softmax_scale=1.0, dtype=DTYPES[dtype])[0]
    assert_parity(out, ref, pt)


def test_strided_and_misaligned_inputs():
    """Slices of a larger buffer: non-contiguous strides run as they are; an odd element offset
    (not 16-byte aligned for cp.async) is copied first."""
    gen = torch.Generator().manual_seed(6)
    big = random_tensor((3, 90, 10, 72), torch.float16, generator=gen)
    q = big[1:, 5:80, 1:9:2, 8:72]  # (2, 75, 4, 64), 16-byte aligned rows
    k = big[:2, :60, 2:4, 0:64]
    v = big[1:3, 30:90, 6:8, 3:67]  # offset of 3 elements: misaligned
    with emulator(schedule="reverse", cp_async="wait"):
        out = attn.flash_attn_func(q, k, v, causal=True, backend="cuda-sim")
    ref = attn.reference.attention(q, k, v, causal=True, dtype=torch.float64)[0]
    pt = attn.reference.attention(q, k, v, causal=True, dtype=torch.float16)[0]
    assert_parity(out, ref, pt)


def test_blocks_on_two_os_threads_give_identical_output():
    gen = torch.Generator().manual_seed(7)
    q, k, v = (random_tensor((2, 130, 2, 64), torch.bfloat16, generator=gen) for _ in range(3))
    outs = []
    for os_threads in (1, 2):
        with emulator(os_threads=os_threads):
            outs.append(attn.flash_attn_func(q, k, v, causal=True, backend="cuda-sim"))
    assert torch.equal(outs[0], outs[1])


def test_causal_skips_fully_masked_tiles():
    """The emulator's mma count equals the kernel's tile arithmetic: 4 warps x (S: 8 n-tiles x
    4 k-steps + PV: 4 k-steps x 8 n-tiles) = 256 per (query tile, key tile) at D = 64; causal
    with Sq = Sk = 256 visits 1 + 2 + 3 + 4 of the 16 tile pairs."""
    gen = torch.Generator().manual_seed(8)
    q, k, v = (random_tensor((1, 256, 1, 64), torch.float16, generator=gen) for _ in range(3))
    counts = {}
    for causal in (False, True):
        with emulator() as ext:
            ext.reset_stats()
            attn.flash_attn_func(q, k, v, causal=causal, backend="cuda-sim")
            counts[causal] = ext.stats()["mma"]
    assert counts == {False: 16 * 256, True: 10 * 256}


def test_unsupported_options_name_the_option():
    q = random_tensor((1, 8, 1, 64), torch.float16)
    qt = q.transpose(1, 2)
    with pytest.raises(NotImplementedError, match="attn_mask.*backends that support it"):
        attn.scaled_dot_product_attention(qt, qt, qt, attn_mask=torch.ones(8, 8, dtype=torch.bool), backend="cuda-sim")
    with pytest.raises(NotImplementedError, match="backward"):
        attn.flash_attn_func(q.clone().requires_grad_(), q, q, backend="cuda-sim")
    with pytest.raises(NotImplementedError, match="float32"):
        attn.flash_attn_func(q.float(), q.float(), q.float(), backend="cuda-sim")


def test_backend_availability_is_reported():
    info = attn.available_backends()
    assert info["cuda-sim"].available and "cpu" in info["cuda-sim"].detail
    assert "cuda" in info
    assert not info["cuda"].available or torch.cuda.is_available()


def test_compiles_without_graph_breaks():
    """Under torch.compile(fullgraph=True) the CUDA forward runs as the attn::kernel_forward op and
    gives the eager result bit for bit; opcheck validates the op's schema and fake implementation."""
    from attn.ops.kernel_forward import kernel_forward

    gen = torch.Generator().manual_seed(3)
    q = random_tensor((1, 70, 4, 64), torch.bfloat16, generator=gen)
    k = random_tensor((1, 90, 2, 64), torch.bfloat16, generator=gen)
    v = random_tensor((1, 90, 2, 64), torch.bfloat16, generator=gen)

    def call(q, k, v):
        return attn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend="cuda-sim")

    eager = call(q, k, v)[:2]  # out, lse (no probabilities)
    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")(q, k, v)[:2]
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))
    torch.library.opcheck(kernel_forward, (q, k, v, None, None, 0.125, True, -1, 0, True, 0.0, "cuda-sim"))
    torch.library.opcheck(kernel_forward, (q, k, v, None, torch.rand(4), 0.125, False, 20, 5, False, 12.0, "cuda-sim"))
