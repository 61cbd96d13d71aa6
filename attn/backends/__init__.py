"""Backends: :mod:`attn.backends.registry` picks one per call; each other file here is the adapter of
the backend it is named after ("triton", "cuda" and "cuda-sim", "cpu", "torch", "reference"). An
adapter says what its backend can do (devices, capabilities, status), refuses what it cannot take
(naming the backends that can) and runs the rest through the ops of :mod:`attn.ops`.
"""
