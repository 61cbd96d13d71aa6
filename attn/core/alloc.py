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


@contextlib.contextmanager
def poison_outputs(enabled: bool = True) -> Iterator[None]:
    global _poison
    previous, _poison = _poison, enabled
    try:
        yield
    finally:
        _poison = previous
