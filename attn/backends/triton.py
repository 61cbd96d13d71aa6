"""The "triton" backend: the ``@triton.jit`` kernels of :mod:`attn.triton` (forward, fused
backward, split-KV decode), launched through the ops ``attn::flash_attn_forward`` (differentiable)
and ``attn::flash_attn_decode``. See :mod:`attn.backends.registry` for the backend protocol."""
from __future__ import annotations

import torch

from attn.core.spec import AttentionSpec
from attn.ops import decode as decode_op
from attn.ops import forward as forward_op
from attn.triton._forward_kernel import _attn_fwd_kernel
from attn.triton._launch import is_interpreting


class TritonBackend:
    name = "triton"
    devices = frozenset({"cuda", "cpu"})
    capabilities = {
        "forward": frozenset({"causal", "window_size", "softcap", "alibi_slopes", "attn_mask", "return_lse",
                              "backward"}),
        "decode": frozenset({"causal", "window_size", "softcap", "alibi_slopes", "return_lse"}),
    }

    def status(self, device_type: str):
        interpreting = is_interpreting(_attn_fwd_kernel)
        if device_type == "cpu" and not interpreting:
            return "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before importing attn"
        if device_type == "cuda":
            if interpreting:
                return "TRITON_INTERPRET=1 is set, so kernels run only on CPU tensors"
            if not torch.cuda.is_available():
                return "no CUDA device"
        return None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
        # Through the custom op: differentiable, and opaque to torch.compile (no graph break).
        return forward_op.attention(q, k, v, spec, "triton")

    def decode(self, q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec: AttentionSpec,
               num_splits: int):
        # Through the custom op: opaque to torch.compile (no graph break).
        return decode_op.decode(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec, num_splits, "triton")


TRITON = TritonBackend()
