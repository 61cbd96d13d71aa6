"""Backends "cuda" and "cuda-sim": the CUDA C++ forward kernel of ``csrc/attention``.

* "cuda" runs CUDA tensors through ``attn._cuda`` (built by nvcc) on the current stream.
* "cuda-sim" runs CPU tensors through ``attn._cuda_sim``: the same kernel source compiled by g++
  against the SIMT emulator of ``csrc/simt`` — run the CUDA kernel on a laptop. It is a debugging
  and testing backend (thousands of times slower than the GPU), never picked by "auto".
  :func:`emulator` chooses its schedule and cp.async landing mode.

Both take fp16/bf16 ``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` with any strides (last dim
contiguous), support causal masking in both alignments and GQA/MQA, and return the fp32 LSE.
Head dims without a compiled kernel are zero-padded to the next one (up to 128).
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from attn._alloc import empty
from attn._spec import AttentionSpec

_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1}
_ALIGN_BYTES = 16  # cp.async moves 16-byte chunks


def _import(module: str):
    """The extension module, or a string saying why it cannot be used."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        return (f"{module} is not built ({exc}); it is compiled when the package is installed, "
                "needing g++ and CUDA's cuda_fp16.h (attn._cuda_sim) or nvcc (attn._cuda): see setup.py")


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t itself when its pointer and outer strides keep 16-byte alignment, else a contiguous copy."""
    elems = _ALIGN_BYTES // t.element_size()
    if t.data_ptr() % _ALIGN_BYTES == 0 and all(s % elems == 0 for s in t.stride()[:-1]):
        return t
    return t.contiguous()


class _KernelBackend:
    capabilities = {"forward": frozenset({"causal", "return_lse"})}

    def __init__(self, name: str, module: str, device: str):
        self.name = name
        self.devices = frozenset({device})
        self._module_name = module
        self._module = None

    def _ext(self):
        if self._module is None:
            self._module = _import(self._module_name)
        return self._module

    def status(self, device_type: str) -> Optional[str]:
        ext = self._ext()
        if isinstance(ext, str):
            return ext
        if device_type not in self.devices:
            return f"runs on {sorted(self.devices)[0]} tensors only"
        return None

    def _launch(self, ext, q: torch.Tensor, args: tuple) -> None:
        raise NotImplementedError

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
        """-> ``out (B, Sq, H, D)`` contiguous in q's dtype, ``lse (B, H, Sq)`` fp32."""
        if q.dtype not in _DTYPE_CODES:
            raise NotImplementedError(
                f"backend '{self.name}': option dtype={q.dtype} is not supported (its kernels take float16 "
                "and bfloat16); backends that support it: triton, torch, reference"
            )
        ext = self._ext()
        batch, seqlen_q, n_heads, head_dim = q.shape
        seqlen_k, n_kv_heads = k.shape[1], k.shape[2]
        kernel_dim = next((d for d in ext.head_dims if d >= head_dim), None)
        if kernel_dim is None:
            raise NotImplementedError(
                f"backend '{self.name}': head dim {head_dim} is larger than its largest kernel "
                f"({max(ext.head_dims)}); use backend 'triton'"
            )
        if kernel_dim != head_dim:  # zero columns change no score and give output columns to drop
            q, k, v = (F.pad(t, (0, kernel_dim - head_dim)) for t in (q, k, v))
        q, k, v = (_aligned(t) for t in (q, k, v))
        out = empty((batch, seqlen_q, n_heads, kernel_dim), q.dtype, q.device)
        lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
        strides = [*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *lse.stride()[:2]]
        sizes = [batch, n_heads, n_kv_heads, seqlen_q, seqlen_k, kernel_dim]
        args = (q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(), strides, sizes,
                _DTYPE_CODES[q.dtype], float(spec.softmax_scale), bool(spec.causal),
                spec.diagonal_offset(seqlen_q, seqlen_k))
        self._launch(ext, q, args)
        if kernel_dim != head_dim:
            out = out[..., :head_dim].contiguous()
        return out, lse


class CudaBackend(_KernelBackend):
    def status(self, device_type: str) -> Optional[str]:
        why = super().status(device_type)
        if why is None and not torch.cuda.is_available():
            return "no CUDA device"
        if why is None and torch.cuda.get_device_capability() < (8, 0):
            return "needs compute capability 8.0 or newer (mma.sync bf16, cp.async)"
        return why

    def _launch(self, ext, q, args):
        with torch.cuda.device(q.device):
            ext.forward(*args, torch.cuda.current_stream(q.device).cuda_stream)


class CudaSimBackend(_KernelBackend):
    def _launch(self, ext, q, args):
        ext.forward(*args)


CUDA = CudaBackend("cuda", "attn._cuda", "cuda")
CUDA_SIM = CudaSimBackend("cuda-sim", "attn._cuda_sim", "cpu")

SCHEDULES = ("warp-first", "round-robin", "reverse", "random")
CP_ASYNC_MODES = ("issue", "wait")


@contextlib.contextmanager
def emulator(schedule: str = "warp-first", seed: int = 0, cp_async: str = "issue", os_threads: int = 1,
             stack_bytes: int = 64 * 1024, racecheck: bool = True) -> Iterator[object]:
    """Within the block, "cuda-sim" runs under these emulator options:

    ``schedule``: "warp-first" (each warp runs as far as it can), "round-robin", "reverse" or
    "random" (seeded by ``seed``); ``cp_async``: "issue" (copies land at once) or "wait" (only at
    the wait that retires them; until then the destination reads NaN); ``os_threads``: blocks run
    on this many OS threads; ``racecheck``: report cp.async/ldmatrix traffic between warps that
    no barrier or cp.async wait orders, under any schedule. The options are process-wide (not per Python thread) and the
    previous ones come back on exit. Yields the extension module (``stats()``, ``selftest``)."""
    ext = CUDA_SIM._ext()
    if isinstance(ext, str):
        raise RuntimeError(f"emulator: backend 'cuda-sim' is not available: {ext}")
    previous = ext.options()
    ext.configure(schedule, seed, cp_async, os_threads, stack_bytes, racecheck)
    try:
        yield ext
    finally:
        ext.configure(*previous)
