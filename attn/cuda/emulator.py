"""Options of the SIMT emulator that runs the CUDA kernels on CPU tensors ("cuda-sim")."""
from __future__ import annotations

import contextlib
from typing import Iterator

from attn.cuda.extension import CUDA_SIM_EXTENSION

SCHEDULES = ("warp-first", "round-robin", "reverse", "random")
CP_ASYNC_MODES = ("issue", "wait")


@contextlib.contextmanager
def emulator(schedule: str = "warp-first", seed: int = 0, cp_async: str = "issue", os_threads: int = 1,
             stack_bytes: int = 64 * 1024, racecheck: bool = True) -> Iterator[object]:
    """Within the block, "cuda-sim" runs under these emulator options:

    ``schedule``: "warp-first" (each warp runs as far as it can), "round-robin", "reverse" or
    "random" (seeded by ``seed``); ``cp_async``: "issue" (copies land at once) or "wait" (only at
    the wait that retires them; until then the destination reads NaN); ``os_threads``: blocks run
    on this many OS threads; ``racecheck``: report cp.async/ldmatrix traffic between warps that
    no barrier or cp.async wait orders, under any schedule. The options are process-wide (not per Python thread) and the
    previous ones come back on exit. Yields the extension module (``stats()``, ``selftest``)."""
    ext = CUDA_SIM_EXTENSION.module()
    if isinstance(ext, str):
        raise RuntimeError(f"emulator: backend 'cuda-sim' is not available: {ext}")
    previous = ext.options()
    ext.configure(schedule, seed, cp_async, os_threads, stack_bytes, racecheck)
    try:
        yield ext
    finally:
        ext.configure(*previous)
