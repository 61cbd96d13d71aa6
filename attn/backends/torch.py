"""The "torch" backend: ``torch.nn.functional.scaled_dot_product_attention``, differentiable through
autograd, on any device. Masks, windows and ALiBi are expressed as an additive fp32 bias, so it
materializes nothing PyTorch would not; a call with such a bias runs in fp32 whatever the inputs'
dtype (SDPA takes a float mask only in the inputs' dtype, and a 16-bit bias loses ALiBi far from the
diagonal). It cannot express ``softcap`` or return the LSE.

PyTorch's fused CPU SDPA kernels turn a query row holding NaN into zeros, and its ``P @ V`` lets
a NaN or Inf in a hidden key's value row reach rows that cannot see it (0 * NaN); attn documents
that NaN propagates to exactly the rows that see it (docs/design.md §3). In eager mode "torch"
therefore hands inputs with a NaN in q or k, or a non-finite v, to the reference formula (one
O(B·S·H·D) check per input, against the O(B·H·Sq·Sk·D) attention). While tracing
(``torch.compile``, ``torch.func`` transforms) a data-dependent branch is impossible: there it
only writes NaN into the rows of NaN queries (a tensor operation), and hidden non-finite values
are not isolated (README, Known limits).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attn import reference
from attn.backends.reference import ALL_FORWARD, REFERENCE
from attn.core.alloc import in_layout_of
from attn.core.spec import INPUT_OPTIONS, AttentionSpec


def _tracing(t: torch.Tensor) -> bool:
    """Whether ``t`` flows through a trace (torch.compile) or a torch.func transform, where Python
    cannot branch on its values."""
    return torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(t)


class TorchSDPABackend:
    name = "torch"
    devices = frozenset({"cpu", "cuda"})
    capabilities = {"forward": (ALL_FORWARD | INPUT_OPTIONS) - {"softcap", "return_lse"}}

    def status(self, device_type: str):
        if device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        return None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec):
        if not _tracing(q) and (torch.isnan(q).any() or torch.isnan(k).any() or not torch.isfinite(v).all()):
            return REFERENCE.forward(q, k, v, spec)[0], None
        # (B, H, Sq, 1), SDPA's output layout (filling in it keeps that layout): query rows SDPA would
        # zero; they see at least one key unless ``dead`` below.
        nan_rows = torch.isnan(q).any(dim=-1, keepdim=True).transpose(1, 2)
        batch, seqlen_q, n_heads, _ = q.shape
        seqlen_k, n_kv_heads = k.shape[1], k.shape[2]
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        gqa = n_heads != n_kv_heads
        # PyTorch's is_causal is top-left aligned; bottom-right coincides with it when Sq == Sk.
        simple_causal = spec.causal and spec.window_left < 0 and (not spec.bottom_right or seqlen_q == seqlen_k)
        if spec.bias is None and spec.alibi_slopes is None and (not spec.has_window or simple_causal):
            out = F.scaled_dot_product_attention(
                qt, kt, vt, is_causal=simple_causal, scale=spec.softmax_scale, enable_gqa=gqa
            )
            return in_layout_of(q, out.masked_fill(nan_rows, float("nan")).transpose(1, 2)), None
        keep = reference.visibility(
            batch, seqlen_q, seqlen_k, causal=spec.causal, bottom_right=spec.bottom_right,
            window_size=spec.window_size, device=q.device,
        )
        # Masks and ALiBi enter the softmax in fp32 (docs/design.md §3). SDPA takes a float mask
        # only in the inputs' dtype, so a masked 16-bit call runs in fp32 and rounds its output
        # (docs/design.md §5).
        compute = torch.promote_types(q.dtype, torch.float32)
        bias = torch.zeros(keep.shape, dtype=compute, device=q.device).masked_fill(~keep, float("-inf"))
        if spec.alibi_slopes is not None:
            bias = bias + reference.alibi_bias(
                spec.alibi_slopes, batch, n_heads, seqlen_q, seqlen_k, bottom_right=spec.bottom_right, dtype=compute
            )
        if spec.bias is not None:
            bias = bias + spec.bias.to(compute)
        qt, kt, vt = (t.to(compute) for t in (qt, kt, vt))
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias, scale=spec.softmax_scale, enable_gqa=gqa)
        # SDPA yields NaN for rows that see no key; the contract says 0.
        dead = torch.isneginf(bias).all(dim=-1, keepdim=True).expand(out.shape[:-1] + (1,))
        out = out.masked_fill(nan_rows, float("nan")).masked_fill(dead, 0.0)
        return in_layout_of(q, out.to(q.dtype).transpose(1, 2)), None


TORCH = TorchSDPABackend()
