"""The decode kernels compile ahead of time for sm_80 and sm_90: no spills, tensor cores for
16-bit inputs. Runs in a subprocess without TRITON_INTERPRET (see attn/triton/decode_aot.py)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compile(tmp_path, *flags):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DUMP_PTXAS_LOG="1", TRITON_DEFAULT_FP_FUSION="1",
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "attn.triton.decode_aot", *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _check(reports, expected_count):
    assert len(reports) == expected_count
    for r in reports:
        what = f"{r['name']} sm_{r['arch']}"
        assert r["spill_bytes"] == 0, f"{what}: {r['spill_bytes']} bytes spilled ({r['registers']} registers)"
        assert r["registers"] is not None and r["registers"] <= 255, what
        if r["expects_tensor_cores"]:
            assert r["tensor_cores"], f"{what}: no mma instruction in the PTX"


def test_covering_configs_compile(tmp_path):
    from attn.triton.decode_aot import covering_entries

    _check(_compile(tmp_path), 2 * len(covering_entries()))


@pytest.mark.slow
def test_every_config_compiles(tmp_path):
    from attn.triton.decode_aot import all_entries

    _check(_compile(tmp_path, "--all"), 2 * len(all_entries()))
