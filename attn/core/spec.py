"""The normalized description of one attention call, shared by every backend.

Public functions validate their arguments and build an :class:`AttentionSpec`; backends read
only this (plus the tensors), so the meaning of ``causal``, ``window_size`` and alignment is
decided in exactly one place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# Options that come from the tensors rather than the spec (docs/design.md §2): the kernels take
# fp16/bf16/fp32, head dims up to 256 and a value head dim equal to the query/key head dim.
FLOAT64 = "float64"
VALUE_HEAD_DIM = "value_head_dim"
HEAD_DIM_OVER_256 = "head_dim>256"
INPUT_OPTIONS = frozenset({FLOAT64, VALUE_HEAD_DIM, HEAD_DIM_OVER_256})


def input_options(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> list[str]:
    """Names of the :data:`INPUT_OPTIONS` that ``q (B, Sq, H, D)``, ``k (B, Sk, Hkv, D)`` and
    ``v (B, Sk, Hkv, Dv)`` use (for capability checks, next to :meth:`AttentionSpec.options_in_use`)."""
    used = []
    if q.dtype == torch.float64:
        used.append(FLOAT64)
    if v.shape[-1] != q.shape[-1]:
        used.append(VALUE_HEAD_DIM)
    if max(q.shape[-1], v.shape[-1]) > 256:
        used.append(HEAD_DIM_OVER_256)
    return used


@dataclass(frozen=True)
class AttentionSpec:
    """Options of a forward call, in kernel-native terms.

    ``window_left``/``window_right`` use -1 for "unbounded"; ``causal`` is already folded into
    ``window_right = 0``. ``bottom_right`` selects the diagonal offset ``Sk - Sq`` (flash-attn)
    versus ``0`` (PyTorch SDPA). ``bias`` is an additive fp32 mask broadcastable to
    ``(B, H, Sq, Sk)`` (bool masks are converted before they get here).
    """

    softmax_scale: float
    causal: bool = False
    window_left: int = -1
    window_right: int = -1
    bottom_right: bool = True
    softcap: float = 0.0
    alibi_slopes: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    need_lse: bool = False
    deterministic: bool = False

    @property
    def window_size(self) -> tuple[int, int]:
        return (self.window_left, self.window_right)

    @property
    def has_window(self) -> bool:
        return self.window_left >= 0 or self.window_right >= 0

    def diagonal_offset(self, seqlen_q: int, seqlen_k: int) -> int:
        return seqlen_k - seqlen_q if self.bottom_right else 0

    def window_bounds(self, seqlen_q: int, seqlen_k: int) -> tuple[int, int]:
        """(left, right) window widths for a kernel, "unbounded" (-1) replaced by a width no
        query of ``seqlen_q`` rows against ``seqlen_k`` keys reaches."""
        unbounded = seqlen_q + seqlen_k + 1
        return (self.window_left if self.window_left >= 0 else unbounded,
                self.window_right if self.window_right >= 0 else unbounded)

    def options_in_use(self) -> list[str]:
        """Names of the optional features this call uses (for capability checks)."""
        used = []
        if self.causal:
            used.append("causal")
        if self.has_window and not (self.causal and self.window_left < 0):
            used.append("window_size")
        if self.softcap > 0:
            used.append("softcap")
        if self.alibi_slopes is not None:
            used.append("alibi_slopes")
        if self.bias is not None:
            used.append("attn_mask")
        if self.need_lse:
            used.append("return_lse")
        return used
