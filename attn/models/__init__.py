"""Small reference models built on attn's modules."""
from attn.models.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
