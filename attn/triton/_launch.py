"""Launcher helpers shared by every Triton op: interpreter detection, dot flags."""
from __future__ import annotations

import torch
import triton


def is_interpreting(kernel) -> bool:
    """True when ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (runs on CPU tensors)."""
    return not isinstance(kernel, triton.runtime.JITFunction)


def dot_flags(kernel, dtype: torch.dtype) -> dict:
    """Constexprs for :func:`attn.triton._common._dot`: fp32 inputs use IEEE products (no
    TF32); bf16 under the interpreter is upcast to fp32 (Triton 3.9 interpreter bug)."""
    return {
        "DOT_FP32": bool(is_interpreting(kernel) and dtype == torch.bfloat16),
        "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
    }
