"""Decode parity of the CUDA C++ split-KV kernels (csrc/cuda/decode_kernel.cuh), executed on
CPU by the SIMT emulator ("cuda-sim"), against the oracle (3x rule) and against the Triton kernel.

Every case runs under one of the emulator's schedule x cp.async landing pairs, so a missing
barrier or cp.async wait shows up as NaN or a wrong value. Each case holds three sequences with
ragged key counts: the full cache, the fewest possible (0 cached keys) and one in between.
The default run covers every pair of values of the dimensions below (attn.testing.pairwise);
``-m slow`` runs the full product of the kernel dimensions with the emulations rotating through it.
"""
import itertools
import zlib

import pytest
import torch
from _decode_cases import check_decode, make_case

import attn
from attn import reference
from attn.core.kernel_params import decode_params
from attn.core.spec import AttentionSpec
from attn.cuda.emulator import CP_ASYNC_MODES, SCHEDULES, emulator
from attn.testing import assert_parity, pairwise, parity, product

EMULATIONS = list(itertools.product(SCHEDULES, CP_ASYNC_MODES))
DIMENSIONS = {
    "sizes": [(1, 1), (1, 339), (3, 799), (16, 1024), (1, 4097)],  # (new tokens, keys after the call)
    "group": [1, 4, 8],  # query heads per kv head
    "page_size": [None, 1, 16, 256],  # None: contiguous cache
    "append": [False, True],
    "num_splits": [1, 3, 0],
    "dtype": [torch.float16, torch.bfloat16],
    "head_dim": [32, 64, 128, 256],
    "emulation": EMULATIONS,
}


def _ids(dims: dict) -> str:
    return "-".join(str(v).replace("torch.", "").replace(" ", "") for v in dims.values())


def _ragged(full: int, seqlen_q: int, append: bool) -> list[int]:
    least = seqlen_q if append else 0
    return [full, least, max(least, (full * 2) // 3)]


def _case(sizes, group, page_size, append, dtype, head_dim, seed=0, batch_idx=False):
    seqlen_q, seqlen_k = sizes
    return make_case(batch=3, seqlen_q=seqlen_q, n_heads=2 * group, n_kv_heads=2, head_dim=head_dim,
                     seqlens_k=_ragged(seqlen_k, seqlen_q, append), capacity=seqlen_k, page_size=page_size,
                     append=append, dtype=dtype, device="cpu", seed=seed, batch_idx=batch_idx)


def _run(dims: dict, **options):
    schedule, cp_async = dims["emulation"]
    case = _case(dims["sizes"], dims["group"], dims["page_size"], dims["append"], dims["dtype"], dims["head_dim"])
    with emulator(schedule=schedule, seed=zlib.crc32(_ids(dims).encode()), cp_async=cp_async) as ext:
        ext.reset_stats()
        check_decode(case, dims["dtype"], num_splits=dims["num_splits"], backend="cuda-sim", **options)
        stats = ext.stats()
    # Packed rows (group x new tokens) pick the kernel: tensor cores from 16 rows, FMA below.
    packed_rows = dims["sizes"][0] * dims["group"]
    assert (stats["mma"] > 0) == (packed_rows >= 16), (packed_rows, stats)


@pytest.mark.parametrize("dims", pairwise(DIMENSIONS), ids=_ids)
def test_decode_parity(dims):
    _run(dims)


def _cross_product() -> list[dict]:
    kernel_dims = {name: values for name, values in DIMENSIONS.items() if name != "emulation"}
    return [{**dims, "emulation": EMULATIONS[i % len(EMULATIONS)]} for i, dims in enumerate(product(kernel_dims))]


@pytest.mark.slow
@pytest.mark.parametrize("dims", _cross_product(), ids=_ids)
def test_decode_parity_cross_product(dims):
    _run(dims)


# Window, softcap and ALiBi on both kernels: (new tokens, group) 4 x 2 -> FMA, 4 x 8 -> mma.
@pytest.mark.parametrize("seqlen_q,group", [(4, 2), (4, 8)])
@pytest.mark.parametrize(
    "window,softcap,use_alibi,page_size,dtype,emulation",
    [
        ((50, 0), 0.0, False, 16, torch.float16, ("round-robin", "wait")),
        ((30, 7), 20.0, False, None, torch.bfloat16, ("random", "issue")),
        ((-1, -1), 0.0, True, 1, torch.float16, ("reverse", "wait")),
        ((64, -1), 15.0, True, 256, torch.bfloat16, ("warp-first", "wait")),
    ],
)
def test_decode_window_softcap_alibi(seqlen_q, group, window, softcap, use_alibi, page_size, dtype, emulation):
    case = make_case(batch=2, seqlen_q=seqlen_q, n_heads=2 * group, n_kv_heads=2, head_dim=64, seqlens_k=[339, 40],
                     capacity=339, page_size=page_size, append=True, dtype=dtype, device="cpu", seed=3)
    alibi = torch.rand(2, 2 * group, generator=torch.Generator().manual_seed(1)) if use_alibi else None
    with emulator(schedule=emulation[0], seed=7, cp_async=emulation[1]):
        check_decode(case, dtype, causal=window[1] == 0, window=window, softcap=softcap, alibi=alibi, num_splits=3,
                     backend="cuda-sim")


@pytest.mark.parametrize("head_dim", [32, 256])
def test_softcap_window_at_the_outer_head_dims(head_dim):
    """Softcap and a causal window on both kernels at the smallest and largest head dims."""
    for sizes, group in (((1, 339), 4), ((16, 300), 1)):  # FMA (4 packed rows), tensor cores (16)
        with emulator(schedule="round-robin", cp_async="wait"):
            check_decode(_case(sizes, group, 16, False, torch.float16, head_dim, seed=1), torch.float16,
                         softcap=10.0, window=(100, 0), num_splits=3, backend="cuda-sim")


@pytest.mark.parametrize("seqlen_q,group", [(5, 2), (5, 4)])
def test_decode_cache_batch_idx_non_causal(seqlen_q, group):
    case = _case((seqlen_q, 200), group, None, True, torch.bfloat16, 128, seed=2, batch_idx=True)
    with emulator(schedule="random", seed=3, cp_async="wait"):
        check_decode(case, torch.bfloat16, causal=False, num_splits=3, backend="cuda-sim")


@pytest.mark.parametrize("seqlen_q,group", [(2, 2), (8, 2)])
def test_decode_large_logits_and_empty_rows(seqlen_q, group):
    """Logits ~1e4 stay finite; a sequence with no key outputs 0 with lse -inf, also when split."""
    case = make_case(batch=2, seqlen_q=seqlen_q, n_heads=2 * group, n_kv_heads=2, head_dim=64, seqlens_k=[150, 0],
                     capacity=150, page_size=16, append=False, dtype=torch.float16, device="cpu", seed=5)
    case.q.mul_(40)
    check_decode(case, torch.float16, causal=False, num_splits=3, backend="cuda-sim")
    out, lse = attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **case.kwargs(), num_splits=3,
                                            return_softmax_lse=True, backend="cuda-sim")
    assert (out[1] == 0).all() and torch.isneginf(lse[1]).all()


@pytest.mark.parametrize("sizes,group,page_size,num_splits",
                         [((1, 339), 4, 16, 0), ((16, 1024), 1, None, 3), ((3, 799), 8, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_sim_agrees_with_triton(sizes, group, page_size, num_splits, dtype):
    """Same inputs through both kernel families: each passes the rule against the oracle, and
    they differ from each other by no more than the rule allows either of them."""
    outs = {}
    for backend in ("cuda-sim", "triton"):
        case = _case(sizes, group, page_size, True, dtype, 128, seed=9)  # a fresh copy: the call appends
        outs[backend] = attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **case.kwargs(), causal=True,
                                                     num_splits=num_splits, backend=backend)
    ref, pt = (reference.attention(case.q, case.k_logical, case.v_logical, causal=True, seqlens_k=case.seqlens_k,
                                   dtype=t)[0] for t in (torch.float64, dtype))
    bound = {backend: assert_parity(out, ref, pt, factor=3).bound for backend, out in outs.items()}
    agreement = parity(outs["cuda-sim"], outs["triton"].double(), pt, factor=3)
    assert agreement.error <= min(bound.values()), f"cuda-sim vs triton: {agreement}"


@pytest.mark.parametrize("num_splits", [1, 0])
def test_decode_is_deterministic(num_splits):
    """Two identical calls agree bit for bit (no atomics; splits merged in a fixed order), under
    different emulator schedules."""
    case = _case((1, 700), 4, 16, False, torch.bfloat16, 128)
    outs = []
    for schedule in ("warp-first", "random"):
        with emulator(schedule=schedule, seed=5):
            outs.append(attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **case.kwargs(),
                                                     num_splits=num_splits, return_softmax_lse=True,
                                                     backend="cuda-sim"))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_unsupported_inputs_name_other_backends():
    case = make_case(batch=1, seqlen_q=1, n_heads=2, n_kv_heads=1, head_dim=80, seqlens_k=[10], capacity=16,
                     page_size=None, append=False, dtype=torch.float16, device="cpu")
    with pytest.raises(NotImplementedError, match=r"head dims \[32, 64, 128, 256\], got 80.*triton"):
        attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **case.kwargs(), backend="cuda-sim")
    case = make_case(batch=1, seqlen_q=1, n_heads=2, n_kv_heads=1, head_dim=64, seqlens_k=[10], capacity=16,
                     page_size=None, append=False, dtype=torch.float32, device="cpu")
    with pytest.raises(NotImplementedError, match="dtype=torch.float32"):
        attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **case.kwargs(), backend="cuda-sim")
    k_cache = torch.randn(1, 16, 1, 68, dtype=torch.float16)[..., 2:66]  # 4-byte offset: not 16-byte aligned
    v_cache = torch.randn(1, 16, 1, 64, dtype=torch.float16)
    q = torch.randn(1, 1, 2, 64, dtype=torch.float16)
    with pytest.raises(NotImplementedError, match="'k_cache' must be 16-byte aligned"):
        attn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=10, backend="cuda-sim")
    # Under torch.compile the adapter cannot read pointers; the launcher inside the op refuses alone.
    from attn.ops.decode import flash_attn_decode

    with pytest.raises(ValueError, match="attn::flash_attn_decode: argument 'k_cache' must be 16-byte aligned"):
        flash_attn_decode(q, k_cache, v_cache, torch.tensor([10], dtype=torch.int32), None, None, None, None, 0.125,
                          False, -1, -1, True, 0.0, 1, "cuda-sim")


@pytest.mark.parametrize("seqlen_q,group,page_size,num_splits",
                         [(1, 4, 16, 0), (1, 1, 1, 3), (2, 2, None, 1), (4, 8, 256, 0), (16, 1, 16, 3)])
def test_each_cache_byte_is_read_once(seqlen_q, group, page_size, num_splits):
    """Bytes the kernels copy from global memory (counted by the emulator): every K/V byte of
    every sequence exactly once per kv head, whatever the split count or page size, nothing past a
    sequence's end; the tensor-core kernel also copies its query tile once per block (split)."""
    case = _case((seqlen_q, 700), group, page_size, False, torch.float16, 64, seed=6)
    with emulator() as ext:
        ext.reset_stats()
        attn.flash_attn_with_kvcache(case.q, case.k_cache, case.v_cache, **case.kwargs(), num_splits=num_splits,
                                     backend="cuda-sim")
        stats = ext.stats()
    n_kv_heads, head_dim = case.k_cache.shape[2], case.k_cache.shape[3]
    cache_bytes = 2 * int(case.seqlens_k.sum()) * n_kv_heads * head_dim * 2  # K and V, 2-byte elements
    query_copies = stats["cp_async_bytes"] - cache_bytes
    if seqlen_q * group < 16:  # FMA kernel: queries are plain loads
        assert query_copies == 0
    else:  # one copy of the (seqlen_q x group)-row query tile per block that has keys
        tile_bytes = seqlen_q * group * head_dim * 2
        assert query_copies % tile_bytes == 0 and 0 < query_copies <= tile_bytes * stats["blocks"], query_copies


def test_compiles_without_graph_breaks():
    """Under torch.compile(fullgraph=True) the CUDA decode runs as the attn::flash_attn_decode op
    (a launch through data pointers cannot be traced) and gives the eager result bit for bit;
    opcheck validates the op's schema and fake implementation for this backend."""
    from attn.ops.decode import flash_attn_decode

    case = _case((2, 300), 8, 16, False, torch.float16, 64, seed=8)

    def step(q, k_cache, v_cache, cache_seqlens, block_table):
        return attn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=cache_seqlens, block_table=block_table,
                                            causal=True, return_softmax_lse=True, backend="cuda-sim")

    args = (case.q, case.k_cache, case.v_cache, case.cache_seqlens, case.block_table)
    eager = step(*args)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))
    torch.library.opcheck(flash_attn_decode, (case.q, case.k_cache, case.v_cache, case.seqlens_k.int(), None,
                                              case.block_table, None, None, 0.125, True, -1, 0, True, 0.0, 3, "cuda-sim"))


def test_internal_entry_points_refuse_bad_arguments():
    """The ops refuse a backend without that kernel; the extension refuses parameters the Python
    side never sends (splits without partial buffers, float32) instead of launching."""
    from attn.ops.decode import flash_attn_decode
    from attn.ops.kernel_forward import kernel_forward

    case = _case((1, 40), 1, None, False, torch.float16, 64)
    args = (case.q, case.k_cache, case.v_cache, case.seqlens_k.int(), None, None, None, None, 0.125, True, -1, 0, True, 0.0, 1)
    with pytest.raises(ValueError, match="argument 'backend' expected one of .*'cuda-sim'.* got 'torch'"):
        flash_attn_decode(*args, "torch")
    with pytest.raises(ValueError, match="argument 'backend'"):
        kernel_forward(case.q, case.q, case.q, None, None, 0.125, True, -1, 0, True, 0.0, "triton")
    ext = attn.backends.registry.load("cuda-sim").extension.module()
    spec = AttentionSpec(softmax_scale=0.125, causal=True, window_left=-1, window_right=0, bottom_right=True)
    lse = torch.empty(case.q.shape[0], case.q.shape[2], case.q.shape[1])
    params = decode_params(ext, case.q, case.k_cache, case.v_cache, torch.empty_like(case.q), lse,
                           case.seqlens_k.int(), None, None, spec)
    params.num_splits = 2
    with pytest.raises(ValueError, match="num_splits must be >= 1, with partial buffers"):
        ext.decode(params)
    params.num_splits, params.dtype = 1, ext.DType.float32
    with pytest.raises(ValueError, match="dtype must be float16 or bfloat16"):
        ext.decode(params)
