"""The one conversion between :class:`attn.core.spec.AttentionSpec` and the ops' arguments.

``torch.library`` ops take tensors and scalars only, so every op lists the spec's options as the
same trailing arguments, in :data:`OPTION_NAMES` order (then ``backend``); :func:`spec_args` and
:func:`spec_from_args` translate in this one place.
"""
from __future__ import annotations

from typing import Optional

import torch

from attn.core.spec import AttentionSpec

OPTION_NAMES = ("bias", "alibi_slopes", "softmax_scale", "causal", "window_left", "window_right", "bottom_right",
                "softcap")


def spec_args(spec: AttentionSpec) -> dict:
    """The options of ``spec`` as the ops' keyword arguments (:data:`OPTION_NAMES`)."""
    values = (spec.bias, spec.alibi_slopes, float(spec.softmax_scale), bool(spec.causal), int(spec.window_left),
              int(spec.window_right), bool(spec.bottom_right), float(spec.softcap))
    return dict(zip(OPTION_NAMES, values))


def spec_from_args(bias: Optional[torch.Tensor], alibi_slopes: Optional[torch.Tensor], softmax_scale: float,
                   causal: bool, window_left: int, window_right: int, bottom_right: bool,
                   softcap: float) -> AttentionSpec:
    """The spec an op's option arguments describe (inverse of :func:`spec_args`)."""
    return AttentionSpec(softmax_scale=softmax_scale, causal=causal, window_left=window_left,
                         window_right=window_right, bottom_right=bottom_right, softcap=softcap,
                         alibi_slopes=alibi_slopes, bias=bias)
