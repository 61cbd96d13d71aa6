"""The params objects of the C++ extensions (``attn.cpu._cpu``, ``attn.cuda._cuda``, ``attn.cuda._cuda_sim``).

Every extension's ``FwdParams`` / ``DecodeParams`` has one attribute per C++ field, named alike in
all three: a tensor's data pointer as an integer (0 = absent) and its element strides
``<tensor>_<dim>_stride``, sizes, ``dtype`` (the extension's ``DType`` member, named as torch's),
``softmax_scale``, ``softcap`` and ``window_left`` / ``window_right`` with -1 for unbounded (as
:class:`~attn.core.spec.AttentionSpec`). The callers add what only their backend has.
"""
from __future__ import annotations

from typing import Optional

import torch

from attn.core.spec import AttentionSpec

ROW_DIMS = ("batch", "row", "head")  # strided dims of q, k, v, out (B, S, H, D)
LSE_DIMS = ("batch", "head")  # strided dims of lse (B, H, Sq)


def set_tensor(params, name: str, t: Optional[torch.Tensor], dims: tuple[str, ...] = (),
               prefix: Optional[str] = None) -> None:
    """``params.<name>`` = t's data pointer (0 for None) and, for t's leading dims named ``dims``,
    ``params.<prefix>_<dim>_stride`` = its strides (``prefix`` defaults to ``name``)."""
    setattr(params, name, 0 if t is None else t.data_ptr())
    for dim, stride in zip(dims, () if t is None else t.stride()):
        setattr(params, f"{prefix or name}_{dim}_stride", stride)


def _set_common(params, ext, q: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, spec: AttentionSpec) -> None:
    """The fields forward and decode share: q, out, lse, ALiBi, dtype, q's sizes and the spec."""
    set_tensor(params, "q", q, ROW_DIMS)
    set_tensor(params, "out", out, ROW_DIMS)
    set_tensor(params, "lse", lse, LSE_DIMS)
    set_tensor(params, "alibi_slopes", spec.alibi_slopes)
    params.dtype = getattr(ext.DType, str(q.dtype).removeprefix("torch."))
    params.batch, params.seqlen_q, params.n_heads, params.head_dim = q.shape
    params.softmax_scale, params.softcap = spec.softmax_scale, spec.softcap
    params.window_left, params.window_right = spec.window_left, spec.window_right


def forward_params(ext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                   spec: AttentionSpec):
    """``ext.FwdParams`` for ``q, out (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)``, ``lse (B, H, Sq)``."""
    params = ext.FwdParams()
    _set_common(params, ext, q, out, lse, spec)
    set_tensor(params, "k", k, ROW_DIMS)
    set_tensor(params, "v", v, ROW_DIMS)
    params.seqlen_k, params.n_kv_heads = k.shape[1], k.shape[2]
    params.diagonal_offset = spec.diagonal_offset(q.shape[1], k.shape[1])
    return params


def decode_params(ext, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, seqlens_k: torch.Tensor, cache_batch_idx: Optional[torch.Tensor],
                  block_table: Optional[torch.Tensor], spec: AttentionSpec):
    """``ext.DecodeParams`` for ``q, out (B, Sq, H, D)`` against a contiguous ``(B_cache, S_max,
    Hkv, D)`` or, with ``block_table (B, max_pages)``, paged ``(num_pages, page_size, Hkv, D)``
    cache; ``seqlens_k``, ``cache_batch_idx`` and ``block_table`` int32 as the kernels read them."""
    params = ext.DecodeParams()
    _set_common(params, ext, q, out, lse, spec)
    set_tensor(params, "k_cache", k_cache, ROW_DIMS, prefix="k")
    set_tensor(params, "v_cache", v_cache, ROW_DIMS, prefix="v")
    set_tensor(params, "seqlens_k", seqlens_k)
    set_tensor(params, "cache_batch_idx", cache_batch_idx)
    set_tensor(params, "block_table", block_table, ("batch",))
    params.n_kv_heads = k_cache.shape[2]
    if block_table is not None:
        params.page_size = k_cache.shape[1]
    return params
