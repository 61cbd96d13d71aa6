"""Tile configurations of the decode kernels, as data (the launcher and the AOT compile test
both read this table, so every configuration the launcher can pick is compiled in CI).

Decode is bandwidth-bound: each program streams its K/V once and the query tile is small
(``GROUP * Sq`` packed rows), so the tile choices aim at wide, pipelined K/V loads rather than
at tensor-core shape.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from attn.triton.configs import HEAD_DIM_BUCKETS


@dataclass(frozen=True)
class DecodeConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Packed query rows per program. 16 is tl.dot's minimum M; beyond 64 rows the fp32 accumulator
# (64 x 256 at D=256 = 64 KB) would spill, and such a query tile (e.g. 8 heads x 16 tokens) already
# amortizes each K/V load 64 times, so larger groups are split into several q tiles.
BLOCK_M_CHOICES = (16, 32, 64)

# Keys per tile: 64 keys x D=128 x 2 bytes = 16 KB per K or V tile, two stages in flight for
# K and V = 64 KB of shared memory, inside sm_80's 163 KB. At D=256 and for fp32 the tile bytes
# double, so the tile halves.
_BLOCK_N_16BIT = {16: 64, 32: 64, 64: 64, 128: 64, 256: 32}
_BLOCK_N_32BIT = {16: 64, 32: 64, 64: 64, 128: 32, 256: 32}

# Two stages overlap the next K/V tile's load with this tile's math, which is all a
# bandwidth-bound loop needs; more would only cost shared memory.
_NUM_STAGES = 2

# Combine kernel: one program per query row reads (n_splits, D) fp32 partials; 4 warps cover
# D=256 with two elements per thread.
COMBINE_NUM_WARPS = 4


def decode_block_m(packed_rows: int) -> int:
    return min(max(triton.next_power_of_2(packed_rows), BLOCK_M_CHOICES[0]), BLOCK_M_CHOICES[-1])


def decode_config(block_d: int, dtype: torch.dtype, packed_rows: int) -> DecodeConfig:
    """The tile for ``packed_rows = (H // Hkv) * Sq`` query rows per kv head."""
    block_n = (_BLOCK_N_32BIT if dtype == torch.float32 else _BLOCK_N_16BIT)[block_d]
    block_m = decode_block_m(packed_rows)
    # The (BLOCK_M, BLOCK_D) fp32 accumulator, the Q tile and two K/V tiles in flight: at 64 x 128
    # and beyond, 4 warps sit at ptxas's 255-register limit (measured), so 8 warps share them.
    num_warps = 8 if block_m * block_d >= 64 * 128 else 4
    return DecodeConfig(block_m, block_n, num_warps, _NUM_STAGES)


def all_decode_configs():
    """Every (dtype, block_d, config) the launcher can pick."""
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for block_d in HEAD_DIM_BUCKETS:
            for block_m in BLOCK_M_CHOICES:
                yield dtype, block_d, decode_config(block_d, dtype, block_m)
