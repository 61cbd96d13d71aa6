"""How many splits of the key sequence a split-KV (flash-decoding) kernel uses.

Shared by every decode kernel (Triton and CUDA) so that both split the same way. The count depends
only on shapes and the device's SM count, never on tensor contents (e.g. ``cache_seqlens``): for a
fixed configuration the reduction order is fixed, so results are reproducible run to run.

The rule is wave efficiency (as in flash-attn): a launch of ``P`` programs on ``N`` SMs runs in
``ceil(P / N)`` waves, the last one possibly partly idle; its efficiency is
``(P / N) / ceil(P / N)``. We pick the smallest split count whose efficiency reaches 85% of the
best reachable, because every extra split also costs a partial write and a combine read.
"""
from __future__ import annotations

import math

# SM count assumed when no CUDA device is present (CPU, Triton interpreter): an H100 SXM has 132.
# Using a real GPU's count keeps interpreter tests exercising the same split counts a GPU would.
NOMINAL_SM_COUNT = 132

# A launch already filling this fraction of one wave gains too little from splitting to pay for
# the combine step.
_FULL_WAVE_FRACTION = 0.8
# Accept the smallest split count within this fraction of the best efficiency.
_EFFICIENCY_TOLERANCE = 0.85
# Upper bound on splits: each split holds an fp32 partial output of the whole query tile.
MAX_SPLITS = 128


def sm_count(device) -> int:
    """Streaming multiprocessors of ``device`` (a CUDA device), else :data:`NOMINAL_SM_COUNT`."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return NOMINAL_SM_COUNT


# Each split writes its fp32 partial output (rows x (D + 1) x 4 bytes) and the combine reads it back;
# keep that below this fraction of the K/V bytes the program reads, so splitting a short cache
# for occupancy does not cost more traffic than the cache itself.
_PARTIAL_TRAFFIC_FRACTION = 0.25


def max_splits_for_traffic(capacity: int, head_dim: int, elem_bytes: int, rows_per_program: int) -> int:
    """Largest split count whose partial-output traffic stays within
    ``_PARTIAL_TRAFFIC_FRACTION`` of the K and V bytes (``capacity`` keys) one program reads."""
    kv_bytes = 2 * capacity * head_dim * elem_bytes
    partial_bytes_per_split = 2 * rows_per_program * (head_dim + 1) * 4  # written, then read by the combine
    return max(1, int(_PARTIAL_TRAFFIC_FRACTION * kv_bytes // partial_bytes_per_split))


def num_splits_heuristic(batch: int, n_kv_heads: int, n_q_tiles: int, n_key_tiles: int, n_sms: int,
                         max_splits: int = MAX_SPLITS) -> int:
    """Split count for a decode launch of ``batch * n_kv_heads * n_q_tiles`` programs, each
    walking ``n_key_tiles`` key tiles (the cache capacity in tiles, a shape, not the data)."""
    programs = batch * n_kv_heads * n_q_tiles
    if programs >= _FULL_WAVE_FRACTION * n_sms or n_key_tiles <= 1:
        return 1
    max_splits = max(1, min(max_splits, n_sms, n_key_tiles))

    def tiles_per_split(splits: int) -> int:
        return math.ceil(n_key_tiles / splits)

    def eligible(splits: int) -> bool:
        # A split count that leaves every split as long as with one split fewer only adds combine work.
        return splits == 1 or tiles_per_split(splits) != tiles_per_split(splits - 1)

    def efficiency(splits: int) -> float:
        waves = programs * splits / n_sms
        return waves / math.ceil(waves)

    candidates = [s for s in range(1, max_splits + 1) if eligible(s)]
    best = max(efficiency(s) for s in candidates)
    return next(s for s in candidates if efficiency(s) >= _EFFICIENCY_TOLERANCE * best)


def decode_num_splits(num_splits: int, *, batch: int, n_kv_heads: int, packed_rows: int, block_m: int, block_n: int,
                      capacity: int, head_dim: int, elem_bytes: int, device) -> int:
    """The split count of a decode launch whose programs each own ``block_m`` of the
    ``packed_rows`` query rows (GQA group x new tokens) of one kv head and walk ``block_n``-key
    tiles of a ``capacity``-key cache. ``num_splits`` 0 -> the wave-efficiency heuristic, capped
    by :func:`max_splits_for_traffic`; n -> n, capped at the key tiles (a split beyond them could
    never hold a key)."""
    n_key_tiles = math.ceil(capacity / block_n)
    if num_splits != 0:
        return max(1, min(num_splits, n_key_tiles))
    max_splits = max_splits_for_traffic(capacity, head_dim, elem_bytes, min(packed_rows, block_m))
    return num_splits_heuristic(batch, n_kv_heads, math.ceil(packed_rows / block_m), n_key_tiles, sm_count(device),
                                min(MAX_SPLITS, max_splits))
