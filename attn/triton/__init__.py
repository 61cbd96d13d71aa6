"""Triton kernels (private ``@triton.jit`` functions) and their launchers.

Imported lazily by :mod:`attn.backends.registry`; whether kernels are compiled for GPUs or interpreted
on CPU tensors is fixed when this package is first imported (``TRITON_INTERPRET=1``).
"""
