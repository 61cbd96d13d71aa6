"""The one table from (op, backend) to the launcher that runs it, imported on first use.

``op`` is the ``torch.library`` op's name without the ``attn::`` namespace: its rows are the
backends that op accepts.

A launcher takes validated tensors and an :class:`attn.core.spec.AttentionSpec` and returns
tensors; importing it loads its toolchain or extension (Triton, ``attn.cpu._cpu``, ``attn.cuda._cuda``,
``attn.cuda._cuda_sim``), which is why ``import attn`` imports none of them. An entry is the launcher's
``"module:function"``, then ``"module:object"`` arguments bound in front (the extension a CUDA
launcher runs on).
"""
from __future__ import annotations

import functools
import importlib

_LAUNCHERS = {
    ("flash_attn_forward", "triton"): ("attn.triton.forward:attention_forward",),
    ("flash_attn_forward", "reference"): ("attn.reference.fa2:attention_forward",),
    ("flash_attn_forward", "cpu"): ("attn.cpu.forward:attention_forward",),
    ("kernel_forward", "cuda"): ("attn.cuda.forward:attention_forward", "attn.cuda.extension:CUDA_EXTENSION"),
    ("kernel_forward", "cuda-sim"): ("attn.cuda.forward:attention_forward", "attn.cuda.extension:CUDA_SIM_EXTENSION"),
    ("flash_attn_backward", "triton"): ("attn.triton.backward:attention_backward",),
    ("flash_attn_backward", "reference"): ("attn.reference.fa2:attention_backward",),
    # No C++ backward yet: the CPU forward is differentiated by the FlashAttention-2 formulas (docs/design.md §5).
    ("flash_attn_backward", "cpu"): ("attn.reference.fa2:attention_backward",),
    ("flash_attn_decode", "triton"): ("attn.triton.decode:attention_decode",),
    ("flash_attn_decode", "cpu"): ("attn.cpu.decode:attention_decode",),
    ("flash_attn_decode", "cuda"): ("attn.cuda.decode:attention_decode", "attn.cuda.extension:CUDA_EXTENSION"),
    ("flash_attn_decode", "cuda-sim"): ("attn.cuda.decode:attention_decode", "attn.cuda.extension:CUDA_SIM_EXTENSION"),
}


def backends_of(op: str) -> list[str]:
    """The backends with a launcher for ``op``."""
    return sorted(b for o, b in _LAUNCHERS if o == op)


def _resolve(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def launcher(op: str, backend: str):
    """The function that runs op ``attn::<op>`` on ``backend``'s kernels; ValueError naming the
    backends the op accepts when ``backend`` is not one of them."""
    if (op, backend) not in _LAUNCHERS:
        raise ValueError(f"attn::{op}: argument 'backend' expected one of {backends_of(op)}, got {backend!r}")
    function, *bound = (_resolve(target) for target in _LAUNCHERS[(op, backend)])
    return functools.partial(function, *bound) if bound else function
