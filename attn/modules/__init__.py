"""Drop-in ``nn.Module``s built on attn's kernels."""
from attn.modules.mha import MultiheadAttention

__all__ = ["MultiheadAttention"]
