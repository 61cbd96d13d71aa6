"""Tile configurations, as data.

One entry per padded head-dim bucket (``BLOCK_D``, the next power of two >= max(D, 16)). The
same table drives the launchers and the ahead-of-time compile test, so every configuration the
dispatcher can pick is compiled for sm_80 and sm_90 in CI.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

HEAD_DIM_BUCKETS = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Forward, 16-bit inputs (register and spill counts from `python -m attn.triton.aot --arch 80`).
# BLOCK_M=128 amortizes each K/V tile over many queries. Up to D=32, 4 warps hold the 128-row
# tile in registers; from D=64 on, 4 warps spill (168 B at D=64) and 8 warps do not. At D=256
# the Q tile alone is 64 KB at BLOCK_M=128, so BLOCK_M=64 and a 32-wide K/V tile keep two
# pipeline stages well inside sm_80's 163 KB, and a 16-wide K/V tile is the widest that does not
# spill on sm_90 (32 wide: 28 B).
_FWD_16BIT = {
    16: TileConfig(128, 64, 4, 3),
    32: TileConfig(128, 64, 4, 3),
    64: TileConfig(128, 64, 8, 3),
    128: TileConfig(128, 64, 8, 3),
    256: TileConfig(64, 16, 8, 2),
}

# Forward, fp32 inputs. fp32 products are exact-precision FMA (no tensor cores, no TF32), whose
# operands live in registers: tiles must be far smaller than for 16-bit inputs to avoid spills
# (64x64 at D=64 spilled 47 KB; 3xTF32 was worse, splitting every operand in two).
# The non-finite pass (docs/design.md §3) runs after the loop with Q reloaded per tile; with it,
# 4 warps spilled 4-28 B at D=16 and D=32 (with and without a bias), 32x32 tiles 4-48 B at
# D=64 with 4, 8 or 16 warps, and 32-wide K/V tiles 1.5 KB at D=256; so 8 warps at D=16/32,
# 16x16 tiles at D=64 and 16-wide K/V tiles at D=256 (measured on sm_80 and sm_90).
_FWD_32BIT = {
    16: TileConfig(32, 16, 8, 2),
    32: TileConfig(32, 32, 8, 2),
    64: TileConfig(16, 16, 4, 2),
    128: TileConfig(32, 16, 8, 2),
    256: TileConfig(16, 16, 8, 2),
}

# With an additive bias (SDPA attn_mask) each step also loads a (BLOCK_M, BLOCK_N) fp32 tile.
# At D=128 that spilled 128 B with 64-wide K/V tiles and none with 16-wide ones; at D=256 the
# second pipeline stage no longer fits in registers (3.4 KB spilled), so one stage, and since the
# non-finite pass 64 query rows spilled 12 B on sm_90 (272 B with 16 warps), so 32 rows: mma.sync
# instead of wgmma on sm_90 for this one configuration.
_FWD_16BIT_BIAS = {
    16: TileConfig(128, 16, 4, 3),
    32: TileConfig(128, 16, 4, 3),
    64: TileConfig(128, 16, 8, 3),
    128: TileConfig(128, 16, 8, 3),
    256: TileConfig(32, 16, 8, 1),
}
_FWD_32BIT_BIAS = {
    16: TileConfig(32, 16, 4, 2),
    32: TileConfig(32, 16, 8, 2),
    64: TileConfig(32, 16, 4, 2),
    128: TileConfig(32, 16, 8, 2),
    256: TileConfig(16, 16, 8, 2),
}


def head_dim_bucket(head_dim: int) -> int:
    for bucket in HEAD_DIM_BUCKETS:
        if head_dim <= bucket:
            return bucket
    raise ValueError(f"head dim {head_dim} exceeds the largest bucket {HEAD_DIM_BUCKETS[-1]}")


def forward_config(block_d: int, dtype: torch.dtype, has_bias: bool = False) -> TileConfig:
    if dtype == torch.float32:
        return (_FWD_32BIT_BIAS if has_bias else _FWD_32BIT)[block_d]
    return (_FWD_16BIT_BIAS if has_bias else _FWD_16BIT)[block_d]


@dataclass(frozen=True)
class BackwardConfig:
    """Tiles of the two backward kernels: ``dkdv`` (block_n keys per program, block_m-row query
    tiles streamed) and ``dq`` (block_m queries per program, block_n-key tiles streamed)."""

    dkdv: TileConfig
    dq: TileConfig


# Backward tiles, from `python -m attn.triton.aot` (ptxas -v) on sm_80 and sm_90: the widest
# tiles with zero spills on both. The dK/dV program keeps K, V (BLOCK_N x D) and the fp32 dK, dV
# accumulators (BLOCK_N x D) live across its whole loop, four tiles where the forward keeps one,
# so its query tiles are short (16-32 rows, one stage). Up to D=64 its 64 key rows make every
# dot a sm_90 wgmma; from D=128 on, every 64-row variant spilled (D=128: 8-24 B even with 8
# warps; D=256: 500+ B), so it drops to 32 or 16 key rows with 8 warps and uses mma.sync on
# sm_90 too. The dQ program is the forward's shape with one more dot (dP): 64 query rows up to
# D=128 (8 warps from D=128: 4 spilled 24 B), 32 at D=256 (64 spilled 20 B).
# With scores in natural units (one more multiply per score) ptxas aims at 128 registers in
# some of these and spills a few bytes to meet it (sm_80 dQ at D=16: 12 B with 64-key tiles,
# none with 32; sm_90 dK/dV with a bias at D=32: 24 B with 4 warps, none with 8).
_BWD_16BIT = {
    16: BackwardConfig(dkdv=TileConfig(16, 64, 4, 1), dq=TileConfig(64, 32, 4, 2)),
    32: BackwardConfig(dkdv=TileConfig(32, 64, 4, 1), dq=TileConfig(64, 64, 4, 2)),
    64: BackwardConfig(dkdv=TileConfig(16, 64, 4, 1), dq=TileConfig(64, 64, 4, 2)),
    128: BackwardConfig(dkdv=TileConfig(16, 32, 8, 1), dq=TileConfig(64, 32, 8, 2)),
    256: BackwardConfig(dkdv=TileConfig(16, 32, 8, 1), dq=TileConfig(32, 16, 8, 1)),
}

# With an additive bias each step also loads an fp32 (BLOCK_N, BLOCK_M) bias tile.
_BWD_16BIT_BIAS = {
    16: BackwardConfig(dkdv=TileConfig(32, 64, 4, 1), dq=TileConfig(64, 64, 4, 2)),
    32: BackwardConfig(dkdv=TileConfig(32, 64, 8, 1), dq=TileConfig(64, 64, 4, 2)),
    64: BackwardConfig(dkdv=TileConfig(16, 64, 8, 1), dq=TileConfig(64, 32, 4, 2)),
    128: BackwardConfig(dkdv=TileConfig(16, 32, 8, 1), dq=TileConfig(64, 32, 8, 2)),
    256: BackwardConfig(dkdv=TileConfig(16, 16, 8, 1), dq=TileConfig(32, 16, 8, 1)),
}

# fp32 inputs: exact FMA products (no tensor cores, no TF32) whose operands live in registers,
# so tiles are small, as in the forward; ptxas's register budget moves unpredictably with the
# warp count here (D=256 dK/dV spilled with 4 and 8 warps, not with 16; after the move to
# natural-unit scores the same held at D=128, and with a bias at D=32 and D=64), hence the
# mixed counts.
_BWD_32BIT = {
    16: BackwardConfig(dkdv=TileConfig(16, 16, 4, 1), dq=TileConfig(32, 16, 8, 2)),
    32: BackwardConfig(dkdv=TileConfig(16, 16, 8, 1), dq=TileConfig(32, 32, 4, 2)),
    64: BackwardConfig(dkdv=TileConfig(16, 32, 4, 1), dq=TileConfig(32, 32, 4, 2)),
    128: BackwardConfig(dkdv=TileConfig(16, 32, 16, 1), dq=TileConfig(32, 16, 8, 2)),
    256: BackwardConfig(dkdv=TileConfig(16, 16, 16, 1), dq=TileConfig(32, 16, 8, 2)),
}
_BWD_32BIT_BIAS = {
    16: BackwardConfig(dkdv=TileConfig(16, 32, 4, 1), dq=TileConfig(32, 16, 4, 2)),
    32: BackwardConfig(dkdv=TileConfig(16, 32, 16, 1), dq=TileConfig(32, 32, 4, 2)),
    64: BackwardConfig(dkdv=TileConfig(16, 64, 16, 1), dq=TileConfig(32, 32, 4, 2)),
    128: BackwardConfig(dkdv=TileConfig(16, 32, 16, 1), dq=TileConfig(32, 16, 8, 2)),
    256: BackwardConfig(dkdv=TileConfig(16, 16, 4, 1), dq=TileConfig(32, 16, 8, 2)),
}

# Preprocess (Delta = rowsum(dO * O)), elementwise with 4 warps: 4096-element O and dO tiles,
# 32 values of each per thread (64 rows x 256 columns spilled 40 B).
_PREPROCESS_TILE_ELEMENTS = 4096


def preprocess_block_m(block_d: int) -> int:
    return min(64, _PREPROCESS_TILE_ELEMENTS // block_d)


def backward_config(block_d: int, dtype: torch.dtype, has_bias: bool = False) -> BackwardConfig:
    if dtype == torch.float32:
        return (_BWD_32BIT_BIAS if has_bias else _BWD_32BIT)[block_d]
    return (_BWD_16BIT_BIAS if has_bias else _BWD_16BIT)[block_d]
