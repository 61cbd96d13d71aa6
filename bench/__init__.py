"""Benchmark runner for attn: ``python -m bench`` (see ``python -m bench --help``).

Measures speed (forward, forward+backward, decode) and peak memory of every attn backend next to
naive attention, ``torch.nn.functional.scaled_dot_product_attention`` and flash-attn, writes a
terminal table, CSV/JSON with the machine and versions, a README-ready ``summary.md`` and PNG plots.
Emulated backends (Triton's interpreter, the CUDA SIMT emulator) are only executed for correctness,
in their own section, never timed against real kernels.
"""
