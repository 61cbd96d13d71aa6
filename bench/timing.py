"""Timing one case: warm-up, then the median of repeated calls over rotated input sets.

Rotating through several input sets that together exceed the last-level cache keeps a call from
finding its inputs still cached by the previous one (which would flatter small sizes). On CUDA
each call is bracketed by events (device time, no host sync inside the loop); on CPU by
``time.perf_counter`` (CPU ops are synchronous).
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch

# Bytes of distinct inputs to rotate through: about 4x the last-level cache (H100/H200 L2 is
# 50 MB; server CPUs have 32-256 MB of L3 but a share of it per core).
ROTATE_BYTES = {"cuda": 256 << 20, "cpu": 128 << 20}
MAX_INPUT_SETS = 8
MIN_REPS = 3  # a median needs at least three samples


def input_sets_needed(device: str, set_bytes: int) -> int:
    """How many input sets to rotate through so consecutive calls do not share cached inputs."""
    return max(1, min(MAX_INPUT_SETS, math.ceil(ROTATE_BYTES[device] / max(set_bytes, 1))))


def median_ms(run: Callable[[dict], object], input_sets: list[dict], device: str, warmup: int, reps: int,
              max_seconds: float, before: Callable[[dict], None] = lambda inputs: None) -> tuple[float, int]:
    """Median milliseconds of ``run(inputs)`` and the number of timed calls.

    ``before(inputs)`` runs untimed before each call (e.g. clearing gradients). Repetition stops
    after ``reps`` calls, or earlier once ``max_seconds`` were spent and ``MIN_REPS`` are done."""
    n = len(input_sets)
    times: list[float] = []
    for i in range(warmup):
        before(input_sets[i % n])
        t0 = time.perf_counter()
        run(input_sets[i % n])
        warmup_s = time.perf_counter() - t0
    if device == "cpu" and warmup and warmup_s > max_seconds:
        # A slow CPU case gets only MIN_REPS calls; its warm-up call counts as one of them (the
        # median of three discards one outlier, such as first-call library initialization).
        times.append(warmup_s * 1e3)
    if device == "cuda":
        # The count comes from one synchronized call; the timed loop then never synchronizes, so
        # the host runs ahead and queues calls (as triton.testing.do_bench does).
        torch.cuda.synchronize()
        before(input_sets[warmup % n])
        t0 = time.perf_counter()
        run(input_sets[warmup % n])
        torch.cuda.synchronize()
        estimate_s = time.perf_counter() - t0
        events = []
        for i in range(max(MIN_REPS, min(reps, int(max_seconds / max(estimate_s, 1e-6))))):
            inputs = input_sets[(warmup + 1 + i) % n]
            before(inputs)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(inputs)
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in events]
    else:
        started = time.perf_counter()
        for i in range(reps - len(times)):
            inputs = input_sets[(warmup + i) % n]
            before(inputs)
            t0 = time.perf_counter()
            run(inputs)
            times.append((time.perf_counter() - t0) * 1e3)
            if len(times) >= MIN_REPS and time.perf_counter() - started > max_seconds:
                break
    return statistics.median(times), len(times)
