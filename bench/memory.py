"""Peak memory of one call above the memory its inputs already hold.

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
  ``memory_allocated`` with the inputs in place (after warm-up, so library workspaces are
  already counted in the baseline).
* CPU: there is no allocator counter, so each case runs in a fresh process forked from a
  server that has only imported torch (``multiprocessing`` "forkserver": a fresh address space
  in ~50 ms instead of a 1.5 s interpreter start). The child pins glibc's mmap threshold so
  freed large blocks go back to the OS, builds the inputs, resets the kernel's peak-RSS mark
  (``/proc/self/clear_refs``), runs the op once and reads ``VmHWM - VmRSS(before)``.

An allocation failure is reported as ``oom``; a child killed by the OOM killer likewise.
"""
from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
from typing import Optional

import torch

from bench import providers as P
from bench.profiles import Case

_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
_MMAP_THRESHOLD_BYTES = 128 << 10  # glibc's default, frozen (no dynamic raise up to 32 MiB)
_CHILD_TIMEOUT_S = 300


def cuda_peak_bytes(run, inputs: dict, before) -> int:
    """Peak CUDA memory of ``run(inputs)`` above what is allocated before the call."""
    before(inputs)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run(inputs)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_peak_supported() -> Optional[str]:
    """None when peak RSS can be measured per case here, else why not."""
    if not os.path.exists("/proc/self/clear_refs"):
        return "needs Linux /proc/self/clear_refs to reset the peak-RSS mark"
    return None


def _child(conn, provider_name: str, case: Case, dtype_name: str, threads: int) -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        torch.set_num_threads(threads)
        provider = P.get(provider_name)
        dtype = getattr(torch, dtype_name)
        generator = torch.Generator().manual_seed(0)
        # Warm up at a tiny size of the same op: lazy library initialization is not the op's cost.
        tiny = Case(case.op, 1, case.heads, case.kv_heads, case.head_dim, 16, 16, case.causal)
        P.call(provider, tiny, P.make_inputs(provider, tiny, dtype, "cpu", generator))
        inputs = P.make_inputs(provider, case, dtype, "cpu", generator)
        gc.collect()
        base_kb = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        P.call(provider, case, inputs)
        peak_kb = _status_kb("VmHWM")
        conn.send(("ok", "", (peak_kb - base_kb) * 1024))
    except P.Unavailable as exc:
        conn.send(("unavailable", str(exc), None))
    except NotImplementedError as exc:
        conn.send(("unsupported", str(exc), None))
    except Exception as exc:  # reported in the results, never hidden
        status = "oom" if P.is_oom(exc) else "error"
        conn.send((status, f"{type(exc).__name__}: {exc}", None))
    finally:
        conn.close()


_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["torch", "bench.memory"])
    return _context


def cpu_peak_bytes(provider_name: str, case: Case, dtype_name: str) -> tuple[str, str, Optional[int]]:
    """``(status, reason, bytes)`` of one case measured in a fresh process."""
    why = cpu_peak_supported()
    if why:
        return "unavailable", why, None
    ctx = _forkserver()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, provider_name, case, dtype_name, torch.get_num_threads()))
    proc.start()
    send.close()
    result = None
    if receive.poll(_CHILD_TIMEOUT_S):
        try:
            result = receive.recv()
        except EOFError:  # the child died before sending
            result = None
    proc.join(_CHILD_TIMEOUT_S)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return "error", f"timed out after {_CHILD_TIMEOUT_S} s", None
    if result is None:
        if proc.exitcode == -9:
            return "oom", "killed by SIGKILL (the kernel's OOM killer)", None
        return "error", f"measuring process exited with code {proc.exitcode}", None
    return result
