"""Tile configurations of the decode kernels, as data (the launcher and the AOT compile test
both read this table, so every configuration the launcher can pick is compiled in CI).

Decode is bandwidth-bound: each program streams its K/V once and the query tile is small
(``GROUP * Sq`` packed rows), so the tile choices aim at wide, pipelined K/V loads rather than
at tensor-core shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton

from attn.triton.configs import HEAD_DIM_BUCKETS


@dataclass(frozen=True)
class DecodeConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    maxnreg: Optional[int] = None  # register cap handed to ptxas (None: ptxas picks)


# Packed query rows per program. 16 is tl.dot's minimum M; a tile of 64 rows (e.g. 8 heads x 8
# tokens) already amortizes each K/V load 64 times, and larger groups are split into several q
# tiles (each reads the group's K/V once more) rather than growing the fp32 accumulator.
BLOCK_M_CHOICES = (16, 32, 64)


# (BLOCK_N, largest BLOCK_M) per head-dim bucket, from ptxas -v on sm_80 and sm_90 (0 spills):
# * 16-bit: 64 keys x D=128 x 2 bytes = 16 KB per K or V tile. At D=256 the K/V tiles halve to
#   32 keys and the query tile stops at 32 rows: 64 x 256 fp32 accumulators spill with 4 warps
#   and with 8.
# * fp32 (IEEE products on FMA units, no tensor cores): every operand sits in registers, so the
#   tiles are the smallest that tl.dot takes: 16 query rows, and 16-key tiles from D=64 (32-key
#   tiles spilled at D=64 with a paged cache whatever the register cap).
_TILES_16BIT = {16: (64, 64), 32: (64, 64), 64: (64, 64), 128: (64, 64), 256: (32, 32)}
_TILES_32BIT = {16: (32, 16), 32: (32, 16), 64: (16, 16), 128: (16, 16), 256: (16, 16)}

# 4 warps, except the 64 x 128 16-bit query tile, where 4 warps sit at ptxas's 255-register limit
# and 8 share the accumulator (205 registers on sm_80). Since the non-finite pass (docs/design.md
# §3) the 32 x 128 16-bit tile (24 B spilled on sm_90 with 4 warps) and the 16 x 256 fp32 tile
# (72-128 B) need 8 as well. Keys: (BLOCK_M, BLOCK_D).
_EIGHT_WARPS_16BIT = {(64, 128), (32, 128)}
_EIGHT_WARPS_32BIT = {(16, 256)}

# Three stages keep two K/V tiles in flight while one is used: decode is bandwidth-bound, and
# the extra stage fits easily (at most ~83 KB of shared memory). With two stages ptxas spilled
# a few bytes in three configurations on sm_80 (measured); with three, none.
_NUM_STAGES = 3

# ptxas picks an occupancy-driven register target (80, 128 or 168 registers here) and in some
# configurations spills a few bytes to meet it, mostly with paged caches (a runtime division
# position // page_size per key, and the gathered row offsets of every in-flight tile stay live).
# Lifting the cap (maxnreg=255) removes those spills; lifting it everywhere made ptxas spill in
# others. Measured with ``python -m attn.triton.aot_configs --all`` on sm_80 and sm_90: a
# configuration is listed when it spilled on either architecture with ptxas's own target and
# spills on neither with the cap lifted.
# Keys: (dtype, BLOCK_D, BLOCK_M, paged, writes the final output (one split), softcap/ALiBi on).
_LIFTED_REGISTER_CAP = frozenset({
    (torch.float16, 32, 32, True, True, False),
    (torch.float16, 32, 32, True, False, True),
    (torch.float16, 32, 64, True, False, True),
    (torch.float16, 128, 16, True, False, False),
    (torch.float16, 256, 16, True, False, False),
    (torch.float16, 256, 16, False, True, False),
    (torch.bfloat16, 16, 32, True, False, False),
    (torch.bfloat16, 32, 32, True, True, False),
    (torch.bfloat16, 32, 32, True, False, True),
    (torch.bfloat16, 32, 64, True, False, True),
    (torch.bfloat16, 128, 16, True, False, False),
    (torch.bfloat16, 256, 16, True, False, False),
    (torch.float32, 16, 16, True, False, False),
    (torch.float32, 16, 16, True, True, False),
    (torch.float32, 32, 16, True, False, False),
    (torch.float32, 32, 16, True, True, False),
    (torch.float32, 64, 16, False, False, False),
    (torch.float32, 64, 16, False, True, False),
    (torch.float32, 128, 16, True, False, False),
    (torch.float32, 128, 16, True, True, False),
    (torch.float32, 128, 16, True, False, True),
    (torch.float32, 256, 16, False, False, False),
})
_MAXNREG = 255

# Combine kernel: one program per query row folds (n_splits, D) fp32 partials one split at a time;
# 4 warps cover D=256 with two elements per thread.
COMBINE_NUM_WARPS = 4


def _tiles(block_d: int, dtype: torch.dtype) -> tuple[int, int]:
    return (_TILES_32BIT if dtype == torch.float32 else _TILES_16BIT)[block_d]


def decode_config(block_d: int, dtype: torch.dtype, packed_rows: int, paged: bool = False, final: bool = False,
                  features: bool = False) -> DecodeConfig:
    """The tile for ``packed_rows = (H // Hkv) * Sq`` query rows per kv head; ``final``: the
    split kernel writes the output itself (one split); ``features``: softcap or ALiBi."""
    block_n, max_block_m = _tiles(block_d, dtype)
    block_m = min(max(triton.next_power_of_2(packed_rows), BLOCK_M_CHOICES[0]), max_block_m)
    num_warps = 8 if (block_m, block_d) in (_EIGHT_WARPS_32BIT if dtype == torch.float32 else _EIGHT_WARPS_16BIT) else 4
    lifted = (dtype, block_d, block_m, paged, final, features) in _LIFTED_REGISTER_CAP
    return DecodeConfig(block_m, block_n, num_warps, _NUM_STAGES, _MAXNREG if lifted else None)


def all_decode_configs():
    """Every (dtype, block_d, paged, final, features, config) the launcher can pick (features
    only with split outputs: they add ALU work, not operands)."""
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for block_d in HEAD_DIM_BUCKETS:
            max_block_m = _tiles(block_d, dtype)[1]
            for block_m in BLOCK_M_CHOICES:
                for paged, final, features in ((p, f, x) for p in (False, True) for f, x in
                                               ((False, False), (True, False), (False, True))):
                    if block_m <= max_block_m:
                        yield (dtype, block_d, paged, final, features,
                               decode_config(block_d, dtype, block_m, paged, final, features))
