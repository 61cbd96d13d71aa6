"""Python side of the C++ CPU kernels (``csrc/cpu``, built as ``attn.cpu._cpu``): one launcher per op.

Launchers take validated tensors and an :class:`attn.core.spec.AttentionSpec`, allocate outputs,
fill the kernels' params struct (data pointers, sizes, element strides) and return tensors.
Kernels are tiled online-softmax loops, OpenMP over (batch, head, query tile), AVX-512 / AVX2
variants picked at run time with a portable fallback (:mod:`attn.cpu.isa`); fp16/bf16 inputs are
computed in fp32. The thread count is PyTorch's (``torch.get_num_threads()``).
"""
