"""Peak memory of one call above the memory its inputs already hold.

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
  ``memory_allocated`` with the inputs in place (after warm-up, so library workspaces are
  already counted in the baseline).
* CPU: there is no allocator counter, so each case runs in a fresh process. A small fork
  server (``python -m bench.memory``) imports torch once and never runs an op; for each case it
  forks a child (a fresh address space in milliseconds instead of a 1.5 s interpreter start).
  The child pins glibc's mmap threshold so freed large blocks go back to the OS, builds the
  inputs, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), runs the op once and
  reports ``VmHWM - VmRSS(before the op)``.

An allocation failure is reported as ``oom``; a child killed by the OOM killer likewise.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import select
import signal
import subprocess
import sys
from typing import Optional

import torch

from bench import providers as P
from bench.profiles import Case

_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
_MMAP_THRESHOLD_BYTES = 128 << 10  # glibc's default, frozen (no dynamic raise up to 32 MiB)
_CASE_TIMEOUT_S = 300


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
    if not os.path.exists("/proc/self/clear_refs") or not hasattr(os, "fork"):
        return "needs Linux (/proc/self/clear_refs to reset the peak-RSS mark, and fork)"
    return None


def _measure_in_this_process(request: dict) -> dict:
    """Runs in the forked child: one call of one case, peak RSS above the inputs."""
    case = Case(**request["case"])
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        torch.set_num_threads(request["threads"])
        provider = P.get(request["provider"])
        dtype = getattr(torch, request["dtype"])
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
        return {"status": "ok", "reason": "", "bytes": (_status_kb("VmHWM") - base_kb) * 1024}
    except P.Unavailable as exc:
        return {"status": "unavailable", "reason": str(exc), "bytes": None}
    except NotImplementedError as exc:
        return {"status": "unsupported", "reason": str(exc), "bytes": None}
    except Exception as exc:  # reported in the results, never hidden
        return {"status": "oom" if P.is_oom(exc) else "error", "reason": f"{type(exc).__name__}: {exc}", "bytes": None}


def _serve() -> None:
    """Fork server loop: one JSON request per stdin line, one JSON result per stdout line."""
    P.discover()  # imports attn and its registry once, before any fork
    gc.freeze()  # children's gc.collect skips (and so does not copy-on-write) the server's objects
    for line in sys.stdin:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns into the loop
            os.close(read_fd)
            os.dup2(2, 1)  # stray prints must not corrupt the protocol on stdout
            result = _measure_in_this_process(json.loads(line))
            os.write(write_fd, json.dumps(result).encode())
            os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        if data:
            result = json.loads(data)
        elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            result = {"status": "oom", "reason": "killed by SIGKILL (the kernel's OOM killer)", "bytes": None}
        else:
            result = {"status": "error", "reason": f"measuring process ended with status {status}", "bytes": None}
        print(json.dumps(result), flush=True)


class _ForkServer:
    def __init__(self):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # its own session, so a timed-out case is ended with its server and nothing else
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.memory"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)

    def measure(self, request: dict) -> Optional[dict]:
        """The child's result, or None when it did not answer within the timeout."""
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], _CASE_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        return json.loads(line) if line else None

    def stop(self, kill: bool = False) -> None:
        if kill:
            os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.stdin.close()
        self.proc.wait()
        self.proc.stdout.close()


_server: Optional[_ForkServer] = None


def cpu_peak_bytes(provider_name: str, case: Case, dtype_name: str) -> tuple[str, str, Optional[int]]:
    """``(status, reason, bytes)`` of one case measured in a fresh process."""
    global _server
    why = cpu_peak_supported()
    if why:
        return "unavailable", why, None
    if _server is None:
        _server = _ForkServer()
    request = {"provider": provider_name, "case": case.__dict__, "dtype": dtype_name,
               "threads": torch.get_num_threads()}
    result = _server.measure(request)
    if result is None:
        _server.stop(kill=True)
        _server = None
        return "error", f"no result within {_CASE_TIMEOUT_S} s (measuring process ended)", None
    return result["status"], result["reason"], result["bytes"]


def stop_server() -> None:
    """Ends the fork server (called when a run is done; a later measurement starts a new one)."""
    global _server
    if _server is not None:
        _server.stop()
        _server = None


if __name__ == "__main__":
    _serve()
