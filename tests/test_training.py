"""A tiny transformer trains the same on the Triton kernels as on PyTorch's SDPA."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attn

VOCAB, D_MODEL, N_HEADS, N_KV_HEADS, SEQLEN, BATCH, STEPS = 48, 64, 4, 2, 40, 2, 6


class Block(nn.Module):
    """Pre-norm causal self-attention (GQA) + MLP; ``sdpa`` computes the attention."""

    def __init__(self, sdpa):
        super().__init__()
        self.sdpa = sdpa
        self.head_dim = D_MODEL // N_HEADS
        self.norm1 = nn.LayerNorm(D_MODEL)
        self.qkv = nn.Linear(D_MODEL, (N_HEADS + 2 * N_KV_HEADS) * self.head_dim)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.norm2 = nn.LayerNorm(D_MODEL)
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(), nn.Linear(4 * D_MODEL, D_MODEL))

    def forward(self, x):
        batch, seqlen, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(
            [N_HEADS * self.head_dim, N_KV_HEADS * self.head_dim, N_KV_HEADS * self.head_dim], dim=-1)
        q = q.view(batch, seqlen, N_HEADS, self.head_dim).transpose(1, 2)  # (B, H, S, D)
        k = k.view(batch, seqlen, N_KV_HEADS, self.head_dim).transpose(1, 2)
        v = v.view(batch, seqlen, N_KV_HEADS, self.head_dim).transpose(1, 2)
        y = self.sdpa(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, seqlen, D_MODEL))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    def __init__(self, sdpa):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.blocks = nn.ModuleList([Block(sdpa), Block(sdpa)])
        self.head = nn.Linear(D_MODEL, VOCAB)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _train(sdpa, tokens):
    torch.manual_seed(0)
    model = TinyLM(sdpa)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(STEPS):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_tiny_transformer_loss_curve_matches_torch_sdpa():
    """fp32, 2 layers, GQA, causal: the loss curve on attn's Triton kernels (interpreted on CPU)
    matches torch.nn.functional.scaled_dot_product_attention step by step, and decreases."""
    tokens = torch.randint(0, VOCAB, (BATCH, SEQLEN + 1), generator=torch.Generator().manual_seed(1))
    expected = _train(F.scaled_dot_product_attention, tokens)
    got = _train(lambda q, k, v, **kw: attn.scaled_dot_product_attention(q, k, v, backend="triton", **kw), tokens)
    assert got[-1] < got[0] - 0.1
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)
