"""The two builds of the CUDA kernels as one interface: import on first use, launch on q's device."""
from __future__ import annotations

import importlib
from typing import Optional, Union

import torch

ALIGN_BYTES = 16  # cp.async moves 16-byte chunks
DTYPES = (torch.float16, torch.bfloat16)  # what the kernels take


class KernelExtension:
    """``attn.cuda._cuda`` (``stream=True``: launches on the current CUDA stream) or ``attn.cuda._cuda_sim``."""

    def __init__(self, module_name: str, stream: bool):
        self.module_name = module_name
        self.stream = stream
        self._module = None

    def module(self) -> Union[object, str]:
        """The extension module, or a string saying why it cannot be used."""
        if self._module is None:
            try:
                self._module = importlib.import_module(self.module_name)
            except ImportError as exc:
                self._module = (f"{self.module_name} is not built ({exc}); it is compiled when the package is "
                                "installed, needing g++ and CUDA's cuda_fp16.h (attn.cuda._cuda_sim) or nvcc "
                                "(attn.cuda._cuda): see setup.py")
        return self._module

    def launch(self, entry: str, q: torch.Tensor, params) -> None:
        """Runs the extension's ``entry`` ("forward" or "decode") on ``params`` for tensors on q's device."""
        kernel = getattr(self.module(), entry)
        if not self.stream:
            kernel(params)
            return
        with torch.cuda.device(q.device):
            kernel(params, torch.cuda.current_stream(q.device).cuda_stream)


CUDA_EXTENSION = KernelExtension("attn.cuda._cuda", stream=True)
CUDA_SIM_EXTENSION = KernelExtension("attn.cuda._cuda_sim", stream=False)


def is_aligned(t: torch.Tensor) -> bool:
    """Whether t's pointer and outer strides keep the 16-byte alignment cp.async needs."""
    elems = ALIGN_BYTES // t.element_size()
    return t.data_ptr() % ALIGN_BYTES == 0 and all(s % elems == 0 for s in t.stride()[:-1])


def misalignment(name: str, t: torch.Tensor) -> Optional[str]:
    """Why argument ``name`` cannot be read in place by cp.async, or None when it is 16-byte aligned."""
    if is_aligned(t):
        return None
    return (f"argument '{name}' must be 16-byte aligned (data pointer and strides of the first three dims "
            f"multiples of {ALIGN_BYTES // t.element_size()} elements), got pointer {t.data_ptr()} and strides "
            f"{tuple(t.stride())}")


def aligned(t: torch.Tensor) -> torch.Tensor:
    """t itself when 16-byte aligned, else a contiguous copy."""
    return t if is_aligned(t) else t.contiguous()


def int32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """An index tensor as contiguous int32 (what the kernels read), or None."""
    return None if t is None else t.to(torch.int32).contiguous()


def kernel_head_dim(ext: KernelExtension, head_dim: int) -> Optional[int]:
    """The forward kernel's head dim for ``head_dim``: itself, or the next compiled one (None: too large)."""
    return next((d for d in ext.module().head_dims if d >= head_dim), None)
