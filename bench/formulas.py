"""Work and traffic of one attention call: the formulas every figure in the benchmark uses.

They are printed with every run (:data:`FORMULAS`) so a reader can check a TFLOP/s or GB/s
number by hand. FLOPs follow flash-attn's benchmark: two matmuls of ``2·Sq·Sk·D`` per head,
halved for causal (``Sq == Sk``: half the key/query pairs are visible), and a backward pass
counted as 2.5 forwards (five matmuls instead of two). Decode is bandwidth-bound, so it is
measured in bytes: the K and V cache read once, plus the query read and the output written.
"""
from __future__ import annotations

OPS = ("forward", "forward_backward", "decode")

# Cost of each op relative to one forward pass.
_FORWARD_MULTIPLE = {"forward": 1.0, "forward_backward": 1.0 + 2.5, "decode": 1.0}

FORMULAS = {
    "forward FLOPs": "4·B·H·Sq·Sk·D, halved for causal",
    "forward_backward FLOPs": "3.5 × forward FLOPs (backward = 2.5 × forward)",
    "decode FLOPs": "4·B·H·1·L·D (L = cache length)",
    "decode bytes": "(2·B·L·Hkv·D + 2·B·H·D) · bytes per element (K and V cache read once, q read, out written)",
    "TFLOP/s": "FLOPs / median time / 1e12",
    "GB/s": "bytes / median time / 1e9",
    "peak memory": "highest memory in use during one call minus memory in use with the inputs allocated",
}


def attention_flops(op: str, batch: int, heads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
                    causal: bool) -> float:
    """FLOPs of ``op`` for ``q (B, Sq, H, D)`` against ``Sk`` keys (see :data:`FORMULAS`)."""
    if op not in _FORWARD_MULTIPLE:
        raise ValueError(f"attention_flops: argument 'op' expected one of {OPS}, got {op!r}")
    forward = 4.0 * batch * heads * seqlen_q * seqlen_k * head_dim
    if causal and op != "decode":
        forward /= 2.0
    return forward * _FORWARD_MULTIPLE[op]


def decode_bytes(batch: int, cache_len: int, heads: int, kv_heads: int, head_dim: int, element_size: int) -> int:
    """Bytes a decode step must move: K and V cache read once, one query read, one output written."""
    kv = 2 * batch * cache_len * kv_heads * head_dim
    q_and_out = 2 * batch * heads * head_dim
    return (kv + q_and_out) * element_size


def per_second(amount: float, ms: float, unit: float) -> float:
    """``amount`` per second in ``unit`` (1e12 for TFLOP/s, 1e9 for GB/s) given a time in ms."""
    return amount / (ms * 1e-3) / unit
