"""Ahead-of-time configurations of the decode kernels, for the registry in :mod:`attn.triton.aot`.

Every launch configuration the decode launcher can pick (:mod:`attn.triton.decode_configs`) x
cache layout (contiguous / paged) x output kind (fp32 split partials / final dtype), feature
flags on both layouts, and the combine kernel per head-dim bucket and output dtype. The registry
compiles a covering subset in which every value of every dimension appears (the default CI run);
``python -m attn.triton.decode_aot --arch 80 --all`` compiles all of them.
"""
from __future__ import annotations

import itertools

import torch

from attn.triton.configs import HEAD_DIM_BUCKETS
from attn.triton.decode_configs import COMBINE_NUM_WARPS, all_decode_configs, decode_config

# Integer arguments that are not multiples of 16 in typical calls, so the JIT would not mark them.
_SPLIT_NOT_DIVISIBLE = {"stride_tb", "n_heads", "group_size", "seqlen_q", "page_size", "n_splits", "window_left",
                        "window_right", "sm_scale", "softcap"}
_COMBINE_NOT_DIVISIBLE = {"n_heads", "n_splits"}


def _divisible(kernel_path: str, skip: set, constexprs: dict) -> tuple:
    import importlib

    module_name, attr = kernel_path.split(":")
    fn = getattr(importlib.import_module(module_name), attr)
    return tuple(name for name in fn.arg_names if name not in skip and name not in constexprs)


def _split_config(dtype, block_d, cfg, paged, features, split_output):
    from attn.triton.aot import TRITON_TYPES, AotConfig

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
    from attn.triton.aot import TRITON_TYPES, AotConfig

    ty = TRITON_TYPES[dtype]
    kernel = "attn.triton._combine_kernel:_decode_combine_kernel"
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
