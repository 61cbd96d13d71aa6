"""Python side of the CUDA C++ kernels (``csrc/cuda``): one launcher per op, for two builds of the
same source — ``attn.cuda._cuda`` (nvcc, CUDA tensors, the current stream) and ``attn.cuda._cuda_sim``
(g++ against the SIMT emulator of ``csrc/simt``, CPU tensors; :mod:`attn.cuda.emulator` sets its
schedule). Launchers take validated tensors and an :class:`attn.core.spec.AttentionSpec`, allocate
outputs and pass data pointers, sizes and strides (docs/design.md §1).
"""
