"""Ahead-of-time compilation of the decode kernels for real GPU targets (no GPU needed).

Every launch configuration the decode launcher can pick (:mod:`attn.triton.decode_configs`) is
listed here as an :class:`AotEntry`: kernel, argument types, constexprs and the divisibility
hints Triton's JIT would specialize on for typical shapes (16-byte aligned pointers, strides
that are multiples of 16 elements). Without those hints K/V loads are not vectorized and the
compile does not reflect what runs.

Run as a script in a process WITHOUT ``TRITON_INTERPRET`` (under the interpreter ``@triton.jit``
yields interpreted functions that cannot be compiled)::

    python -m attn.triton.decode_aot [--all] [--arch 80 90]

prints one JSON line per (entry, arch): registers, spill bytes, whether the PTX uses tensor-core
instructions. The default is a covering subset (every value of every dimension at least once);
``--all`` compiles every entry.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import re
import sys
from dataclasses import dataclass, field

import torch

from attn.triton.configs import HEAD_DIM_BUCKETS
from attn.triton.decode_configs import BLOCK_M_CHOICES, COMBINE_NUM_WARPS, decode_config

_TRITON_TYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_SCALAR_FLOATS = ("sm_scale", "softcap")
# Integer arguments that are not multiples of 16 in typical calls, so the JIT would not mark them.
_NOT_DIVISIBLE = ("stride_tb", "n_heads", "group_size", "seqlen_q", "page_size", "n_splits", "window_left",
                  "window_right")


@dataclass(frozen=True)
class AotEntry:
    name: str
    kernel_name: str  # "split" or "combine"
    dtype: torch.dtype
    constexprs: dict = field(hash=False)
    num_warps: int = 4
    num_stages: int = 2
    split_output: bool = True  # split kernel writes fp32 partials (n_splits > 1) or the final dtype

    @property
    def expects_tensor_cores(self) -> bool:
        """16-bit split kernels multiply on tensor cores; fp32 (IEEE) and the combine do not."""
        return self.kernel_name == "split" and self.dtype != torch.float32


def _split_entry(dtype, block_d, block_m, paged, batch_idx, softcap, alibi, split_output) -> AotEntry:
    cfg = decode_config(block_d, dtype, block_m)
    const = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, PAGED=paged,
                 HAS_BATCH_IDX=batch_idx and not paged, HAS_SOFTCAP=softcap, HAS_ALIBI=alibi, DOT_FP32=False,
                 PRECISION="ieee" if dtype == torch.float32 else "tf32")
    flags = "".join(f"-{n}" for n, on in (("paged", paged), ("bidx", batch_idx and not paged), ("softcap", softcap),
                                          ("alibi", alibi), ("final", not split_output)) if on)
    name = f"decode_split-{_TRITON_TYPE[dtype]}-d{block_d}-m{cfg.block_m}-n{cfg.block_n}{flags}"
    return AotEntry(name, "split", dtype, const, cfg.num_warps, cfg.num_stages, split_output)


def _combine_entry(dtype, block_d, block_s) -> AotEntry:
    name = f"decode_combine-{_TRITON_TYPE[dtype]}-d{block_d}-s{block_s}"
    return AotEntry(name, "combine", dtype, dict(BLOCK_S=block_s, BLOCK_D=block_d), COMBINE_NUM_WARPS, 1)


# Combine widths: the split count rounded up to a power of two, 2..MAX_SPLITS.
_BLOCK_S_CHOICES = (2, 4, 8, 16, 32, 64, 128)


def all_entries() -> list[AotEntry]:
    """Every configuration: tiles x layouts x output kind (fp32 partials or the final dtype) for
    the split kernel, feature flags on both layouts, every combine width x head-dim bucket x output dtype."""
    entries = []
    for dtype, block_d, block_m, paged, split_output in itertools.product(
            _TRITON_TYPE, HEAD_DIM_BUCKETS, BLOCK_M_CHOICES, (False, True), (False, True)):
        entries.append(_split_entry(dtype, block_d, block_m, paged, False, False, False, split_output))
    for dtype, block_d, paged in itertools.product(_TRITON_TYPE, HEAD_DIM_BUCKETS, (False, True)):
        entries.append(_split_entry(dtype, block_d, 64, paged, True, True, True, True))
    for dtype, block_d, block_s in itertools.product(_TRITON_TYPE, HEAD_DIM_BUCKETS, _BLOCK_S_CHOICES):
        entries.append(_combine_entry(dtype, block_d, block_s))
    return entries


def covering_entries() -> list[AotEntry]:
    """A subset in which every dtype, head-dim bucket, BLOCK_M, layout, feature flag and combine
    width appears at least once, and every (dtype, head-dim bucket) pair of the split kernel."""
    entries = []
    for i, (dtype, block_d) in enumerate(itertools.product(_TRITON_TYPE, HEAD_DIM_BUCKETS)):
        block_m = BLOCK_M_CHOICES[i % len(BLOCK_M_CHOICES)]
        features = i % 4 == 3
        entries.append(_split_entry(dtype, block_d, block_m, i % 2 == 1, features, features, features, i % 3 != 1))
    for i, dtype in enumerate(_TRITON_TYPE):
        entries.append(_combine_entry(dtype, HEAD_DIM_BUCKETS[(2 * i + 1) % len(HEAD_DIM_BUCKETS)],
                                      _BLOCK_S_CHOICES[(3 * i) % len(_BLOCK_S_CHOICES)]))
    entries.append(_combine_entry(torch.bfloat16, 256, _BLOCK_S_CHOICES[-1]))
    return entries


def _signature(kernel, entry: AotEntry) -> tuple[dict, dict]:
    elem = _TRITON_TYPE[entry.dtype]
    if entry.kernel_name == "split":
        pointers = {"Q": elem, "K": elem, "V": elem, "Out": "fp32" if entry.split_output else elem, "Lse": "fp32", "Seqlens": "i32",
                    "BatchIdx": "i32", "BlockTable": "i32", "Alibi": "fp32"}
    else:
        pointers = {"OutPart": "fp32", "LsePart": "fp32", "Out": elem, "Lse": "fp32"}
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in entry.constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*" + pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in _SCALAR_FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name not in _NOT_DIVISIBLE:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, attrs


def compile_entry(entry: AotEntry, arch: int) -> dict:
    """Compiles one entry for ``sm_<arch>`` and reports what ptxas said. Needs
    ``TRITON_DUMP_PTXAS_LOG=1`` and a fresh ``TRITON_CACHE_DIR`` (a cache hit runs no ptxas)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if entry.kernel_name == "split":
        from attn.triton._decode_kernel import _decode_split_kernel as kernel
    else:
        from attn.triton._combine_kernel import _decode_combine_kernel as kernel
    signature, attrs = _signature(kernel, entry)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(ASTSource(kernel, signature, entry.constexprs, attrs),
                                  target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": entry.num_warps, "num_stages": entry.num_stages})
    ptx = compiled.asm["ptx"]
    text = log.getvalue()
    regs = re.findall(r"Used (\d+) registers", text)
    spills = re.findall(r"(\d+) bytes spill stores", text)
    return {
        "name": entry.name, "arch": arch, "registers": int(regs[-1]) if regs else None,
        "spill_bytes": int(spills[-1]) if spills else None, "shared_bytes": compiled.metadata.shared,
        "tensor_cores": bool(re.search(r"\b(mma\.sync|wgmma\.mma_async)", ptx)),
        "expects_tensor_cores": entry.expects_tensor_cores,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every entry, not the covering subset")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    args = parser.parse_args(argv)
    for entry in all_entries() if args.all else covering_entries():
        for arch in args.arch:
            print(json.dumps(compile_entry(entry, arch)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
