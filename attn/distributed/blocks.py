"""Which part of a (query chunk, key chunk) pair is visible, as one flash-attn call (docs/design.md §6).

For the full sequence (``Sq = Sk``, so flash-attn's diagonal offset is 0), query ``p`` sees key
``t`` iff ``p - L <= t <= p + R`` (``L`` = window left, ``R`` = window right or 0 when causal,
unbounded sides infinite). For a query chunk starting at ``a`` and a key chunk starting at ``b``,
local row ``i`` sees local key ``j`` iff ``i + lo <= j <= i + hi`` with ``lo = a - b - L`` and
``hi = a - b + R``: a band. A flash-attn call on rows ``[i0, i1)`` and keys ``[j0, j1)`` is
bottom-right aligned, so its band is ``i + s - l <= j <= i + s + r`` with shift
``s = j1 - i1`` and its window ``(l, r)``. Trimming the rows and keys to those that see or are
seen by something makes ``lo <= s <= hi``, so ``l = s - lo`` and ``r = hi - s`` are valid window
sides: every band is one call to the public kernels, without an explicit-offset entry point.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Block:
    """One flash-attn call: rows ``[i0, i1)`` of the query chunk against keys ``[j0, j1)`` of the
    key chunk with ``causal`` and ``window_size``; rows outside ``[i0, i1)`` see no key."""

    i0: int
    i1: int
    j0: int
    j1: int
    causal: bool
    window_size: tuple[int, int]


def plan_block(q_start: int, n_rows: int, k_start: int, n_keys: int, window_left: int,
               window_right: int) -> Block | None:
    """The call computing rows ``q_start + [0, n_rows)`` against keys ``k_start + [0, n_keys)`` of a
    sequence attended with the spec-style window (``-1`` unbounded; causal is ``window_right = 0``),
    or None when no row sees any key (the pair is skipped, not computed and masked)."""
    shift = q_start - k_start
    lo = None if window_left < 0 else shift - window_left  # None: unbounded
    hi = None if window_right < 0 else shift + window_right
    i0 = 0 if hi is None else max(0, -hi)  # rows that see a key
    i1 = n_rows if lo is None else min(n_rows, n_keys - lo)
    j0 = 0 if lo is None else max(0, lo)  # keys that a row sees
    j1 = n_keys if hi is None else min(n_keys, n_rows + hi)
    if i0 >= i1 or j0 >= j1:
        return None
    s = j1 - i1
    rows, keys = i1 - i0, j1 - j0
    left = -1 if lo is None or s - lo >= keys - 1 else s - lo  # a side that binds no row is unbounded
    right = -1 if hi is None or hi - s >= rows - 1 else hi - s
    if (left, right) == (-1, 0):
        return Block(i0, i1, j0, j1, True, (-1, -1))
    return Block(i0, i1, j0, j1, False, (left, right))
