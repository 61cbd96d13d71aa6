"""Drop-in ``nn.Module``s built on attn's kernels."""
from attn.modules.causal_self_attention import CausalSelfAttention
from attn.modules.mha import MultiheadAttention

__all__ = ["CausalSelfAttention", "MultiheadAttention"]
