"""``torch.library`` custom ops, one file per op, named as the op: ``forward.py``
(``attn::flash_attn_forward``), ``backward.py`` (``attn::flash_attn_backward``),
``kernel_forward.py`` (``attn::kernel_forward``) and ``decode.py`` (``attn::flash_attn_decode``).

Every op takes the options of an :class:`attn.core.spec.AttentionSpec` as the same plain-typed
arguments (:mod:`attn.ops.args`) and runs the launcher that :mod:`attn.ops.launchers` names for
its (op, backend) pair. Behind an op, ``torch.compile(fullgraph=True)`` sees one opaque node with a
fake (shape) implementation instead of a kernel launch it cannot trace (docs/design.md §1).
"""
