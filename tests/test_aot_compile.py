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


# Configuration-name prefixes, one test each, so parallel workers share the compile work.
GROUPS = ["fwd-", "bwd-preprocess", "bwd-dkdv", "bwd-dq", "decode-"]


def _compile_all(arch: int, prefix: str, full: bool = False) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "attn.triton.aot", "--arch", str(arch), "--filter", prefix] + (["--all"] if full else []),
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600,
    )
    assert proc.returncode == 0, f"AOT compile for sm_{arch} failed:\n{proc.stderr[-4000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_groups_cover_every_config():
    from attn.triton.aot_configs import configs

    for cfg in configs():
        assert sum(cfg.name.startswith(g) for g in GROUPS) == 1, cfg.name


def _problems(results: list[dict], arch: int) -> list[str]:
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
    return problems


# sm_80 by default; sm_90 (the same configurations, compiled again: ~10 CPU-minutes) with -m slow.
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("arch", [80, pytest.param(90, marks=pytest.mark.slow)])
def test_every_config_compiles_without_spills(arch, group):
    results = [r for r in _compile_all(arch, group) if r["name"].startswith(group)]
    names = [r["name"] for r in results]
    assert len(names) == len(set(names)) and len(names) >= 5, names
    problems = _problems(results, arch)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
def test_every_decode_variant_compiles_without_spills(arch):
    """The full decode sweep (~213 configurations per architecture)."""
    from attn.triton.aot_configs import decode_aot_configs

    results = [r for r in _compile_all(arch, "decode-", full=True) if r["name"].startswith("decode-")]
    assert len(results) == len(list(decode_aot_configs(full=True)))
    problems = _problems(results, arch)
    assert not problems, "\n".join(problems)
