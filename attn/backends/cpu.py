"""The "cpu" backend: the fused C++ kernels of :mod:`attn.cpu` (sources in ``csrc/cpu``).

Forward and decode run through the ops ``attn::flash_attn_forward`` and ``attn::flash_attn_decode``
(opaque to ``torch.compile``: a pybind11 launch cannot be traced). The forward op is
differentiable: there is no C++ backward yet, so its backward is the FlashAttention-2 formulas of
:mod:`attn.reference.fa2` in fp32 (P recomputed from the saved ``lse``, gradients through ``out``
and ``lse``), which materialize ``(B, H, Sq, Sk)`` fp32 scores (docs/design.md §5).
"""
from __future__ import annotations

import torch

from attn.core.spec import AttentionSpec
from attn.cpu import _cpu  # noqa: F401  (an unbuilt extension makes the backend unavailable, with the reason)
from attn.ops import decode as decode_op
from attn.ops import forward as forward_op


class CPUBackend:
    name = "cpu"
    devices = frozenset({"cpu"})
    capabilities = {
        "forward": frozenset({"causal", "window_size", "softcap", "alibi_slopes", "attn_mask", "return_lse",
                              "backward"}),
        "decode": frozenset({"causal", "window_size", "softcap", "alibi_slopes", "return_lse"}),
    }

    def status(self, device_type: str):
        return None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
        return forward_op.attention(q, k, v, spec, "cpu")

    def decode(self, q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec: AttentionSpec,
               num_splits: int):
        return decode_op.decode(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec, num_splits,
                                  "cpu")


CPU = CPUBackend()
