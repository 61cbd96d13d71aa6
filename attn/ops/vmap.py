"""The batching rule of the attention ops, for ``torch.func.vmap``.

Every tensor argument of ``attn::flash_attn_forward``, ``attn::flash_attn_backward`` and
``attn::kernel_forward`` has the batch ``B`` as its leading dim (``q, k, v, out, dout (B, S, H, D)``,
``lse, dlse (B, H, Sq)``, ``bias (B, H, Sq, Sk)``, ``alibi_slopes (B, H)``), and batch entries
are independent. So a vmapped call is one call with the vmapped dim folded into ``B``: batched
arguments move it to the front and merge it, unbatched ones are broadcast along it (``expand``,
no copy unless the merge needs one), and every output is split back to ``(N, B, ...)``.
"""
from __future__ import annotations

import torch


def _fold(arg, in_dim, size: int):
    if not isinstance(arg, torch.Tensor):
        return arg
    arg = arg.movedim(in_dim, 0) if in_dim is not None else arg.expand(size, *arg.shape)
    return arg.reshape(size * arg.shape[1], *arg.shape[2:])


def register_batch_folding(op) -> None:
    """Registers the batching rule above for the custom op ``op``."""
    def rule(info, in_dims, *args):
        outs = op(*(_fold(arg, in_dim, info.batch_size) for arg, in_dim in zip(args, in_dims)))
        return tuple(out.reshape(info.batch_size, -1, *out.shape[1:]) for out in outs), (0,) * len(outs)

    torch.library.register_vmap(op, rule)
