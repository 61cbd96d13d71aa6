"""attn.distributed on spawned gloo process groups (CPU): ring and all-to-all attention equal
single-process attention on the whole sequence under the parity rule (docs/design.md §3; 3x for
gradients), for W = 1, 2, 4; the block planner against brute-force masks; the zigzag helpers;
errors that end every rank; a failing rank that ends the test instead of hanging (tests/_spawn.py).

Each spawned rank rebuilds the same random inputs from a seed, computes the oracle
(:func:`attn.reference.attention` in fp64, and in the input dtype for the rule's baseline) on the
whole sequence, and checks its own shard, so nothing large crosses processes.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from _spawn import run_ranks

import attn
from attn import reference
from attn.distributed import ring_flash_attn_func, ulysses_flash_attn_func, zigzag_shard, zigzag_unshard
from attn.distributed.blocks import plan_block
from attn.testing import assert_parity, parity, random_tensor

# (kind, dtype, B, chunk per rank-piece, H, Hkv, D, causal, window, softcap, lse_grad, backend)
# ring sequence length = 2 * W * chunk (zigzag); ulysses = W * 2 * chunk (contiguous shards).
CASES = [
    ("ring", torch.float16, 2, 8, 4, 2, 32, False, (-1, -1), 0.0, False, "cpu"),
    ("ring", torch.bfloat16, 1, 8, 4, 1, 16, True, (-1, -1), 0.0, True, "cpu"),
    ("ring", torch.float32, 1, 8, 2, 2, 16, True, (11, -1), 0.0, False, "cpu"),
    ("ring", torch.float16, 1, 8, 4, 2, 16, False, (6, 3), 5.0, False, "cpu"),
    ("ring", torch.float16, 1, 6, 2, 1, 16, True, (3, -1), 4.0, True, "cpu"),
    ("ulysses", torch.float16, 1, 8, 8, 4, 16, True, (-1, -1), 0.0, True, "cpu"),
    ("ulysses", torch.bfloat16, 2, 4, 4, 4, 32, False, (5, 2), 6.0, False, "cpu"),
]
# The default run keeps each world size to a few cases (spawning ranks costs seconds on 2 cores);
# the slow sweep below covers the cross-product.
CASES_BY_WORLD = {1: [CASES[1], CASES[5]], 2: CASES, 4: [CASES[1], CASES[2], CASES[3], CASES[6]]}
TRITON_CASE = ("ring", torch.float16, 1, 4, 2, 1, 16, True, (-1, -1), 0.0, True, "triton")


def _shard(x: torch.Tensor, kind: str, world: int, rank: int, dim: int = 1) -> torch.Tensor:
    return zigzag_shard(x, world, rank, dim) if kind == "ring" else x.chunk(world, dim=dim)[rank].contiguous()


def _oracle(q, k, v, dout, dlse, dtype, options):
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out, lse = reference.attention(*leaves, dtype=dtype, **options)
    loss = (out * dout.to(dtype)).sum() + (0 if dlse is None else (lse * dlse).sum())
    return (out, lse, *torch.autograd.grad(loss, leaves))


def _check_case(case, rank: int, world: int, seed: int) -> dict:
    """Runs one case on this rank; returns the parity numbers (raises on a violation)."""
    kind, dtype, batch, chunk, n_heads, n_kv, dim, causal, window, softcap, lse_grad, backend = case
    seqlen = 2 * world * chunk
    gen = torch.Generator().manual_seed(seed)
    q = random_tensor((batch, seqlen, n_heads, dim), dtype, generator=gen)
    k = random_tensor((batch, seqlen, n_kv, dim), dtype, generator=gen)
    v = random_tensor((batch, seqlen, n_kv, dim), dtype, generator=gen)
    dout = random_tensor((batch, seqlen, n_heads, dim), dtype, generator=gen)
    dlse = random_tensor((batch, n_heads, seqlen), torch.float32, generator=gen) if lse_grad else None
    options = dict(causal=causal, window_size=window, softcap=softcap)
    ref = _oracle(q, k, v, dout, dlse, torch.float64, options)
    pt = _oracle(q, k, v, dout, dlse, dtype, options) if dtype != torch.float32 else (None,) * 5

    leaves = [_shard(t, kind, world, rank).requires_grad_() for t in (q, k, v)]
    func = ring_flash_attn_func if kind == "ring" else ulysses_flash_attn_func
    out, lse, _ = func(*leaves, **options, return_attn_probs=True, backend=backend)
    loss = (out * _shard(dout, kind, world, rank)).sum()
    if lse_grad:
        loss = loss + (lse * _shard(dlse, kind, world, rank, dim=2)).sum()
    grads = torch.autograd.grad(loss, leaves)

    single = dict(zip(("out", "lse"), attn.flash_attn_func(q, k, v, **options, return_attn_probs=True,
                                                           backend=backend)[:2], strict=True))
    numbers = {}
    for name, got, r, p, dim_s in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), ref, pt,
                                      (1, 2, 1, 1, 1), strict=True):
        what = f"{kind} W={world} rank={rank} {dtype} causal={causal} window={window} softcap={softcap} {name}"
        numbers[name] = assert_parity(got.detach(), _shard(r.detach(), kind, world, rank, dim_s),
                                      None if p is None else _shard(p.detach(), kind, world, rank, dim_s),
                                      3.0 if name.startswith("d") else 2.0, what).error
        if name in single:  # the distance to single-process attn.flash_attn_func, for the record
            numbers[f"{name} vs single"] = parity(got.detach(), _shard(single[name], kind, world, rank, dim_s),
                                                  None).error
    return numbers


def _parity_worker(rank: int, world: int, cases) -> list:
    return [(case[0], str(case[1]), _check_case(case, rank, world, seed)) for seed, case in enumerate(cases)]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_matches_single_process_attention(world):
    cases = [c for c in CASES_BY_WORLD[world] if c[0] == "ring" or (c[4] % world == 0 and c[5] % world == 0)]
    for rank, result in enumerate(run_ranks(_parity_worker, world, cases)):
        assert len(result) == len(cases), f"rank {rank}: {result}"
        for kind, dtype, numbers in result:
            print(f"W={world} rank={rank} {kind} {dtype}: " + ", ".join(f"{k} {v:.2e}" for k, v in numbers.items()))


def _triton_compile_errors_worker(rank: int, world: int) -> str:
    _check_case(TRITON_CASE, rank, world, seed=7)

    gen = torch.Generator().manual_seed(3)
    q, k, v = (zigzag_shard(random_tensor((1, 8 * world, 2, 16), torch.float32, generator=gen), world, rank)
               for _ in range(3))
    compiled = torch.compile(lambda q, k, v: ring_flash_attn_func(q, k, v, causal=True) * 2.0, backend="eager")
    torch.testing.assert_close(compiled(q, k, v), ring_flash_attn_func(q, k, v, causal=True) * 2.0, rtol=0, atol=0)
    compiled_u = torch.compile(lambda q, k, v: ulysses_flash_attn_func(q, k, v) + 1.0, backend="eager")
    torch.testing.assert_close(compiled_u(q, k, v), ulysses_flash_attn_func(q, k, v) + 1.0, rtol=0, atol=0)
    no_overlap = ring_flash_attn_func(q, k, v, causal=True, overlap=False)
    torch.testing.assert_close(no_overlap, ring_flash_attn_func(q, k, v, causal=True), rtol=0, atol=0)

    with pytest.raises(ValueError, match=r"argument 'q' expected an even local sequence length"):
        ring_flash_attn_func(q[:, :3], k[:, :3], v[:, :3])
    with pytest.raises(ValueError, match=r"argument 'q' expected a number of heads divisible by the world size.*"
                                         r"use ring_flash_attn_func"):
        ulysses_flash_attn_func(q[:, :, :1], k[:, :, :1], v[:, :, :1])
    length = 4 if rank == 0 else 6  # every rank must raise, none may wait for the others
    with pytest.raises(ValueError, match=r"the same \(B, S_local, H, D, Hkv, Dv\) on every rank"):
        ring_flash_attn_func(q[:, :length], k[:, :length], v[:, :length])
    return "ok"


def test_triton_compile_and_errors_on_two_ranks():
    assert run_ranks(_triton_compile_errors_worker, 2) == ["ok", "ok"]


def _failing_worker(rank: int, world: int) -> None:
    gen = torch.Generator().manual_seed(0)
    q = zigzag_shard(random_tensor((1, 16, 2, 16), torch.float16, generator=gen), world, rank)
    if rank == 1:
        raise RuntimeError("rank 1 fails before the ring starts")
    ring_flash_attn_func(q, q, q)  # rank 0 would wait for rank 1 in the shape check


def test_a_failing_rank_ends_the_run_with_its_error():
    with pytest.raises(AssertionError, match="(?s)rank 1 of 2 failed:.*rank 1 fails before the ring starts"):
        run_ranks(_failing_worker, 2, timeout_s=60)


def _visible(q_start, n_rows, k_start, n_keys, left, right) -> torch.Tensor:
    p = torch.arange(q_start, q_start + n_rows).view(-1, 1)
    t = torch.arange(k_start, k_start + n_keys).view(1, -1)
    lower = torch.ones_like(p - t, dtype=torch.bool) if left < 0 else t >= p - left
    upper = torch.ones_like(p - t, dtype=torch.bool) if right < 0 else t <= p + right
    return lower & upper


def test_plan_block_covers_exactly_the_visible_pairs():
    """The planned call's own mask (flash-attn's bottom-right window on the trimmed rows and keys)
    equals the global mask of the chunk pair, and invisible pairs are skipped."""
    for n, a, b, left, right in itertools.product((1, 4, 5), range(0, 20, 3), range(0, 20, 3), (-1, 0, 2, 7, 30),
                                                  (-1, 0, 1, 6)):
        want = _visible(a, n, b, n, left, right)
        block = plan_block(a, n, b, n, left, right)
        if block is None:
            assert not want.any(), (n, a, b, left, right)
            continue
        got = torch.zeros_like(want)
        rows, keys = block.i1 - block.i0, block.j1 - block.j0
        call_left, call_right = (-1, 0) if block.causal else block.window_size
        got[block.i0:block.i1, block.j0:block.j1] = _visible(keys - rows, rows, 0, keys, call_left, call_right)
        assert torch.equal(got, want), (n, a, b, left, right, block)
        if want.all():
            assert block.window_size == (-1, -1) and not block.causal  # a fully visible pair has no mask


@pytest.mark.parametrize("world", [1, 2, 3])
def test_zigzag_unshard_inverts_shard(world):
    x = random_tensor((2, 4 * world, 3, 5), torch.float32)
    shards = [zigzag_shard(x, world, rank) for rank in range(world)]
    assert torch.equal(zigzag_unshard(shards), x)
    assert torch.equal(shards[0][:, :2], x[:, :2]) and torch.equal(shards[0][:, 2:], x[:, -2:])


def test_zigzag_shard_rejects_a_length_not_divisible_by_2w():
    x = random_tensor((1, 10, 2, 4), torch.float16)
    with pytest.raises(ValueError, match=r"zigzag_shard: argument 'x' expected a sequence length divisible by "
                                         r"2 \* world_size = 4 .*pad.*got 10"):
        zigzag_shard(x, 2, 0)
    with pytest.raises(ValueError, match="argument 'rank'"):
        zigzag_shard(x, 2, 2)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3, 4])
def test_matches_single_process_attention_sweep(world):
    cases = [("ring", dtype, 1, chunk, 4, n_kv, 32, causal, window, softcap, True, "cpu")
             for dtype, chunk, n_kv, causal, window, softcap in itertools.product(
                 (torch.float16, torch.bfloat16, torch.float32), (3, 16), (1, 4), (False, True),
                 ((-1, -1), (9, 0), (20, 5)), (0.0, 3.0))]
    cases += [("ulysses", dtype, 1, 16, 4 * world, world, 32, causal, (-1, -1), 0.0, True, "cpu")
              for dtype, causal in itertools.product((torch.float16, torch.bfloat16), (False, True))]
    run_ranks(_parity_worker, world, cases, timeout_s=600)


def _nccl_worker(rank: int, world: int) -> str:
    torch.cuda.set_device(rank)
    gen = torch.Generator().manual_seed(0)
    full = [random_tensor((1, 512 * world, 8, 64), torch.bfloat16, generator=gen) for _ in range(3)]
    q, k, v = (zigzag_shard(t, world, rank).cuda().requires_grad_() for t in full)
    out = ring_flash_attn_func(q, k, v, causal=True)
    out.sum().backward()
    ref = attn.flash_attn_func(*(t.cuda() for t in full), causal=True)
    torch.testing.assert_close(out, zigzag_shard(ref, world, rank), atol=2e-2, rtol=0)
    return "ok"


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs >= 2 CUDA GPUs for NCCL")
def test_ring_on_nccl():
    assert run_ranks(_nccl_worker, 2, backend="nccl") == ["ok", "ok"]
