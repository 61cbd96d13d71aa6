"""What every public function does once its arguments are validated: pick the backend, run the op."""
from __future__ import annotations

from typing import Optional

import torch
import torch.autograd.forward_ad as fwAD

from attn.backends import registry
from attn.core.spec import AttentionSpec, input_options
from attn.reference import fa2


def needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd will want gradients of any of ``tensors`` (a backend must then have a backward)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def has_tangent(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether any of ``tensors`` carries a forward-mode tangent (``torch.func.jvp``,
    ``torch.autograd.forward_ad``): custom ops have no forward-mode rule, so a backend must then
    run in plain PyTorch ops ("forward_ad"), never drop the tangent."""
    return any(t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors)


def used_options(spec: AttentionSpec, *inputs: Optional[torch.Tensor]) -> list[str]:
    """The options a backend must honour for ``spec`` on ``inputs`` and the spec's tensors (plus
    "backward" when one needs grad, "forward_ad" when one carries a tangent)."""
    options = spec.options_in_use()
    tensors = (*inputs, spec.bias, spec.alibi_slopes)
    if needs_grad(*tensors):
        options.append("backward")
    if has_tangent(*tensors):
        options.append("forward_ad")
    return options


def run_forward(fn: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec,
                backend: Optional[str]):
    """``(out, lse)`` of the forward on the backend that ``backend`` names or "auto" picks.

    Empty problems (``B``, ``Sq`` or ``Sk`` zero) launch no kernel: like PyTorch, ``out`` is empty,
    or zeros with ``lse = -inf`` when there are no keys, computed by the PyTorch formulas of
    :mod:`attn.reference.fa2` (differentiable, zero gradients) after the backend is chosen, so an
    explicit backend still refuses the options it lacks."""
    options = used_options(spec, q, k, v) + input_options(q, k, v)
    impl = registry.select(fn, backend, q.device.type, "forward", options)
    if q.shape[0] == 0 or q.shape[1] == 0 or k.shape[1] == 0:
        return fa2.attention_forward(q, k, v, spec)
    return impl.forward(q, k, v, spec)
