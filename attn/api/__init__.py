"""The public functions, one file per function family: :mod:`~attn.api.flash`
(``flash_attn_func``), :mod:`~attn.api.sdpa` (``scaled_dot_product_attention``),
:mod:`~attn.api.decode` (``flash_attn_with_kvcache``), :mod:`~attn.api.merge`
(``merge_attention_states``) and :mod:`~attn.api.kvcache` (``KVCache``, ``PageAllocator``).

Each validates its arguments into an :class:`attn.core.spec.AttentionSpec`, asks
:mod:`attn.backends.registry` for a backend and runs it (docs/design.md §1, §2).
"""
from attn.api.decode import flash_attn_with_kvcache
from attn.api.flash import flash_attn_func
from attn.api.kvcache import KVCache, PageAllocator
from attn.api.merge import merge_attention_states
from attn.api.sdpa import scaled_dot_product_attention
from attn.backends.registry import BackendInfo, available_backends, use_backend

__all__ = [
    "BackendInfo",
    "KVCache",
    "PageAllocator",
    "available_backends",
    "flash_attn_func",
    "flash_attn_with_kvcache",
    "merge_attention_states",
    "scaled_dot_product_attention",
    "use_backend",
]
