"""A small GPT (pre-norm transformer decoder) on :class:`attn.CausalSelfAttention`.

Big enough to exercise prefill + incremental decode end to end (README example, the
benchmark's tokens/s), small enough to read in one sitting. Learned absolute positions, GELU
MLP, tied input/output embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from attn.modules.causal_self_attention import CausalSelfAttention


@dataclass
class GPTConfig:
    vocab_size: int = 256
    max_seqlen: int = 1024
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: Optional[int] = None  # None: num_heads (MHA); fewer: GQA
    embed_dim: int = 256
    mlp_ratio: int = 4


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int, backend: Optional[str], factory: dict):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.embed_dim, **factory)
        self.attn = CausalSelfAttention(config.embed_dim, config.num_heads, config.num_kv_heads,
                                        layer_idx=layer_idx, backend=backend, **factory)
        self.ln_mlp = nn.LayerNorm(config.embed_dim, **factory)
        hidden = config.mlp_ratio * config.embed_dim
        self.mlp = nn.Sequential(nn.Linear(config.embed_dim, hidden, **factory), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, config.embed_dim, **factory))

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), cache)
        return x + self.mlp(self.ln_mlp(x))


class GPT(nn.Module):
    """``GPT(config)(idx (B, L) int64, cache=None) -> logits (B, L, vocab_size)``."""

    def __init__(self, config: GPTConfig, *, backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        self.config = config
        factory = {"device": device, "dtype": dtype}
        self.tok_emb = nn.Embedding(config.vocab_size, config.embed_dim, **factory)
        self.pos_emb = nn.Embedding(config.max_seqlen, config.embed_dim, **factory)
        self.blocks = nn.ModuleList(Block(config, i, backend, factory) for i in range(config.num_layers))
        self.ln_out = nn.LayerNorm(config.embed_dim, **factory)
        self.lm_head = nn.Linear(config.embed_dim, config.vocab_size, bias=False, **factory)
        self.lm_head.weight = self.tok_emb.weight

    def forward(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        batch, seqlen = idx.shape
        start = 0 if cache is None else cache.lengths(0)[0]  # generate() keeps every sequence aligned
        if start + seqlen > self.config.max_seqlen:
            raise ValueError(f"GPT.forward: argument 'idx' expected at most {self.config.max_seqlen} positions "
                             f"in all, got {start} cached + {seqlen} new")
        positions = torch.arange(start, start + seqlen, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x, cache)
        return self.lm_head(self.ln_out(x))

    def make_cache(self, batch_size: int, max_seqlen: Optional[int] = None, *, page_size: Optional[int] = None):
        """An empty :class:`attn.KVCache` sized for this model."""
        from attn.api import KVCache

        cfg = self.config
        weight = self.tok_emb.weight
        return KVCache(cfg.num_layers, batch_size, max_seqlen or cfg.max_seqlen, cfg.num_kv_heads or cfg.num_heads,
                       cfg.embed_dim // cfg.num_heads, dtype=weight.dtype, device=weight.device, page_size=page_size)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 generator: Optional[torch.Generator] = None, page_size: Optional[int] = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Appends ``max_new_tokens`` tokens to ``idx (B, L)``: greedy with ``temperature=0``,
        else sampled. With the cache: one prefill, then one decode step per token;
        ``use_cache=False`` recomputes the whole prefix each step (the slow baseline)."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"GPT.generate: argument 'max_new_tokens' expected an int >= 0, got {max_new_tokens!r}")
        cache = self.make_cache(idx.shape[0], idx.shape[1] + max_new_tokens, page_size=page_size) if use_cache else None
        tokens, step_input = idx, idx
        for _ in range(max_new_tokens):
            logits = self(step_input if use_cache else tokens, cache)[:, -1].float()
            if temperature > 0:
                next_token = torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=generator)
            else:
                next_token = logits.argmax(dim=-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
            step_input = next_token
        return tokens
