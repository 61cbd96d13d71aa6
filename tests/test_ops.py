"""The torch.library ops and their autograd wiring: gradcheck, opcheck, torch.compile."""
from __future__ import annotations

import pytest
import torch

import attn
from attn.core.spec import AttentionSpec
from attn.ops import forward as forward_op
from attn.ops.args import spec_args
from attn.testing import assert_parity, random_tensor


def _leaves(shapes, dtype, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [random_tensor(s, dtype, generator=gen).to(device).requires_grad_() for s in shapes]


GRADCHECK_SPECS = {
    "causal-softcap-alibi-gqa": dict(causal=True, window_right=0, softcap=1.5,
                                     alibi_slopes=torch.tensor([[0.3, 0.7, 0.1, 0.5]])),
    "window-top-left-mask": dict(window_left=2, window_right=1, bottom_right=False,
                                 bias=torch.randn(1, 1, 5, 7, dtype=torch.float64,
                                                  generator=torch.Generator().manual_seed(0))
                                 .masked_fill(torch.eye(5, 7, dtype=torch.bool), float("-inf")).expand(1, 4, 5, 7)),
    "causal-empty-rows": dict(causal=True, window_right=0, bottom_right=True),
}


@pytest.mark.parametrize("name", list(GRADCHECK_SPECS))
def test_gradcheck_reference_path(name):
    """fp64 finite differences through the custom op's "reference" implementation: checks the
    backward formulas shared with the kernels (dLSE, softcap, GQA sums) and the autograd wiring
    (argument order, saved tensors, both outputs). Sq > Sk in the last case leaves rows with no
    visible key (bottom-right causal)."""
    options = GRADCHECK_SPECS[name]
    seqlen_q = 9 if name == "causal-empty-rows" else 5
    spec = AttentionSpec(softmax_scale=0.4, **options)
    q, k, v = _leaves([(1, seqlen_q, 4, 6), (1, 7, 2, 6), (1, 7, 2, 6)], torch.float64, seed=1)

    def fn(q, k, v):
        out, lse = forward_op.attention(q, k, v, spec, "reference")
        return out, torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def _op_args(dtype, seed, **spec_options):
    q, k, v = _leaves([(1, 37, 4, 24), (1, 45, 2, 24), (1, 45, 2, 24)], dtype, seed)
    spec = AttentionSpec(softmax_scale=0.2, **spec_options)
    return (q, k, v), dict(spec_args(spec), backend="triton")


@pytest.mark.parametrize("options", [
    dict(causal=True, window_right=0),
    dict(softcap=3.0, alibi_slopes=torch.rand(1, 4, generator=torch.Generator().manual_seed(3)),
         bias=torch.randn(1, 1, 37, 45, generator=torch.Generator().manual_seed(4)).expand(1, 4, 37, 45)),
], ids=["causal", "softcap-alibi-bias"])
def test_opcheck_forward(options):
    """Schema, fake implementation, AOT dispatch and autograd registration of the forward op."""
    args, kwargs = _op_args(torch.float16, 5, **options)
    torch.library.opcheck(torch.ops.attn.flash_attn_forward.default, args, kwargs)


def test_opcheck_backward():
    (q, k, v), kwargs = _op_args(torch.bfloat16, 6, window_left=9, window_right=3)
    with torch.no_grad():
        out, lse = torch.ops.attn.flash_attn_forward(q, k, v, **kwargs)
    gen = torch.Generator().manual_seed(7)
    dout = random_tensor(out.shape, out.dtype, generator=gen)
    dlse = random_tensor(lse.shape, lse.dtype, generator=gen)
    args = [t.detach() for t in (dout, q, k, v, out, lse, dlse)]
    torch.library.opcheck(torch.ops.attn.flash_attn_backward.default, args, kwargs)


def _loss(q, k, v):
    out, lse, _ = attn.flash_attn_func(q, k, v, causal=True, softcap=4.0, window_size=(40, -1),
                                       return_attn_probs=True, backend="triton")
    return out.float().square().sum() + lse.sum()


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compiler):
    """Forward and backward of flash_attn_func under torch.compile(fullgraph=True): no graph
    break (fullgraph raises on one), the custom ops traced through their fake implementations,
    and results equal to eager."""
    torch._dynamo.reset()
    leaves = _leaves([(2, 50, 4, 32), (2, 64, 2, 32), (2, 64, 2, 32)], torch.float16, seed=8)
    compiled = torch.compile(_loss, fullgraph=True, backend=compiler)
    loss = compiled(*leaves)
    grads = torch.autograd.grad(loss, leaves)
    eager_loss = _loss(*leaves)
    eager_grads = torch.autograd.grad(eager_loss, leaves)
    # inductor may fuse the fp32 loss reduction differently; the attention ops run unchanged.
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6 if compiler == "inductor" else 0, atol=0)
    for g, e in zip(grads, eager_grads):
        assert torch.equal(g, e)


def test_grad_flows_to_mask_and_slopes():
    """A float attn_mask (broadcast over the batch) and alibi_slopes that require grad get their
    gradients through the op's autograd formula, as autograd through the oracle gives them."""
    q, k, v = _leaves([(2, 20, 2, 16), (2, 24, 2, 16), (2, 24, 2, 16)], torch.float32, seed=9)
    mask = torch.randn(1, 2, 20, 24, generator=torch.Generator().manual_seed(10)).requires_grad_()
    slopes = torch.rand(2, generator=torch.Generator().manual_seed(11)).requires_grad_()
    spec = AttentionSpec(softmax_scale=0.25, causal=True, window_right=0, softcap=3.0,
                         alibi_slopes=slopes.expand(2, 2).contiguous(), bias=mask.expand(2, 2, 20, 24))
    out, lse = forward_op.attention(q, k, v, spec, "triton")
    (out.sum() + lse.sum()).backward()
    mask64, slopes64 = (t.detach().double().requires_grad_() for t in (mask, slopes))
    ref, ref_lse = attn.reference.attention(q.double(), k.double(), v.double(), softmax_scale=0.25, causal=True,
                                            softcap=3.0, alibi_slopes=slopes64, attn_mask=mask64,
                                            dtype=torch.float64)
    (ref.sum() + ref_lse.sum()).backward()
    assert_parity(mask.grad, mask64.grad, None, what="dmask")
    assert_parity(slopes.grad, slopes64.grad, None, what="dslopes")


def test_op_rejects_unknown_backend():
    (q, k, v), kwargs = _op_args(torch.float16, 10)
    with pytest.raises(ValueError, match="attn::flash_attn_forward: argument 'backend'"):
        torch.ops.attn.flash_attn_forward(q, k, v, **dict(kwargs, backend="cuda"))


def test_reference_path_matches_oracle():
    """The "reference" op implementation (used for gradcheck) agrees with attn.reference in fp32."""
    q, k, v = _leaves([(1, 33, 4, 16), (1, 41, 1, 16), (1, 41, 1, 16)], torch.float32, seed=11)
    spec = AttentionSpec(softmax_scale=0.25, causal=True, window_right=0, softcap=2.0)
    out, lse = forward_op.attention(q, k, v, spec, "reference")
    ref_out, ref_lse = attn.reference.attention(q, k, v, softmax_scale=0.25, causal=True, softcap=2.0)
    assert_parity(out, ref_out, None)
    assert_parity(lse, ref_lse, None, what="lse")
