"""Every Triton kernel configuration compiles for sm_80 and sm_90 (no GPU needed).

The interpreter accepts programs the compiler rejects, so each configuration the dispatcher can
select is compiled ahead of time by ``python -m attn.triton.aot`` in a subprocess (kernels must
be decorated without TRITON_INTERPRET) and checked: shared memory within the architecture's
limit, tensor-core instructions for 16-bit inputs (``mma.sync`` on sm_80, ``wgmma`` on sm_90),
and ``ptxas -v`` reporting no spills and no stack frame.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _compile_all(arch: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "attn.triton.aot", "--arch", str(arch)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200,
    )
    assert proc.returncode == 0, f"AOT compile for sm_{arch} failed:\n{proc.stderr[-4000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("arch", [80, 90])
def test_every_config_compiles_without_spills(arch):
    results = _compile_all(arch)
    names = [r["name"] for r in results]
    assert len(names) == len(set(names)) and len(names) >= 20, names
    problems = []
    for r in results:
        if r["shared"] > r["shared_limit"]:
            problems.append(f"{r['name']}: shared memory {r['shared']} B > {r['shared_limit']} B")
        if r["tensor_cores_expected"]:
            instr = "wgmma" if arch >= 90 and r["wgmma_expected"] else "mma"
            if not r[instr]:
                problems.append(f"{r['name']}: no {instr} instruction in the PTX")
        for key in ("spill_stores", "spill_loads", "stack"):
            if r[key] is None or r[key] != 0:
                problems.append(f"{r['name']}: ptxas reports {key} = {r[key]}")
    assert not problems, "\n".join(problems)
