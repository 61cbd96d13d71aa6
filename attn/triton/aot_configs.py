"""Every Triton kernel configuration the launchers can pick, as data for :mod:`attn.triton.aot`.

One generator per op — :func:`forward_aot_configs`, :func:`backward_aot_configs`,
:func:`decode_aot_configs` — built from the same tile tables the launchers use
(:mod:`attn.triton.configs`, :mod:`attn.triton.decode_configs`), so what CI compiles is what runs.
Decode has many variants (launch configuration x cache layout x output kind x feature flags, and
the combine kernel per head-dim bucket and output dtype); by default a covering subset in which
every value of every dimension appears is compiled, ``python -m attn.triton.aot --arch 80 --all``
compiles all of them.
"""
from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass, field
from typing import Optional

import torch

from attn.triton.configs import HEAD_DIM_BUCKETS, backward_config, forward_config, preprocess_block_m
from attn.triton.decode_configs import COMBINE_NUM_WARPS, all_decode_configs, decode_config

TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class AotConfig:
    name: str
    kernel: str  # "module:attribute" of the @triton.jit function
    pointers: dict  # argument name -> Triton pointee type ("fp16", "fp32", "i32", ...)
    floats: tuple  # names of fp32 scalar arguments; every other non-constexpr scalar is i32
    constexprs: dict
    num_warps: int
    num_stages: int
    tensor_cores: bool = True  # expect mma/wgmma in the PTX
    # sm_90: expect wgmma; False where the tiles are narrower than wgmma's 64-row warpgroup tile
    # (chosen to avoid spills) and tensor cores are used through mma.sync instead
    wgmma: bool = True
    extra: dict = field(default_factory=dict)
    # Arguments the JIT would specialize as multiples of 16 (aligned pointers, strides) in typical
    # calls; without these hints loads are not vectorized and the compile is not what runs.
    divisible: tuple = ()
    maxnreg: Optional[int] = None  # ptxas register cap the launcher passes (None: not set)


def forward_aot_configs():
    """Every forward configuration the launcher can pick: head-dim bucket x dtype (causal,
    windows and Sk boundaries are runtime arguments of one binary), the bias variant (its own
    tile shape) for every bucket, and softcap/ALiBi once (they add a few ALU ops, no operand)."""
    variants = [(dtype, block_d, "", {}) for dtype in TRITON_TYPES for block_d in HEAD_DIM_BUCKETS]
    variants += [(dtype, block_d, "-bias", {"HAS_BIAS": True})
                 for dtype in (torch.float16, torch.float32) for block_d in HEAD_DIM_BUCKETS]
    variants += [(torch.float16, 128, "-softcap", {"HAS_SOFTCAP": True}), (torch.float16, 128, "-alibi", {"HAS_ALIBI": True})]
    for dtype, block_d, suffix, flags in variants:
        ty = TRITON_TYPES[dtype]
        cfg = forward_config(block_d, dtype, has_bias=bool(flags.get("HAS_BIAS")))
        constexprs = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_D": block_d,
                      "HAS_SOFTCAP": False, "HAS_ALIBI": False, "HAS_BIAS": False,
                      "DOT_FP32": False, "PRECISION": "ieee" if dtype == torch.float32 else "tf32"}
        constexprs.update(flags)
        yield AotConfig(
            name=f"fwd-d{block_d}-{ty}{suffix}",
            kernel="attn.triton._forward_kernel:_attn_fwd_kernel",
            pointers={"Q": ty, "K": ty, "V": ty, "Out": ty, "Lse": "fp32", "Bias": "fp32", "Alibi": "fp32"},
            floats=("sm_scale", "softcap"),
            constexprs=constexprs,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            tensor_cores=dtype != torch.float32,
            wgmma=cfg.block_m >= 64,  # a warpgroup's wgmma takes 64 rows
        )


def backward_aot_configs():
    """Every backward configuration the launcher can pick: the three kernels for each head-dim
    bucket x dtype (causal, windows and sequence boundaries are runtime arguments of one binary),
    with an additive bias (an extra fp32 (BLOCK_M, BLOCK_N) tile per step) for 16-bit and fp32
    inputs, and softcap + ALiBi once per kernel (a few ALU ops, no extra operand)."""
    variants = [(dtype, block_d, "", {}) for dtype in TRITON_TYPES for block_d in HEAD_DIM_BUCKETS]
    variants += [(dtype, block_d, "-bias", {"HAS_BIAS": True})
                 for dtype in (torch.float16, torch.float32) for block_d in HEAD_DIM_BUCKETS]
    variants += [(torch.bfloat16, 128, "-softcap-alibi", {"HAS_SOFTCAP": True, "HAS_ALIBI": True})]
    kernels = (("dkdv", "_attn_bwd_dkdv_kernel", ("DK", "DV")), ("dq", "_attn_bwd_dq_kernel", ("DQ",)))
    for dtype, block_d, suffix, flags in variants:
        ty = TRITON_TYPES[dtype]
        cfg = backward_config(block_d, dtype, has_bias=bool(flags.get("HAS_BIAS")))
        for part, kernel, grads in kernels:
            tile = getattr(cfg, part)
            constexprs = {"BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n, "BLOCK_D": block_d,
                          "HAS_SOFTCAP": False, "HAS_ALIBI": False, "HAS_BIAS": False,
                          "DOT_FP32": False, "PRECISION": "ieee" if dtype == torch.float32 else "tf32"}
            constexprs.update(flags)
            yield AotConfig(
                name=f"bwd-{part}-d{block_d}-{ty}{suffix}",
                kernel=f"attn.triton._backward_kernel:{kernel}",
                pointers={"Q": ty, "K": ty, "V": ty, "DOut": ty, **{g: ty for g in grads},
                          "Lse": "fp32", "Delta": "fp32", "Bias": "fp32", "Alibi": "fp32"},
                floats=("sm_scale", "softcap"),
                constexprs=constexprs,
                num_warps=tile.num_warps,
                num_stages=tile.num_stages,
                tensor_cores=dtype != torch.float32,
                # a program's dots have BLOCK_N (dK/dV) or BLOCK_M (dQ) rows
                wgmma=(tile.block_n if part == "dkdv" else tile.block_m) >= 64,
            )
    for dtype in TRITON_TYPES:
        ty = TRITON_TYPES[dtype]
        for block_d in HEAD_DIM_BUCKETS:
            yield AotConfig(
                name=f"bwd-preprocess-d{block_d}-{ty}",
                kernel="attn.triton._backward_kernel:_attn_bwd_preprocess_kernel",
                pointers={"Out": ty, "DOut": ty, "DLse": "fp32", "Delta": "fp32"},
                floats=(),
                constexprs={"BLOCK_M": preprocess_block_m(block_d), "BLOCK_D": block_d},
                num_warps=4,
                num_stages=1,
                tensor_cores=False,
            )


# Integer arguments that are not multiples of 16 in typical calls, so the JIT would not mark them.
_SPLIT_NOT_DIVISIBLE = {"stride_tb", "n_heads", "group_size", "seqlen_q", "page_size", "n_splits", "window_left",
                        "window_right", "sm_scale", "softcap"}
_COMBINE_NOT_DIVISIBLE = {"n_heads", "n_splits"}


def _divisible(kernel_path: str, skip: set, constexprs: dict) -> tuple:
    module_name, attr = kernel_path.split(":")
    fn = getattr(importlib.import_module(module_name), attr)
    return tuple(name for name in fn.arg_names if name not in skip and name not in constexprs)


def _split_config(dtype, block_d, cfg, paged, features, split_output):
    ty = TRITON_TYPES[dtype]
    kernel = "attn.triton._decode_kernel:_decode_split_kernel"
    constexprs = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_D": block_d, "PAGED": paged,
                  "HAS_BATCH_IDX": features and not paged, "HAS_SOFTCAP": features, "HAS_ALIBI": features,
                  "DOT_FP32": False, "PRECISION": "ieee" if dtype == torch.float32 else "tf32"}
    flags = "".join(f"-{n}" for n, on in (("paged", paged), ("features", features), ("final", not split_output)) if on)
    return AotConfig(
        name=f"decode-split-{ty}-d{block_d}-m{cfg.block_m}-n{cfg.block_n}{flags}",
        kernel=kernel,
        pointers={"Q": ty, "K": ty, "V": ty, "Out": "fp32" if split_output else ty, "Lse": "fp32",
                  "Seqlens": "i32", "BatchIdx": "i32", "BlockTable": "i32", "Alibi": "fp32"},
        floats=("sm_scale", "softcap"),
        constexprs=constexprs,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        tensor_cores=dtype != torch.float32,
        divisible=_divisible(kernel, _SPLIT_NOT_DIVISIBLE, constexprs),
        wgmma=cfg.block_m >= 64,  # smaller query tiles than wgmma's 64 rows use mma.sync on sm_90
        maxnreg=cfg.maxnreg,
    )


def _combine_config(dtype, block_d):
    ty = TRITON_TYPES[dtype]
    kernel = "attn.triton._decode_combine_kernel:_decode_combine_kernel"
    return AotConfig(
        name=f"decode-combine-{ty}-d{block_d}",
        kernel=kernel,
        pointers={"OutPart": "fp32", "LsePart": "fp32", "Out": ty, "Lse": "fp32"},
        floats=(),
        constexprs={"BLOCK_D": block_d},
        num_warps=COMBINE_NUM_WARPS,
        num_stages=1,
        tensor_cores=False,
        divisible=_divisible(kernel, _COMBINE_NOT_DIVISIBLE, {"BLOCK_D": block_d}),
    )


def decode_aot_configs(full: bool = False):
    """The covering subset (default) or every decode configuration (``full``)."""
    if full:
        for dtype, block_d, paged, final, features, cfg in all_decode_configs():
            yield _split_config(dtype, block_d, cfg, paged, features, not final)
    else:
        # Every (dtype, head-dim bucket) pair once, cycling query-tile size, layout, feature flags
        # and output kind so that each value of each appears.
        for i, (dtype, block_d) in enumerate(itertools.product((torch.float16, torch.bfloat16, torch.float32),
                                                               HEAD_DIM_BUCKETS)):
            paged, features, final = i % 2 == 1, i % 4 == 3, i % 3 == 1
            cfg = decode_config(block_d, dtype, (64, 16, 32)[i % 3], paged, final, features)
            yield _split_config(dtype, block_d, cfg, paged, features, not final)
    for dtype, block_d in itertools.product((torch.float16, torch.bfloat16, torch.float32), HEAD_DIM_BUCKETS):
        if full or block_d in (HEAD_DIM_BUCKETS[0], HEAD_DIM_BUCKETS[-1]):
            yield _combine_config(dtype, block_d)


def configs(full: bool = False) -> list[AotConfig]:
    """The configurations CI compiles; ``full`` adds every decode variant (a covering subset
    by default, the whole sweep takes ~20 CPU-minutes per architecture)."""
    return list(forward_aot_configs()) + list(backward_aot_configs()) + list(decode_aot_configs(full=full))
