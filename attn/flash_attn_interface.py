"""flash-attn 2.x's import path on attn's kernels.

Code written for flash-attn switches by changing one import::

    from flash_attn.flash_attn_interface import flash_attn_func, flash_attn_with_kvcache
    # becomes
    from attn.flash_attn_interface import flash_attn_func, flash_attn_with_kvcache

(``from flash_attn import ...`` becomes ``from attn import ...``.) The functions take flash-attn's
positional and keyword arguments in the same forms (``window_size`` as a tuple, list or int tensor,
0-d tensor scalars, flags by truth value) plus attn's keyword-only ``backend=``. What differs from
flash-attn is listed in README.md, "Switching from flash-attn".
"""
from attn.api import flash_attn_func, flash_attn_with_kvcache

__all__ = ["flash_attn_func", "flash_attn_with_kvcache"]
