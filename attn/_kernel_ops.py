"""``attn::kernel_forward``: the forward of the C++ kernel backends as one ``torch.library`` op.

The "cuda", "cuda-sim" and "cpu" backends launch their kernels through data pointers handed to a
pybind11 extension, which ``torch.compile`` cannot trace; behind this op (with a fake
implementation for shapes) a compiled graph holds the launch as one opaque node, without graph
breaks. The op has no autograd formula: the CUDA backends have no backward, and the CPU backend
differentiates its own recompute around the op (:mod:`attn._cpu_backend`).
Decode has its twin, ``attn::flash_attn_decode`` (:mod:`attn._decode_ops`).
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from attn._spec import AttentionSpec


@torch.library.custom_op("attn::kernel_forward", mutates_args=())
def kernel_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                   alibi_slopes: Optional[torch.Tensor], softmax_scale: float, window_left: int, window_right: int,
                   bottom_right: bool, softcap: float, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` -> ``out (B, Sq, H, D)`` in q's dtype,
    ``lse (B, H, Sq)`` fp32, by ``backend`` ("cuda", "cuda-sim" or "cpu"). Windows use -1 for
    unbounded; causal is ``window_right = 0``."""
    spec = AttentionSpec(softmax_scale=softmax_scale, causal=window_right == 0, window_left=window_left,
                         window_right=window_right, bottom_right=bottom_right, softcap=softcap,
                         alibi_slopes=alibi_slopes, bias=bias)
    return launcher("forward", backend)(q, k, v, spec)


@kernel_forward.register_fake
def _kernel_forward_fake(q, k, v, bias, alibi_slopes, softmax_scale, window_left, window_right, bottom_right, softcap,
                         backend):
    batch, seqlen_q, n_heads, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((batch, n_heads, seqlen_q), dtype=torch.float32)


# Launchers by (op, backend), imported on first use: each loads its toolchain or extension.
_LAUNCHERS = {
    ("forward", "cpu"): ("attn._cpu_backend", "attention_forward"),
    ("decode", "cpu"): ("attn._cpu_backend", "decode"),
    ("decode", "triton"): ("attn.triton.decode", "attention_decode"),
    ("forward", "cuda"): ("attn._cuda_backend", "CUDA.run_forward"),
    ("forward", "cuda-sim"): ("attn._cuda_backend", "CUDA_SIM.run_forward"),
    ("decode", "cuda"): ("attn._cuda_backend", "CUDA.run_decode"),
    ("decode", "cuda-sim"): ("attn._cuda_backend", "CUDA_SIM.run_decode"),
}


def launcher(op: str, backend: str):
    """The function that launches ``op`` ("forward" or "decode") on ``backend``'s kernels."""
    if (op, backend) not in _LAUNCHERS:
        choices = sorted(b for o, b in _LAUNCHERS if o == op)
        raise ValueError(f"attn kernel ops: argument 'backend' expected one of {choices} for {op}, got {backend!r}")
    module, path = _LAUNCHERS[(op, backend)]
    target = importlib.import_module(module)
    for name in path.split("."):
        target = getattr(target, name)
    return target


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec, backend: str):
    """A C++ kernel backend's forward through the op."""
    return kernel_forward(q, k, v, spec.bias, spec.alibi_slopes, float(spec.softmax_scale), spec.window_left,
                          spec.window_right, bool(spec.bottom_right), float(spec.softcap), backend)
