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
_FWD_32BIT = {
    16: TileConfig(32, 32, 4, 2),
    32: TileConfig(32, 32, 4, 2),
    64: TileConfig(32, 32, 4, 2),
    128: TileConfig(32, 16, 8, 2),
    256: TileConfig(16, 32, 8, 2),
}

# With an additive bias (SDPA attn_mask) each step also loads a (BLOCK_M, BLOCK_N) fp32 tile.
# At D=128 that spilled 128 B with 64-wide K/V tiles and none with 16-wide ones; at D=256 the
# second pipeline stage no longer fits in registers (3.4 KB spilled), so one stage.
_FWD_16BIT_BIAS = {
    16: TileConfig(128, 16, 4, 3),
    32: TileConfig(128, 16, 4, 3),
    64: TileConfig(128, 16, 8, 3),
    128: TileConfig(128, 16, 8, 3),
    256: TileConfig(64, 16, 8, 1),
}
_FWD_32BIT_BIAS = {
    16: TileConfig(32, 16, 4, 2),
    32: TileConfig(32, 16, 4, 2),
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


# Backward, 16-bit inputs. The dK/dV program holds K, V (BLOCK_N x D, input dtype) and two fp32
# accumulators dK, dV (BLOCK_N x D) while streaming Q and dO tiles: four BLOCK_N x D live tiles
# against the forward's one, so BLOCK_N=64 up to D=128 (64-row tiles keep every dot eligible for
# sm_90's 64-row wgmma), and 32 at D=256 with 8 warps to keep the accumulators out of spills.
# The dQ program is the forward's shape with one more dot (dP) and no softmax rescaling.
_BWD_16BIT = {
    16: BackwardConfig(TileConfig(64, 64, 4, 2), TileConfig(64, 64, 4, 2)),
    32: BackwardConfig(TileConfig(64, 64, 4, 2), TileConfig(64, 64, 4, 2)),
    64: BackwardConfig(TileConfig(64, 64, 4, 2), TileConfig(64, 64, 4, 2)),
    128: BackwardConfig(TileConfig(64, 64, 8, 2), TileConfig(64, 64, 8, 2)),
    256: BackwardConfig(TileConfig(64, 32, 8, 1), TileConfig(64, 32, 8, 1)),
}

# Backward, fp32 inputs: twice the bytes per tile, so half the tile rows from D=128 up.
_BWD_32BIT = {
    16: BackwardConfig(TileConfig(64, 64, 4, 2), TileConfig(64, 64, 4, 2)),
    32: BackwardConfig(TileConfig(64, 64, 4, 2), TileConfig(64, 64, 4, 2)),
    64: BackwardConfig(TileConfig(64, 64, 4, 2), TileConfig(64, 64, 4, 2)),
    128: BackwardConfig(TileConfig(32, 32, 4, 2), TileConfig(32, 32, 4, 2)),
    256: BackwardConfig(TileConfig(32, 32, 8, 1), TileConfig(32, 32, 8, 1)),
}

_BWD_16BIT_BIAS = _BWD_16BIT
_BWD_32BIT_BIAS = _BWD_32BIT

# Preprocess (Delta = rowsum(dO * O)): elementwise, 64 rows of up to 256 columns per program.
PREPROCESS_BLOCK_M = 64


def backward_config(block_d: int, dtype: torch.dtype, has_bias: bool = False) -> BackwardConfig:
    if dtype == torch.float32:
        return (_BWD_32BIT_BIAS if has_bias else _BWD_32BIT)[block_d]
    return (_BWD_16BIT_BIAS if has_bias else _BWD_16BIT)[block_d]
