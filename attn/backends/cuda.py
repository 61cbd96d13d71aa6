"""Backends "cuda" and "cuda-sim": the CUDA C++ forward and decode kernels of :mod:`attn.cuda`.

* "cuda" runs CUDA tensors through ``attn.cuda._cuda`` (built by nvcc) on the current stream.
* "cuda-sim" runs CPU tensors through ``attn.cuda._cuda_sim``: the same kernel source compiled by g++
  against the SIMT emulator of ``csrc/simt`` — run the CUDA kernel on a laptop. It is a debugging
  and testing backend (thousands of times slower than the GPU), never picked by "auto";
  :func:`attn.cuda.emulator.emulator` chooses its schedule and cp.async landing mode.

Forward: fp16/bf16 ``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` with any strides (last dim
contiguous), causal masking and sliding windows in both alignments, softcap, ALiBi, GQA/MQA, the
fp32 LSE. Head dims without a compiled kernel are zero-padded to the next one.

Decode (``flash_attn_with_kvcache``): split-KV against a contiguous or paged cache (any page
size), GQA packed so each K/V byte is read once per group, causal / window / softcap / ALiBi,
head dims 32, 64, 128 and 256 (a cache cannot be padded in place). The split count comes from
:func:`attn.core.splits.decode_num_splits`, shared with the Triton backend.

This adapter refuses what the kernels cannot take (naming the backends that can), then launches
through the ops ``attn::kernel_forward`` and ``attn::flash_attn_decode`` (opaque to
``torch.compile``: no graph break).
"""
from __future__ import annotations

from typing import Optional

import torch

from attn.backends import registry
from attn.core.spec import AttentionSpec
from attn.cuda.extension import (
    CUDA_EXTENSION,
    CUDA_SIM_EXTENSION,
    DTYPES,
    KernelExtension,
    kernel_head_dim,
    misalignment,
)
from attn.ops import decode as decode_op
from attn.ops import kernel_forward as kernel_forward_op

KERNEL_BACKEND_NAMES = ("cuda", "cuda-sim")  # this module's backends, both running the same kernels


class _KernelBackend:
    capabilities = {
        "forward": frozenset({"causal", "window_size", "softcap", "alibi_slopes", "return_lse"}),
        "decode": frozenset({"causal", "window_size", "softcap", "alibi_slopes", "return_lse"}),
    }

    def __init__(self, name: str, extension: KernelExtension, device: str):
        self.name = name
        self.extension = extension
        self.devices = frozenset({device})

    def status(self, device_type: str) -> Optional[str]:
        module = self.extension.module()
        if isinstance(module, str):
            return module
        if device_type not in self.devices:
            return f"runs on {sorted(self.devices)[0]} tensors only"
        return None

    def _refuse(self, op: str, why: str):
        """NotImplementedError for input this backend's ``op`` cannot take, naming the others that can."""
        others = [name for name in registry.supporters(op, op) if name not in KERNEL_BACKEND_NAMES]
        raise NotImplementedError(f"backend '{self.name}': {why}; backends that support it: {others}")

    def _check_dtype(self, op: str, dtype: torch.dtype) -> None:
        if dtype not in DTYPES:
            self._refuse(op, f"option dtype={dtype} is not supported (its kernels take float16 and bfloat16)")

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
        """-> ``out (B, Sq, H, D)`` contiguous in q's dtype, ``lse (B, H, Sq)`` fp32."""
        self._check_dtype("forward", q.dtype)
        if kernel_head_dim(self.extension, q.shape[3]) is None:
            raise NotImplementedError(
                f"backend '{self.name}': head dim {q.shape[3]} is larger than its largest kernel "
                f"({max(self.extension.module().head_dims)}); use backend 'triton'"
            )
        return kernel_forward_op.forward(q, k, v, spec, self.name)

    def decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqlens_k: torch.Tensor,
               cache_batch_idx: Optional[torch.Tensor], block_table: Optional[torch.Tensor], spec: AttentionSpec,
               num_splits: int):
        """``q (B, Sq, H, D)`` against ``seqlens_k (B,)`` keys per sequence of a contiguous
        ``(B_cache, S_max, Hkv, D)`` or paged ``(num_pages, page_size, Hkv, D)`` cache (validated
        by the caller) -> ``out (B, Sq, H, D)`` in q's dtype, ``lse (B, H, Sq)`` fp32."""
        self._check_dtype("decode", q.dtype)
        head_dims = self.extension.module().head_dims
        if q.shape[3] not in head_dims:
            self._refuse("decode", f"decode has kernels for head dims {list(head_dims)}, got {q.shape[3]} (the "
                                   "cache cannot be padded in place)")
        # Pointers cannot be traced: under torch.compile the launcher (inside the op) checks alone.
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            why = None if torch.compiler.is_compiling() else misalignment(name, cache)
            if why is not None:
                self._refuse("decode", why)
        return decode_op.decode(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec, num_splits,
                                self.name)


class CudaBackend(_KernelBackend):
    def status(self, device_type: str) -> Optional[str]:
        why = super().status(device_type)
        if why is None and not torch.cuda.is_available():
            return "no CUDA device"
        if why is None and torch.cuda.get_device_capability() < (8, 0):
            return "needs compute capability 8.0 or newer (mma.sync bf16, cp.async)"
        return why


CUDA = CudaBackend("cuda", CUDA_EXTENSION, "cuda")
CUDA_SIM = _KernelBackend("cuda-sim", CUDA_SIM_EXTENSION, "cpu")
