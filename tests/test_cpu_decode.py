"""Split-KV decode of the C++ CPU backend (attn.cpu.decode) against attn.reference.

The cache is contiguous (B, S, Hkv, D), indexed through cache_batch_idx, or paged through a
shuffled block table; every batch has its own key length (one of them 0). The reference runs on
the logical (B, S, Hkv, D) keys with ``seqlens_k``. 3x rule for 16-bit (split decode), the
tight fp32 bound otherwise; LSE checked too.
"""
import math
import zlib

import pytest
import torch

import attn
from attn.core.spec import AttentionSpec
from attn.cpu.decode import attention_decode
from attn.cpu.isa import supported_isas
from attn.testing import assert_parity, pairwise, product, random_tensor

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
GRID = dict(
    dtype=list(DTYPES),
    head_dim=[16, 40, 64, 128, 256],
    heads=[(4, 4), (8, 2), (32, 8), (3, 1)],
    seqlen_q=[1, 2, 5],
    capacity=[1, 63, 300, 1000],
    cache=["contiguous", "batch_idx", "paged16", "paged256"],
    num_splits=[0, 1, 3, 17],
    mode=["none", "causal", "window", "softcap", "alibi"],
    isa=supported_isas(),
)


def _ids(case):
    h, hkv = case["heads"]
    return (f"{case['dtype']}-d{case['head_dim']}-h{h}kv{hkv}-q{case['seqlen_q']}-s{case['capacity']}-"
            f"{case['cache']}-sp{case['num_splits']}-{case['mode']}-{case['isa']}")


def make_cache(batch, capacity, n_kv_heads, head_dim, dtype, layout, gen):
    """(k_cache, v_cache, cache_batch_idx, block_table, logical k, logical v (B, capacity, Hkv, D))."""
    if layout.startswith("paged"):
        page = int(layout[len("paged"):])
        per_seq = -(-capacity // page)
        n_blocks = batch * per_seq + 2  # spare pages nobody points at
        k_cache = random_tensor((n_blocks, page, n_kv_heads, head_dim), dtype, generator=gen)
        v_cache = random_tensor((n_blocks, page, n_kv_heads, head_dim), dtype, generator=gen)
        table = torch.randperm(n_blocks, generator=gen)[: batch * per_seq].view(batch, per_seq).to(torch.int32)
        k = k_cache[table.long()].reshape(batch, per_seq * page, n_kv_heads, head_dim)[:, :capacity]
        v = v_cache[table.long()].reshape(batch, per_seq * page, n_kv_heads, head_dim)[:, :capacity]
        return k_cache, v_cache, None, table, k, v
    rows = batch + 2 if layout == "batch_idx" else batch
    k_cache = random_tensor((rows, capacity, n_kv_heads, head_dim), dtype, generator=gen)
    v_cache = random_tensor((rows, capacity, n_kv_heads, head_dim), dtype, generator=gen)
    if layout == "batch_idx":
        idx = torch.randperm(rows, generator=gen)[:batch].to(torch.int32)
        return k_cache, v_cache, idx, None, k_cache[idx.long()], v_cache[idx.long()]
    return k_cache, v_cache, None, None, k_cache, v_cache


def run_case(case, batch=3):
    dtype = DTYPES[case["dtype"]]
    n_heads, n_kv_heads = case["heads"]
    head_dim, capacity, seqlen_q, mode = case["head_dim"], case["capacity"], case["seqlen_q"], case["mode"]
    gen = torch.Generator().manual_seed(zlib.crc32(_ids(case).encode()))
    q = random_tensor((batch, seqlen_q, n_heads, head_dim), dtype, generator=gen)
    k_cache, v_cache, batch_idx, table, k, v = make_cache(batch, capacity, n_kv_heads, head_dim, dtype, case["cache"],
                                                          gen)
    seqlens = torch.randint(0, capacity + 1, (batch,), generator=gen, dtype=torch.int32)
    seqlens[0], seqlens[-1] = capacity, 0
    options = dict(causal=mode == "causal", window_size=(29, 3) if mode == "window" else (-1, -1),
                   softcap=3.0 if mode == "softcap" else 0.0,
                   alibi_slopes=torch.rand(batch, n_heads, generator=gen) * 0.3 if mode == "alibi" else None)
    left, right = options["window_size"]
    spec = AttentionSpec(softmax_scale=1 / math.sqrt(head_dim), causal=options["causal"], window_left=left,
                         window_right=0 if options["causal"] else right, softcap=options["softcap"],
                         alibi_slopes=options["alibi_slopes"], need_lse=True)
    out, lse = attention_decode(q, k_cache, v_cache, seqlens, batch_idx, table, spec, case["num_splits"],
                                isa=case["isa"])
    ref, ref_lse = attn.reference.attention(q, k, v, seqlens_k=seqlens, dtype=torch.float64, **options)
    pt = None if dtype == torch.float32 else attn.reference.attention(q, k, v, seqlens_k=seqlens, dtype=dtype,
                                                                       **options)[0]
    assert_parity(out, ref, pt, factor=3.0)
    assert_parity(lse, ref_lse.double(), None, what="lse")
    assert torch.equal(out[-1], torch.zeros_like(out[-1])) and torch.isneginf(lse[-1]).all()  # empty cache
    return out, lse


@pytest.mark.parametrize("case", pairwise(GRID), ids=_ids)
def test_cpu_decode_pairwise(case):
    run_case(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", product(GRID), ids=_ids)
def test_cpu_decode_full_product(case):
    run_case(case)


@pytest.fixture
def threads():
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


@pytest.mark.parametrize("isa", supported_isas())
def test_decode_threads_and_determinism(isa, threads):
    """The split count follows the thread count (1 and 2 threads differ only by rounding, both
    within the rule); a fixed thread count gives bitwise-equal results on every run."""
    case = dict(dtype="fp32", head_dim=128, heads=(8, 1), seqlen_q=1, capacity=1000, cache="contiguous",
                num_splits=0, mode="none", isa=isa)
    runs = {}
    for count in (1, 2, 2):
        threads(count)
        runs.setdefault(count, []).append(run_case(case, batch=2))  # checks parity each time
    for a, b in zip(runs[2][0], runs[2][1]):
        assert torch.equal(a, b)
    assert (runs[1][0][0] - runs[2][0][0]).abs().max().item() <= 2e-5 * runs[1][0][0].abs().max().item()


def test_backend_decode_protocol():
    """The backend object exposes decode with the registry's signature and capabilities."""
    backend = attn.backends.registry.load("cpu")
    assert {"causal", "window_size", "softcap", "alibi_slopes", "return_lse"} <= backend.capabilities["decode"]
    gen = torch.Generator().manual_seed(11)
    q = random_tensor((2, 1, 4, 64), torch.float32, generator=gen)
    k_cache, v_cache = (random_tensor((2, 50, 2, 64), torch.float32, generator=gen) for _ in range(2))
    seqlens = torch.tensor([50, 17], dtype=torch.int32)
    spec = AttentionSpec(softmax_scale=0.125)
    out, lse = backend.decode(q, k_cache, v_cache, seqlens, None, None, spec, 0)
    ref, ref_lse = attn.reference.attention(q, k_cache, v_cache, softmax_scale=0.125, seqlens_k=seqlens,
                                            dtype=torch.float64)
    assert_parity(out, ref, None)
    assert_parity(lse, ref_lse.double(), None, what="lse")


def test_compiles_without_graph_breaks():
    """Under torch.compile(fullgraph=True) the C++ decode runs as the attn::flash_attn_decode op
    and equals eager bit for bit; opcheck validates the op for this backend."""
    from _decode_cases import make_case

    from attn.ops.decode import flash_attn_decode

    case = make_case(batch=2, seqlen_q=2, n_heads=4, n_kv_heads=2, head_dim=32, seqlens_k=[90, 7], capacity=96,
                     page_size=16, append=False, dtype=torch.bfloat16, device="cpu", seed=2)

    def step(q, k_cache, v_cache, cache_seqlens, block_table):
        return attn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=cache_seqlens, block_table=block_table,
                                            causal=True, return_softmax_lse=True, backend="cpu")

    args = (case.q, case.k_cache, case.v_cache, case.cache_seqlens, case.block_table)
    eager, compiled = step(*args), torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))
    torch.library.opcheck(flash_attn_decode, (case.q, case.k_cache, case.v_cache, case.seqlens_k.int(), None,
                                              case.block_table, None, None, 0.2, True, -1, 0, True, 0.0, 3, "cpu"))
