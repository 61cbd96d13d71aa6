"""Output allocation for every launcher.

Kernels must write every element they return. Tests enable poisoning (``poison_outputs``) so
freshly allocated outputs start as NaN (and integer outputs as -1): an element a kernel forgot
to write then fails the parity check instead of passing by luck on recycled memory.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

_poison = os.environ.get("ATTN_POISON_OUTPUTS", "0") == "1"


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    if _poison:
        t.fill_(float("nan") if dtype.is_floating_point else -1)
    return t


def _memory_order(t: torch.Tensor) -> list[int]:
    """The dims of ``t (B, S, H, D)`` from outermost to innermost in memory, decided as PyTorch
    decides an output's layout from an input's: an insertion sort by stride in which broadcast
    (stride 0) and size-1 dims compare as ambiguous and keep their place, starting from SDPA's
    logical order ``(B, H, S)``; ``D`` is always innermost (the kernels need it contiguous)."""
    def ordered(a: int, b: int) -> bool:  # False only when a must move inside b
        if min(t.stride(a), t.stride(b)) == 0 or min(t.shape[a], t.shape[b]) == 1:
            return True
        return t.stride(a) >= t.stride(b)
    order = [0, 2, 1]
    for i in range(1, len(order)):
        j = i
        while j > 0 and not ordered(order[j - 1], order[j]):
            order[j - 1], order[j] = order[j], order[j - 1]
            j -= 1
    return order + [3]


def _inverse(order: list[int]) -> list[int]:
    return sorted(range(len(order)), key=order.__getitem__)


def empty_in_layout_of(like: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    """:func:`empty` of the 4-D ``shape`` with its dims ordered in memory as ``like``'s are (PyTorch SDPA's
    output follows its query's layout, docs/design.md §2): kernels write through the strides, so
    a ``(B, H, S, D)`` query gets an output that is contiguous once transposed back, at no copy."""
    order = _memory_order(like)
    return empty([shape[d] for d in order], dtype, like.device).permute(_inverse(order))


def in_layout_of(like: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t`` (same rank as ``like``) with its dims ordered in memory as ``like``'s (a copy unless
    they already are); out of place, so autograd and ``torch.func`` transforms see it."""
    order = _memory_order(like)
    return t.permute(order).contiguous().permute(_inverse(order))


@contextlib.contextmanager
def poison_outputs(enabled: bool = True) -> Iterator[None]:
    global _poison
    previous, _poison = _poison, enabled
    try:
        yield
    finally:
        _poison = previous
