"""Every decode configuration compiles for sm_80 and sm_90 without spills (the covering subset
runs by default in tests/test_aot_compile.py through the shared registry; this is the full
sweep). Runs in a subprocess without TRITON_INTERPRET."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
def test_every_decode_config_compiles_without_spills(arch):
    from attn.triton.decode_aot import decode_aot_configs

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "attn.triton.decode_aot", "--arch", str(arch), "--all"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(list(decode_aot_configs(full=True)))
    problems = []
    for r in results:
        if r["shared"] > r["shared_limit"]:
            problems.append(f"{r['name']}: shared memory {r['shared']} B > {r['shared_limit']} B")
        instr = "wgmma" if arch >= 90 and r["wgmma_expected"] else "mma"
        if r["tensor_cores_expected"] and not r[instr]:
            problems.append(f"{r['name']}: no {instr} instruction in the PTX")
        for key in ("spill_stores", "spill_loads", "stack"):
            if r[key] != 0:
                problems.append(f"{r['name']}: ptxas reports {key} = {r[key]}")
    assert not problems, "\n".join(problems)
