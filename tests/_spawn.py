"""Runs a function on W spawned processes joined in a gloo (or nccl) process group, with a
deadline: the first rank that raises, dies or overruns ends the run with its error, and every
other rank is killed, so a distributed test never hangs."""
from __future__ import annotations

import datetime
import os
import queue as queue_lib
import tempfile
import time
import traceback

import torch
import torch.multiprocessing as mp

# What a collective may wait before gloo/nccl gives up inside a child; below the run's deadline
# so a stuck rank usually reports its own error first.
COLLECTIVE_TIMEOUT_S = 45


def _child(fn, rank: int, world_size: int, store: str, backend: str, results, args) -> None:
    torch.set_num_threads(1)  # W ranks share the machine's cores
    import torch.distributed as dist

    try:
        dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        results.put((rank, True, fn(rank, world_size, *args)))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))  # before the group closes: peers fail after this
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _failures(results, rank: int, error: str, world_size: int, grace_s: float = 1.0) -> list[str]:
    """The first failure and those that follow within ``grace_s`` (a rank's error makes its
    peers fail too; every report is shown, by rank)."""
    reports, deadline = {rank: error}, time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            other, ok, value = results.get(timeout=0.1)
        except queue_lib.Empty:
            continue
        if not ok:
            reports[other] = value
    return [f"rank {r} of {world_size} failed:\n{reports[r]}" for r in sorted(reports)]


def run_ranks(fn, world_size: int, *args, timeout_s: float = 150.0, backend: str = "gloo") -> list:
    """``[fn(rank, world_size, *args) for rank]``, each in its own process; AssertionError naming
    the rank and its traceback when one fails, or the ranks still running at the deadline."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_child, args=(fn, rank, world_size, store, backend, results, args), daemon=True)
                 for rank in range(world_size)]
        for p in procs:
            p.start()
        out, deadline = {}, time.monotonic() + timeout_s
        try:
            while len(out) < world_size:
                try:
                    rank, ok, value = results.get(timeout=0.2)
                except queue_lib.Empty:
                    dead = [r for r, p in enumerate(procs) if r not in out and p.exitcode is not None]
                    if dead:
                        raise AssertionError(f"rank {dead[0]} of {world_size} died with exit code "
                                             f"{procs[dead[0]].exitcode} without a result") from None
                    if time.monotonic() > deadline:
                        raise AssertionError(f"ranks {[r for r in range(world_size) if r not in out]} of "
                                             f"{world_size} still running after {timeout_s:.0f} s: killed") from None
                    continue
                if not ok:
                    raise AssertionError("\n".join(_failures(results, rank, value, world_size)))
                out[rank] = value
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                p.join(5)
    return [out[r] for r in range(world_size)]
