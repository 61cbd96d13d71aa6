"""Ahead-of-time compilation of every Triton kernel configuration for real GPU targets.

The interpreter accepts programs the compiler rejects, so CI also compiles each configuration
the dispatcher can select for sm_80 and sm_90 (no GPU needed) and checks the result: it
compiles, fits shared memory, uses tensor-core instructions (``mma`` on sm_80, ``wgmma`` on
sm_90) for 16-bit inputs, and ``ptxas -v`` reports no spills.

Run as ``python -m attn.triton.aot --arch 80 [--filter fwd]``: prints one JSON line per
configuration. It must run WITHOUT ``TRITON_INTERPRET`` (the test launches it in a subprocess).
The configurations come from :mod:`attn.triton.aot_configs`, one generator per op.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

from attn.triton.aot_configs import AotConfig, configs

# Usable shared memory per block (opt-in maximum), bytes.
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def _signature(fn, cfg: AotConfig) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in cfg.constexprs:
            sig[name] = "constexpr"
        elif name in cfg.pointers:
            sig[name] = "*" + cfg.pointers[name]
        elif name in cfg.floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _ptxas_report(ptx: str, arch: int) -> dict:
    """Registers, spill bytes and stack from ``ptxas -v`` on the generated PTX."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run(
            [ptxas, f"-arch=sm_{arch}{suffix}", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True, text=True, check=True,
        )
    text = proc.stdout + proc.stderr

    def grab(pattern):
        m = re.search(pattern, text)
        return int(m.group(1)) if m else None

    return {
        "registers": grab(r"Used (\d+) registers"),
        "spill_stores": grab(r"(\d+) bytes spill stores"),
        "spill_loads": grab(r"(\d+) bytes spill loads"),
        "stack": grab(r"(\d+) bytes stack frame"),
    }


def compile_config(cfg: AotConfig, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module_name, attr = cfg.kernel.split(":")
    fn = getattr(importlib.import_module(module_name), attr)
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if name in cfg.divisible}
    src = ASTSource(fn=fn, signature=_signature(fn, cfg), constexprs=dict(cfg.constexprs), attrs=attrs)
    compiled = triton.compile(
        src, target=GPUTarget("cuda", arch, 32),
        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                 **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {})},
    )
    ptx = compiled.asm["ptx"]
    result = {
        "name": cfg.name,
        "arch": arch,
        "shared": compiled.metadata.shared,
        "shared_limit": SHARED_MEMORY_LIMIT[arch],
        "mma": bool(re.search(r"\bmma\.sync", ptx)),
        "wgmma": "wgmma" in ptx,
        "tensor_cores_expected": cfg.tensor_cores,
        "wgmma_expected": cfg.wgmma,
    }
    result.update(_ptxas_report(ptx, arch))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, required=True, choices=sorted(SHARED_MEMORY_LIMIT))
    parser.add_argument("--filter", default="", help="only configurations whose name contains this")
    parser.add_argument("--all", action="store_true", help="every decode variant, not the covering subset")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("attn.triton.aot must run without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    for cfg in configs(full=args.all):
        if args.filter in cfg.name:
            print(json.dumps(compile_config(cfg, args.arch)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
