"""The "triton" backend object (see :mod:`attn._backends` for the protocol)."""
from __future__ import annotations

import torch

from attn._spec import AttentionSpec
from attn.triton._fwd_kernel import _attn_fwd_kernel
from attn.triton._launch import is_interpreting
from attn.triton.decode import attention_decode
from attn.triton.fwd import attention_forward


class TritonBackend:
    name = "triton"
    devices = frozenset({"cuda", "cpu"})
    capabilities = {
        "forward": frozenset({"causal", "window_size", "softcap", "alibi_slopes", "attn_mask", "return_lse"}),
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
        return attention_forward(q, k, v, spec)

    def decode(self, q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec: AttentionSpec,
               num_splits: int):
        return attention_decode(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec, num_splits)


BACKEND = TritonBackend()
