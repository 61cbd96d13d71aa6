"""Ring attention on W gloo processes (CPU): time per forward+backward, bytes sent per rank
against the formula, and the fraction of communication hidden behind the kernels.

Run: ``python -m bench.distributed [--worlds 2 4] [--seqlen 2048] [--json out.json]`` (about a
minute on 2 cores; not part of a profile, whose numbers come from one process). Each rank runs
one torch thread. The hidden fraction is ``(t_no_overlap - t_overlap) / t_comm``: ``overlap=False``
waits for every transfer before computing, and ``t_comm`` is the same transfers alone
(docs/design.md §6 has the step-time model these numbers check).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

FORMULAS = {
    "ring bytes per rank, forward": "(W-1)·|K+V| of one shard (K/V in the input dtype)",
    "ring bytes per rank, backward": "(W-1)·|K+V| + W·|dK+dV| (dK/dV travel in fp32 and return home)",
    "hidden": "(t_no_overlap - t_overlap) / t_comm, clipped to [0, 1]",
}


def _median_s(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rank(rank: int, world: int, store: str, args, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    from attn.distributed import ring_flash_attn_func, zigzag_shard
    from attn.distributed.comm import ring_of, wait

    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    shapes = [(1, args.seqlen, args.heads, args.head_dim)] + [(1, args.seqlen, args.kv_heads, args.head_dim)] * 2
    q, k, v = (zigzag_shard(torch.randn(s, generator=gen).to(dtype), world, rank).requires_grad_() for s in shapes)
    dout = torch.randn(q.shape, generator=gen).to(dtype)

    sent = [0]
    real_batch = dist.batch_isend_irecv

    def counting_batch(ops):
        sent[0] += sum(op.tensor.numel() * op.tensor.element_size() for op in ops if op.op is dist.isend)
        return real_batch(ops)

    def step(overlap: bool):
        out = ring_flash_attn_func(q, k, v, causal=True, overlap=overlap, backend="cpu")
        torch.autograd.grad(out, (q, k, v), dout)

    dist.batch_isend_irecv = counting_batch
    step(True)
    bytes_sent = sent[0]
    dist.batch_isend_irecv = real_batch
    t_overlap = _median_s(lambda: step(True), args.reps)
    t_serial = _median_s(lambda: step(False), args.reps)

    ring = ring_of("bench", None)
    kv = torch.empty(2 * k.numel(), dtype=dtype)
    dkv = torch.empty(2 * k.numel(), dtype=torch.float32)

    def transfers():  # the pass's messages, without compute
        for buf, count in ((kv, world - 1), (kv, world - 1), (dkv, world)):
            for _ in range(count):
                wait(ring.start(buf)[1])

    t_comm = _median_s(transfers, args.reps)
    kv_bytes = 2 * k.numel() * k.element_size()
    formula = (world - 1) * kv_bytes * 2 + world * 2 * k.numel() * 4
    results.put(dict(rank=rank, world=world, ms_overlap=1e3 * t_overlap, ms_no_overlap=1e3 * t_serial,
                     ms_comm=1e3 * t_comm, bytes_sent=bytes_sent, bytes_formula=formula,
                     hidden=max(0.0, min(1.0, (t_serial - t_overlap) / t_comm)) if t_comm > 0 else 1.0))
    dist.destroy_process_group()


def run_world(world: int, args) -> list[dict]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_rank, args=(r, world, os.path.join(tmp, "store"), args, results))
                 for r in range(world)]
        for p in procs:
            p.start()
        rows = [results.get(timeout=args.timeout) for _ in range(world)]
        for p in procs:
            p.join(args.timeout)
    return sorted(rows, key=lambda row: row["rank"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--seqlen", type=int, default=2048, help="whole sequence length S")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    for name, formula in FORMULAS.items():
        print(f"{name}: {formula}")
    rows = []
    for world in args.worlds:
        rows += run_world(world, args)
    print(f"causal ring, B=1 S={args.seqlen} H={args.heads}/{args.kv_heads} D={args.head_dim} {args.dtype}, cpu")
    print("W rank  fwd+bwd ms  no-overlap ms  comm ms  bytes sent  formula     hidden")
    for r in rows:
        print(f"{r['world']} {r['rank']:4d}  {r['ms_overlap']:10.1f}  {r['ms_no_overlap']:13.1f}  {r['ms_comm']:7.1f}"
              f"  {r['bytes_sent']:10d}  {r['bytes_formula']:10d}  {r['hidden']:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(formulas=FORMULAS, args=vars(args), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
