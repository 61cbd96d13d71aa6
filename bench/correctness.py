"""The "executed on CPU for correctness" section: emulated backends at tiny sizes.

Backends that only run emulated here (Triton under its interpreter, CUDA C++ on the SIMT host
emulator) are executed and checked against :mod:`attn.reference` with the parity rule of
:mod:`attn.testing`, and their wall time is shown — labelled as emulation, never next to real
kernels. The interpreter mode is fixed when Triton kernels are decorated, so this runs in a
subprocess (``python -m bench.correctness``) that sets ``TRITON_INTERPRET=1`` before importing attn.

The dtype is fp16 (what the kernels run on GPUs) unless the run asked for another 16-bit dtype.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.profiles import Case

CASES = (
    Case("forward", 1, 2, 2, 64, 128, 128, False),
    Case("forward", 2, 2, 2, 128, 100, 100, True),  # a ragged last tile
    Case("forward_backward", 1, 2, 2, 64, 128, 128, True),
    Case("forward_backward", 2, 2, 2, 128, 100, 100, False),
    Case("decode", 2, 4, 2, 64, 1, 256, True),  # 2 query heads per kv head: CUDA's FMA kernel
    Case("decode", 1, 32, 2, 128, 1, 512, True),  # 16 per kv head: CUDA's tensor-core kernel
)
_TIMEOUT_S = 600


def _dtype_for(run_dtype: str) -> str:
    return run_dtype if run_dtype in ("float16", "bfloat16") else "float16"


def _check_case(backend: str, case: Case, dtype_name: str) -> dict:
    import torch

    import attn
    from attn import reference
    from attn.testing import parity
    from bench import providers as P
    from bench.results import make_row

    provider = P.AttnBackend(backend)
    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(1234)
    inputs = P.make_inputs(provider, case, dtype, "cpu", generator)
    row = dict(section="correctness", case=case, provider=provider.name, device="cpu", dtype=dtype_name)

    if case.op == "decode" and not hasattr(attn, "flash_attn_with_kvcache"):
        return make_row(**row, status="unavailable", reason="attn.flash_attn_with_kvcache: not implemented yet")
    start = time.perf_counter()
    try:
        out = P.call(provider, case, inputs)
    except NotImplementedError as exc:
        return make_row(**row, status="unsupported", reason=str(exc))
    except Exception as exc:  # reported, never hidden
        return make_row(**row, status="error", reason=f"{type(exc).__name__}: {exc}")
    ms = (time.perf_counter() - start) * 1e3

    def oracle(compute_dtype):
        if case.op == "decode":
            q, k, v = (inputs[n].detach() for n in ("q", "k_cache", "v_cache"))
            return reference.attention(q, k, v, causal=True, seqlens_k=inputs["cache_seqlens"], dtype=compute_dtype)[0]
        q, k, v = (inputs[n].detach().requires_grad_(case.op == "forward_backward") for n in ("q", "k", "v"))
        ref = reference.attention(q, k, v, causal=case.causal, dtype=compute_dtype)[0]
        if case.op == "forward":
            return ref
        ref.backward(inputs["dout"].to(compute_dtype))
        return ref, q.grad, k.grad, v.grad

    checks = []
    if case.op == "forward_backward":
        refs, pts = oracle(torch.float64), oracle(dtype)
        got = (out, inputs["q"].grad, inputs["k"].grad, inputs["v"].grad)
        for name, o, r, p, factor in zip(("out", "dq", "dk", "dv"), got, refs, pts, (2, 3, 3, 3)):
            checks.append((name, parity(o.detach(), r, p, factor)))
    else:
        checks.append(("out", parity(out, oracle(torch.float64), oracle(dtype), 2)))
    worst_name, worst = max(checks, key=lambda c: c[1].error / c[1].bound)
    failed = [f"{n}: {p}" for n, p in checks if not p.ok]
    status, reason = ("mismatch", "; ".join(failed)) if failed else ("ok", f"worst: {worst_name}")
    return make_row(**row, status=status, reason=reason, ms=ms, max_err=worst.error, bound=worst.bound)


def _run_here(dtype_name: str) -> list[dict]:
    """Runs every case on every emulated backend; call with TRITON_INTERPRET=1 already set."""
    from attn.backends import registry
    from bench import providers as P
    from bench.results import make_row

    rows = []
    for name in registry.names():
        if not P.is_emulated(name, "cpu"):
            continue
        # (AttnBackend.status would only say "emulated"; here the backend's own status counts)
        impl = registry.load(name)
        why = impl if isinstance(impl, str) else impl.status("cpu")
        for case in CASES:
            if why:
                rows.append(make_row("correctness", case, f"attn:{name}", "cpu", dtype_name, "unavailable", why))
            else:
                rows.append(_check_case(name, case, dtype_name))
    return rows


def run(run_dtype: str) -> tuple[list[dict], str]:
    """Runs the section in a subprocess; returns its rows and the dtype used."""
    dtype_name = _dtype_for(run_dtype)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.correctness", dtype_name], env=env, capture_output=True,
                              text=True, timeout=_TIMEOUT_S)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode == 0 and lines:
            return json.loads(lines[-1]), dtype_name
        why = f"bench.correctness subprocess exited with code {proc.returncode}: {proc.stderr.strip()[-1000:]}"
    except subprocess.TimeoutExpired:
        why = f"bench.correctness subprocess timed out after {_TIMEOUT_S} s"
    return _failed_rows(why, dtype_name), dtype_name


def _failed_rows(why: str, dtype_name: str) -> list[dict]:
    from attn.backends import registry
    from bench import providers as P
    from bench.results import make_row

    return [make_row("correctness", case, f"attn:{name}", "cpu", dtype_name, "error", why)
            for name in registry.names() if P.is_emulated(name, "cpu") for case in CASES]


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("bench.correctness: run with TRITON_INTERPRET=1 set (bench.correctness.run does this)")
    import torch

    torch.set_num_threads(1)  # tiny sizes: threads only add overhead
    print(json.dumps(_run_here(sys.argv[1])))
