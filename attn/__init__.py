"""attn: fused, tiled attention kernels for PyTorch (Triton and CUDA C++) behind one API."""
from attn import reference
from attn.api import (
    BackendInfo,
    KVCache,
    PageAllocator,
    available_backends,
    flash_attn_func,
    flash_attn_with_kvcache,
    merge_attention_states,
    scaled_dot_product_attention,
    use_backend,
)
from attn.modules import CausalSelfAttention, MultiheadAttention

__version__ = "0.1.0"

__all__ = [
    "BackendInfo",
    "CausalSelfAttention",
    "KVCache",
    "MultiheadAttention",
    "PageAllocator",
    "available_backends",
    "flash_attn_func",
    "flash_attn_with_kvcache",
    "merge_attention_states",
    "reference",
    "scaled_dot_product_attention",
    "use_backend",
]
