"""Backends "cuda" and "cuda-sim": the CUDA C++ forward and decode kernels of ``csrc/cuda``.

* "cuda" runs CUDA tensors through ``attn._cuda`` (built by nvcc) on the current stream.
* "cuda-sim" runs CPU tensors through ``attn._cuda_sim``: the same kernel source compiled by g++
  against the SIMT emulator of ``csrc/simt`` — run the CUDA kernel on a laptop. It is a debugging
  and testing backend (thousands of times slower than the GPU), never picked by "auto".
  :func:`emulator` chooses its schedule and cp.async landing mode.

Forward: fp16/bf16 ``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)`` with any strides (last dim
contiguous), causal masking and sliding windows in both alignments, softcap, ALiBi, GQA/MQA, the
fp32 LSE. Head dims without a compiled kernel are zero-padded to the next one.

Decode (``flash_attn_with_kvcache``): split-KV against a contiguous or paged cache (any page
size), GQA packed so each K/V byte is read once per group, causal / window / softcap / ALiBi,
head dims 32, 64, 128 and 256 (a cache cannot be padded in place). The split count comes from
:func:`attn._splits.decode_num_splits`, shared with the Triton backend.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from attn import _backends, _decode_ops, _kernel_ops
from attn._alloc import empty
from attn._kernel_params import decode_params, forward_params, set_tensor
from attn._spec import AttentionSpec
from attn._splits import decode_num_splits

_DTYPES = (torch.float16, torch.bfloat16)
KERNEL_BACKEND_NAMES = ("cuda", "cuda-sim")  # this module's backends, both running the same kernels
_ALIGN_BYTES = 16  # cp.async moves 16-byte chunks


def _import(module: str):
    """The extension module, or a string saying why it cannot be used."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        return (f"{module} is not built ({exc}); it is compiled when the package is installed, "
                "needing g++ and CUDA's cuda_fp16.h (attn._cuda_sim) or nvcc (attn._cuda): see setup.py")


def _is_aligned(t: torch.Tensor) -> bool:
    """Whether t's pointer and outer strides keep the 16-byte alignment cp.async needs."""
    elems = _ALIGN_BYTES // t.element_size()
    return t.data_ptr() % _ALIGN_BYTES == 0 and all(s % elems == 0 for s in t.stride()[:-1])


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t itself when 16-byte aligned, else a contiguous copy."""
    return t if _is_aligned(t) else t.contiguous()


def _int32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """An index tensor as contiguous int32 (what the kernels read), or None."""
    return None if t is None else t.to(torch.int32).contiguous()


class _KernelBackend:
    capabilities = {
        "forward": frozenset({"causal", "window_size", "softcap", "alibi_slopes", "return_lse"}),
        "decode": frozenset({"causal", "window_size", "softcap", "alibi_slopes", "return_lse"}),
    }

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

    def _launch(self, kernel, q: torch.Tensor, params) -> None:
        """Runs ``kernel`` (an extension entry point) on ``params`` for tensors on q's device."""
        raise NotImplementedError

    def _refuse(self, op: str, why: str):
        """NotImplementedError for input this backend's ``op`` cannot take, naming the others that can."""
        others = [name for name in _backends.supporters(op, op) if name not in KERNEL_BACKEND_NAMES]
        raise NotImplementedError(f"backend '{self.name}': {why}; backends that support it: {others}")

    def _check_dtype(self, op: str, dtype: torch.dtype) -> None:
        if dtype not in _DTYPES:
            self._refuse(op, f"option dtype={dtype} is not supported (its kernels take float16 and bfloat16)")

    def _kernel_head_dim(self, head_dim: int) -> int:
        """The forward kernel's head dim for ``head_dim``: itself, or the next compiled one."""
        head_dims = self._ext().head_dims
        kernel_dim = next((d for d in head_dims if d >= head_dim), None)
        if kernel_dim is None:
            raise NotImplementedError(
                f"backend '{self.name}': head dim {head_dim} is larger than its largest kernel "
                f"({max(head_dims)}); use backend 'triton'"
            )
        return kernel_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
        """-> ``out (B, Sq, H, D)`` contiguous in q's dtype, ``lse (B, H, Sq)`` fp32, through the
        custom op (opaque to torch.compile: no graph break)."""
        self._check_dtype("forward", q.dtype)
        self._kernel_head_dim(q.shape[3])
        return _kernel_ops.forward(q, k, v, spec, self.name)

    def run_forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
        """Launches the forward kernel (the body of the ``attn::kernel_forward`` op)."""
        ext = self._ext()
        batch, seqlen_q, n_heads, head_dim = q.shape
        kernel_dim = self._kernel_head_dim(head_dim)
        if kernel_dim != head_dim:  # zero columns change no score and give output columns to drop
            q, k, v = (F.pad(t, (0, kernel_dim - head_dim)) for t in (q, k, v))
        q, k, v = (_aligned(t) for t in (q, k, v))
        out = empty((batch, seqlen_q, n_heads, kernel_dim), q.dtype, q.device)
        lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
        self._launch(ext.forward, q, forward_params(ext, q, k, v, out, lse, spec))
        if kernel_dim != head_dim:
            out = out[..., :head_dim].contiguous()
        return out, lse

    def decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqlens_k: torch.Tensor,
               cache_batch_idx: Optional[torch.Tensor], block_table: Optional[torch.Tensor], spec: AttentionSpec,
               num_splits: int):
        """``q (B, Sq, H, D)`` against ``seqlens_k (B,)`` keys per sequence of a contiguous
        ``(B_cache, S_max, Hkv, D)`` or paged ``(num_pages, page_size, Hkv, D)`` cache (validated
        by the caller) -> ``out (B, Sq, H, D)`` in q's dtype, ``lse (B, H, Sq)`` fp32, through the
        decode custom op (opaque to torch.compile)."""
        self._check_dtype("decode", q.dtype)
        head_dims = self._ext().head_dims
        if q.shape[3] not in head_dims:
            self._refuse("decode", f"decode has kernels for head dims {list(head_dims)}, got {q.shape[3]} (the "
                                   "cache cannot be padded in place)")
        return _decode_ops.decode(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec, num_splits,
                                  self.name)

    def run_decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqlens_k: torch.Tensor,
                   cache_batch_idx: Optional[torch.Tensor], block_table: Optional[torch.Tensor], spec: AttentionSpec,
                   num_splits: int):
        """Launches the decode kernels (the body of the ``attn::flash_attn_decode`` op)."""
        ext = self._ext()
        batch, seqlen_q, n_heads, head_dim = q.shape
        n_kv_heads = k_cache.shape[2]
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            if not _is_aligned(cache):
                self._refuse("decode", f"argument '{name}' must be 16-byte aligned (data pointer and strides of the "
                                       f"first three dims multiples of {_ALIGN_BYTES // cache.element_size()} "
                                       f"elements), got pointer {cache.data_ptr()} and strides {tuple(cache.stride())}")
        q = _aligned(q)
        paged = block_table is not None
        page_size = k_cache.shape[1] if paged else 0
        capacity = block_table.shape[1] * page_size if paged else k_cache.shape[1]
        packed_rows = seqlen_q * (n_heads // n_kv_heads)
        block_m, block_n, _ = ext.decode_tile(head_dim, packed_rows)
        splits = decode_num_splits(num_splits, batch=batch, n_kv_heads=n_kv_heads, packed_rows=packed_rows,
                                   block_m=block_m, block_n=block_n, capacity=capacity, head_dim=head_dim,
                                   elem_bytes=q.element_size(), device=q.device)

        out = empty((batch, seqlen_q, n_heads, head_dim), q.dtype, q.device)
        lse = empty((batch, n_heads, seqlen_q), torch.float32, q.device)
        out_part = lse_part = None
        if splits > 1:
            out_part = empty((splits, batch, seqlen_q, n_heads, head_dim), torch.float32, q.device)
            lse_part = empty((splits, batch, n_heads, seqlen_q), torch.float32, q.device)
        seqlens_k, cache_batch_idx, block_table = (_int32(t) for t in (seqlens_k, cache_batch_idx, block_table))
        params = decode_params(ext, q, k_cache, v_cache, out, lse, seqlens_k, cache_batch_idx, block_table, spec)
        set_tensor(params, "out_partial", out_part)
        set_tensor(params, "lse_partial", lse_part)
        params.num_splits = splits
        self._launch(ext.decode, q, params)
        return out, lse


class CudaBackend(_KernelBackend):
    def status(self, device_type: str) -> Optional[str]:
        why = super().status(device_type)
        if why is None and not torch.cuda.is_available():
            return "no CUDA device"
        if why is None and torch.cuda.get_device_capability() < (8, 0):
            return "needs compute capability 8.0 or newer (mma.sync bf16, cp.async)"
        return why

    def _launch(self, kernel, q, params):
        with torch.cuda.device(q.device):
            kernel(params, torch.cuda.current_stream(q.device).cuda_stream)


class CudaSimBackend(_KernelBackend):
    def _launch(self, kernel, q, params):
        kernel(params)


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
