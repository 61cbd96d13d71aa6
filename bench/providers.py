"""The attention implementations a user could pick, behind one small calling convention.

* ``naive`` — attention as written in most model code (HF "eager"): KV heads repeated for GQA,
  the full ``(B, H, Sq, Sk)`` score matrix materialized, softmax in fp32, then ``P @ V``.
* ``sdpa`` — ``torch.nn.functional.scaled_dot_product_attention`` with PyTorch's default dispatch.
* ``flash-attn`` — the ``flash_attn`` package, when importable (CUDA, 16-bit only).
* ``attn:<name>`` — every backend in :mod:`attn`'s registry, called by name through the public
  API, so a backend that lands later appears without changes here.

Each provider takes inputs in its native layout (``bhsd`` for PyTorch-style code, ``bshd`` for
flash-attn-style APIs), so no layout conversion is timed. ``status(device)`` is ``None`` when the
provider can run on that device, else the reason it cannot.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
import torch.nn.functional as F

from bench.profiles import Case


class Unavailable(Exception):
    """The provider cannot run this op here (missing package, API not implemented yet)."""


# Backends that run emulated on a device: their timings say nothing about the real kernel, so
# they are only executed in the "executed on CPU for correctness" section, never timed.
EMULATED = {
    "triton": ({"cpu"}, "Triton interpreter (TRITON_INTERPRET=1)"),
    "cuda-sim": ({"cpu", "cuda"}, "CUDA C++ kernels on the SIMT host emulator"),
}


def is_emulated(backend: str, device: str) -> bool:
    devices, _ = EMULATED.get(backend, (set(), ""))
    return device in devices


class Provider:
    name = ""
    layout = "bshd"  # or "bhsd"

    def status(self, device: str) -> Optional[str]:
        return None

    def forward(self, q, k, v, causal: bool, scale: float):
        raise NotImplementedError

    def decode(self, q, k_cache, v_cache, cache_seqlens, scale: float):
        raise Unavailable(f"{self.name}: decode is not implemented")


def _repeat_kv(t: torch.Tensor, group: int) -> torch.Tensor:
    """(B, Hkv, S, D) -> (B, Hkv*group, S, D), as HF's ``repeat_kv``."""
    return t if group == 1 else t.repeat_interleave(group, dim=1)


class Naive(Provider):
    name = "naive"
    layout = "bhsd"

    def _attend(self, q, k, v, scale, mask):
        group = q.shape[1] // k.shape[1]
        k, v = _repeat_kv(k, group), _repeat_kv(v, group)
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Sq, Sk)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(probs, v)

    def forward(self, q, k, v, causal, scale):
        mask = None
        if causal:
            seqlen_q, seqlen_k = q.shape[2], k.shape[2]
            # bottom-right aligned: query i sees keys j <= i + Sk - Sq
            mask = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=q.device).triu(seqlen_k - seqlen_q + 1)
        return self._attend(q, k, v, scale, mask)

    def decode(self, q, k_cache, v_cache, cache_seqlens, scale):
        return self._attend(q, k_cache, v_cache, scale, None)


class SDPA(Provider):
    name = "sdpa"
    layout = "bhsd"

    def forward(self, q, k, v, causal, scale):
        # is_causal is top-left aligned; the sweep's forward cases have Sq == Sk, where both agree
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])

    def decode(self, q, k_cache, v_cache, cache_seqlens, scale):
        # one query after the whole cache sees every key: no mask
        return F.scaled_dot_product_attention(q, k_cache, v_cache, scale=scale,
                                              enable_gqa=q.shape[1] != k_cache.shape[1])


class FlashAttn(Provider):
    name = "flash-attn"

    def __init__(self):
        try:
            self._fa = importlib.import_module("flash_attn")
            self._why = None
        except ImportError as exc:
            self._fa, self._why = None, f"flash_attn is not importable ({exc})"

    def status(self, device):
        if self._why:
            return self._why
        if device != "cuda":
            return "flash_attn runs on CUDA tensors only"
        return None

    def forward(self, q, k, v, causal, scale):
        if q.dtype not in (torch.float16, torch.bfloat16):
            raise NotImplementedError(f"flash_attn supports fp16/bf16 only, got {q.dtype}")
        return self._fa.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)

    def decode(self, q, k_cache, v_cache, cache_seqlens, scale):
        if q.dtype not in (torch.float16, torch.bfloat16):
            raise NotImplementedError(f"flash_attn supports fp16/bf16 only, got {q.dtype}")
        return self._fa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=cache_seqlens,
                                                softmax_scale=scale, causal=True)


class AttnBackend(Provider):
    """One backend of :mod:`attn`, called through the public API with ``backend=<name>``."""

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"attn:{backend}"

    def status(self, device):
        from attn.backends import registry

        impl = registry.load(self.backend)
        if isinstance(impl, str):
            return impl
        if device not in impl.devices:
            return f"runs on {', '.join(sorted(impl.devices))} tensors only"
        if is_emulated(self.backend, device):
            return (f"emulated on {device} ({EMULATED[self.backend][1]}): executed only in the "
                    "'executed on CPU for correctness' section, never timed")
        return impl.status(device)

    def forward(self, q, k, v, causal, scale):
        import attn

        return attn.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, backend=self.backend)

    def decode(self, q, k_cache, v_cache, cache_seqlens, scale):
        import attn

        if not hasattr(attn, "flash_attn_with_kvcache"):
            raise Unavailable("attn.flash_attn_with_kvcache: not implemented yet")
        return attn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=cache_seqlens, softmax_scale=scale,
                                            causal=True, backend=self.backend)


def discover() -> list[Provider]:
    """Every provider known to this runner, usable here or not (``status`` says)."""
    from attn.backends import registry

    return [Naive(), SDPA(), FlashAttn()] + [AttnBackend(name) for name in registry.names()]


def get(name: str) -> Provider:
    for provider in discover():
        if provider.name == name:
            return provider
    raise ValueError(f"bench.providers.get: argument 'name' expected one of {[p.name for p in discover()]}, "
                     f"got {name!r}")


# ---- inputs and calls -------------------------------------------------------------------------

def _shape(layout: str, batch: int, seqlen: int, heads: int, head_dim: int) -> tuple[int, ...]:
    return (batch, heads, seqlen, head_dim) if layout == "bhsd" else (batch, seqlen, heads, head_dim)


def make_inputs(provider: Provider, case: Case, dtype: torch.dtype, device: str,
                generator: torch.Generator) -> dict:
    """Fresh random inputs for one call of ``case.op`` in ``provider``'s layout (``generator`` on ``device``)."""
    def rand(shape, requires_grad=False):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype).requires_grad_(requires_grad)

    layout = provider.layout
    if case.op == "decode":
        return {
            "q": rand(_shape(layout, case.batch, 1, case.heads, case.head_dim)),
            "k_cache": rand(_shape(layout, case.batch, case.seqlen_k, case.kv_heads, case.head_dim)),
            "v_cache": rand(_shape(layout, case.batch, case.seqlen_k, case.kv_heads, case.head_dim)),
            "cache_seqlens": torch.full((case.batch,), case.seqlen_k, dtype=torch.int32, device=device),
        }
    grad = case.op == "forward_backward"
    inputs = {
        "q": rand(_shape(layout, case.batch, case.seqlen_q, case.heads, case.head_dim), grad),
        "k": rand(_shape(layout, case.batch, case.seqlen_k, case.kv_heads, case.head_dim), grad),
        "v": rand(_shape(layout, case.batch, case.seqlen_k, case.kv_heads, case.head_dim), grad),
    }
    if grad:
        inputs["dout"] = rand(_shape(layout, case.batch, case.seqlen_q, case.heads, case.head_dim))
    return inputs


def input_bytes(inputs: dict) -> int:
    return sum(t.numel() * t.element_size() for t in inputs.values())


def clear_grads(inputs: dict) -> None:
    for t in inputs.values():
        t.grad = None


def call(provider: Provider, case: Case, inputs: dict):
    """Runs ``case.op`` once; for ``forward_backward`` the backward pass included."""
    scale = case.head_dim ** -0.5
    if case.op == "decode":
        return provider.decode(inputs["q"], inputs["k_cache"], inputs["v_cache"], inputs["cache_seqlens"], scale)
    out = provider.forward(inputs["q"], inputs["k"], inputs["v"], case.causal, scale)
    if case.op == "forward_backward":
        out.backward(inputs["dout"])
    return out


def is_oom(exc: BaseException) -> bool:
    """True for an allocation failure on either device (CUDA OOM, or the CPU allocator's refusal)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)
