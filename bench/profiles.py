"""Sweeps: what each profile measures, and the cases they expand to.

The speed sweep follows flash-attn's published benchmark (``benchmarks/benchmark_flash_attention.py``):
sequence length doubles while ``batch = tokens / seqlen`` keeps the work per layer constant,
``heads = hidden / head_dim``. Decode uses a GQA model shape (32 query heads over 8 KV heads,
head dim 128) over batch and cache length. The memory sweep holds batch and heads at 1 so the
O(N²) score matrix of naive attention and the O(N) footprint of fused kernels show directly.

Profiles:

* ``cpu`` — runs in under 3 minutes on a 2-core machine, subprocess memory cases included; fp32
  (what CPU attention runs in), one torch thread, hidden 128 instead of 2048 so a sweep point
  takes tens of ms (the fp32 oracle "attn:reference" takes seconds per call at 2k), decode
  cache 1k and 8k, K+V caches above 1 GiB left out.
* ``gpu`` — the full sweep: seqlen 512..16k, hidden 2048, head dims 64 and 128, causal and not,
  decode cache 1k..64k, bf16.
* ``gpu-check`` — a subset of ``gpu`` that runs in under 5 minutes on one GPU.
* ``smoke`` — seconds; exercises every code path of the runner (tests), numbers meaningless.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from bench.formulas import OPS

GiB = 1 << 30


@dataclass(frozen=True)
class Case:
    """One attention call: ``q (batch, seqlen_q, heads, head_dim)``, ``k, v (batch, seqlen_k, kv_heads, head_dim)``.

    For ``decode``, ``seqlen_q`` is 1 and ``seqlen_k`` is the cache length."""

    op: str
    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    seqlen_q: int
    seqlen_k: int
    causal: bool

    @property
    def label(self) -> str:
        if self.op == "decode":
            return f"decode B={self.batch} L={self.seqlen_k} H={self.heads}/{self.kv_heads} D={self.head_dim}"
        mask = " causal" if self.causal else ""
        return f"{self.op} B={self.batch} S={self.seqlen_q} H={self.heads} D={self.head_dim}{mask}"


@dataclass(frozen=True)
class Profile:
    name: str
    device: str  # "cpu" or "cuda"
    dtype: str  # torch dtype name
    ops: tuple[str, ...]
    # speed sweep (forward, forward_backward)
    seqlens: tuple[int, ...]
    tokens: int  # batch = tokens // seqlen
    hidden: int  # heads = hidden // head_dim
    head_dims: tuple[int, ...]
    causal: tuple[bool, ...]
    # decode sweep
    decode_batches: tuple[int, ...]
    cache_lens: tuple[int, ...]
    decode_heads: tuple[int, int]  # (query heads, kv heads)
    decode_head_dim: int
    kv_cache_cap_bytes: Optional[int]  # larger K+V caches are left out of the sweep (host RAM)
    # memory sweep (forward, forward_backward), batch 1
    memory_seqlens: tuple[int, ...]
    memory_heads: int
    memory_head_dim: int
    # timing
    warmup: int
    reps: int  # at most this many timed calls per case...
    max_case_s: float  # ...and no more once this much time went into the case (at least 3 calls)
    # the "executed on CPU for correctness" section
    correctness: bool
    threads: Optional[int] = None  # torch CPU threads during the run; None: torch's default


CPU = Profile(
    name="cpu", device="cpu", dtype="float32", ops=OPS,
    seqlens=(512, 1024, 2048), tokens=2048, hidden=128, head_dims=(64, 128), causal=(False, True),
    decode_batches=(1, 8, 64), cache_lens=(1024, 8192), decode_heads=(32, 8), decode_head_dim=128,
    # 64 × 8192 fp32 K+V is 4.3 GB: more than a shared small machine should be asked for.
    kv_cache_cap_bytes=GiB,
    memory_seqlens=(1024, 2048, 4096, 8192), memory_heads=1, memory_head_dim=64,
        # fast cases repeat up to 25 times (a shared 2-core machine is noisy), slow ones 3 times
    warmup=1, reps=25, max_case_s=0.25, correctness=True,
    # One thread: on a 2-core machine shared with other work (load 10 measured here), OpenMP
    # threads spin-waiting for each other made 2-thread timings several times noisier and the
    # run about 2x longer. Every provider gets the same single core; --threads changes it.
    threads=1,
)

GPU = Profile(
    name="gpu", device="cuda", dtype="bfloat16", ops=OPS,
    seqlens=(512, 1024, 2048, 4096, 8192, 16384), tokens=16384, hidden=2048, head_dims=(64, 128),
    causal=(False, True),
    decode_batches=(1, 8, 64), cache_lens=(1024, 2048, 4096, 8192, 16384, 32768, 65536), decode_heads=(32, 8),
    decode_head_dim=128, kv_cache_cap_bytes=None,
    memory_seqlens=(1024, 2048, 4096, 8192, 16384), memory_heads=16, memory_head_dim=128,
    warmup=5, reps=100, max_case_s=0.5, correctness=True,
)

GPU_CHECK = dataclasses.replace(
    GPU, name="gpu-check", seqlens=(1024, 4096, 16384), head_dims=(128,), decode_batches=(1, 64),
    cache_lens=(4096, 65536), memory_seqlens=(4096, 16384), reps=50, max_case_s=0.25,
)

SMOKE = Profile(
    name="smoke", device="cpu", dtype="float32", ops=OPS,
    seqlens=(64, 128), tokens=128, hidden=64, head_dims=(32,), causal=(False, True),
    decode_batches=(1, 2), cache_lens=(64,), decode_heads=(4, 2), decode_head_dim=32, kv_cache_cap_bytes=GiB,
    memory_seqlens=(128, 256), memory_heads=1, memory_head_dim=32,
    warmup=1, reps=5, max_case_s=0.05, correctness=True, threads=1,  # one thread: see CPU
)

PROFILES = {p.name: p for p in (CPU, GPU, GPU_CHECK, SMOKE)}


def speed_cases(p: Profile) -> list[Case]:
    cases = []
    for op in ("forward", "forward_backward"):
        if op not in p.ops:
            continue
        for head_dim in p.head_dims:
            heads = max(1, p.hidden // head_dim)
            for causal in p.causal:
                for seqlen in p.seqlens:
                    batch = max(1, p.tokens // seqlen)
                    cases.append(Case(op, batch, heads, heads, head_dim, seqlen, seqlen, causal))
    if "decode" in p.ops:
        heads, kv_heads = p.decode_heads
        for batch in p.decode_batches:
            for cache_len in p.cache_lens:
                kv_bytes = 2 * batch * cache_len * kv_heads * p.decode_head_dim * element_size(p.dtype)
                if p.kv_cache_cap_bytes is not None and kv_bytes > p.kv_cache_cap_bytes:
                    continue
                # causal decode: the single new query sits after the whole cache and sees all of it
                cases.append(Case("decode", batch, heads, kv_heads, p.decode_head_dim, 1, cache_len, True))
    return cases


def memory_cases(p: Profile) -> list[Case]:
    cases = []
    for op in ("forward", "forward_backward"):
        if op not in p.ops:
            continue
        for seqlen in p.memory_seqlens:
            cases.append(Case(op, 1, p.memory_heads, p.memory_heads, p.memory_head_dim, seqlen, seqlen, False))
    return cases


def element_size(dtype: str) -> int:
    return {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]
