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


# Forward, 16-bit inputs. BLOCK_M=128 with 4 warps (32 rows per warp) amortizes each K/V tile
# over many queries for small heads; at D=128 the 128x128 Q tile plus a 128-wide fp32 accumulator
# needs 8 warps to stay out of spills. At D=256 the Q tile alone is 64 KB at BLOCK_M=128, so
# BLOCK_M=64 and a 32-wide K/V tile keep two pipeline stages within sm_80's 163 KB.
_FWD_16BIT = {
    16: TileConfig(128, 64, 4, 3),
    32: TileConfig(128, 64, 4, 3),
    64: TileConfig(128, 64, 4, 3),
    128: TileConfig(128, 64, 8, 3),
    256: TileConfig(64, 32, 8, 2),
}

# Forward, fp32 inputs: every tile is twice the bytes, so halve BLOCK_M (and stages at D=256).
_FWD_32BIT = {
    16: TileConfig(64, 64, 4, 3),
    32: TileConfig(64, 64, 4, 3),
    64: TileConfig(64, 64, 4, 3),
    128: TileConfig(64, 32, 4, 3),
    256: TileConfig(32, 32, 4, 2),
}


def head_dim_bucket(head_dim: int) -> int:
    for bucket in HEAD_DIM_BUCKETS:
        if head_dim <= bucket:
            return bucket
    raise ValueError(f"head dim {head_dim} exceeds the largest bucket {HEAD_DIM_BUCKETS[-1]}")


def forward_config(block_d: int, dtype: torch.dtype) -> TileConfig:
    table = _FWD_32BIT if dtype == torch.float32 else _FWD_16BIT
    return table[block_d]
