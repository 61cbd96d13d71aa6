"""What every public function does once its arguments are validated: pick the backend, run the op."""
from __future__ import annotations

from typing import Optional

import torch

from attn.backends import registry
from attn.core.spec import AttentionSpec, input_options


def needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd will want gradients of any of ``tensors`` (a backend must then have a backward)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def used_options(spec: AttentionSpec, *inputs: Optional[torch.Tensor]) -> list[str]:
    """The options a backend must honour for ``spec`` on ``inputs`` (plus "backward" when they need grad)."""
    options = spec.options_in_use()
    if needs_grad(*inputs):
        options.append("backward")
    return options


def run_forward(fn: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec,
                backend: Optional[str]):
    """``(out, lse)`` of the forward on the backend that ``backend`` names or "auto" picks."""
    options = used_options(spec, q, k, v) + input_options(q, k, v)
    impl = registry.select(fn, backend, q.device.type, "forward", options)
    return impl.forward(q, k, v, spec)
