"""Timing one case: the median of repeated calls, within a per-case budget.

On CUDA :func:`triton.testing.do_bench` times each call with CUDA events, flushes the L2 cache
before it (so one input set suffices) and resets gradients untimed; one synchronized call first
turns the runner's budget (at most ``reps`` calls, about ``max_seconds``, at least ``MIN_REPS``)
into do_bench's milliseconds.

On CPU the loop stays hand-written: torch.utils.benchmark.Timer cannot reset gradients untimed
before each call nor stop a slow case after three calls (``timeit(n)`` adds two untimed calls per
measurement; the autorange methods run ``setup`` once per self-sized block and have no call cap),
and ``time.perf_counter`` around a synchronous, millisecond-long CPU call is already exact. Calls
rotate through input sets that together exceed the last-level cache, so a call does not find its
inputs cached by the previous one (which would flatter small sizes).
"""
from __future__ import annotations

import itertools
import math
import statistics
import time
from typing import Callable, Sequence

import torch

# Bytes of distinct inputs to rotate through on CPU: server CPUs have 32-256 MB of L3, a share
# of it per core. (On CUDA do_bench's L2 flush does this job.)
ROTATE_BYTES = 128 << 20
MAX_INPUT_SETS = 8
MIN_REPS = 3  # a median needs at least three samples


def input_sets_needed(device: str, set_bytes: int) -> int:
    """How many input sets to rotate through so consecutive calls do not share cached inputs."""
    if device == "cuda":
        return 1  # do_bench flushes the L2 cache before every timed call
    return max(1, min(MAX_INPUT_SETS, math.ceil(ROTATE_BYTES / max(set_bytes, 1))))


def median_ms(run: Callable[[dict], object], input_sets: list[dict], device: str, warmup: int, reps: int,
              max_seconds: float, grad_to_none: Sequence[torch.Tensor] = ()) -> tuple[float, int]:
    """Median milliseconds of ``run(inputs)`` and the number of timed calls.

    Calls rotate through ``input_sets``; the ``.grad`` of each tensor in ``grad_to_none`` is reset
    untimed before every call. After ``warmup`` calls, repetition stops after ``reps`` calls, or
    earlier once about ``max_seconds`` were spent and ``MIN_REPS`` are done."""
    calls = itertools.count()

    def step():
        return run(input_sets[next(calls) % len(input_sets)])

    def clear_grads():
        for t in grad_to_none:
            t.grad = None

    if device == "cuda":
        return _cuda_median_ms(step, clear_grads, list(grad_to_none), warmup, reps, max_seconds)
    return _cpu_median_ms(step, clear_grads, warmup, reps, max_seconds)


def _cuda_median_ms(step, clear_grads, grad_to_none, warmup, reps, max_seconds) -> tuple[float, int]:
    from triton.testing import do_bench

    for _ in range(warmup):  # compilation and autotuning stay out of the estimate below
        clear_grads()
        step()
    torch.cuda.synchronize()
    clear_grads()
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    estimate_ms = max((time.perf_counter() - t0) * 1e3, 1e-3)
    wanted = max(MIN_REPS, min(reps, int(max_seconds * 1e3 / estimate_ms)))
    # do_bench times int(rep / its own estimate) calls; the extra half keeps int() from dropping one
    times = do_bench(step, warmup=0, rep=(wanted + 0.5) * estimate_ms, grad_to_none=grad_to_none,
                     return_mode="all")
    return statistics.median(times), len(times)


def _cpu_median_ms(step, clear_grads, warmup, reps, max_seconds) -> tuple[float, int]:
    def timed_ms() -> float:
        clear_grads()
        t0 = time.perf_counter()
        step()
        return (time.perf_counter() - t0) * 1e3

    warm = [timed_ms() for _ in range(warmup)]
    # A slow case gets only MIN_REPS calls; its last warm-up call counts as one of them (the median
    # of three discards one outlier, such as first-call library initialization).
    times = warm[-1:] if warm and warm[-1] > max_seconds * 1e3 else []
    started = time.perf_counter()
    while len(times) < reps and (len(times) < MIN_REPS or time.perf_counter() - started <= max_seconds):
        times.append(timed_ms())
    return statistics.median(times), len(times)
