"""``attn.MultiheadAttention``: ``torch.nn.MultiheadAttention`` computed with attn's kernels.

A subclass, not a look-alike: ``nn.TransformerEncoderLayer``/``nn.TransformerDecoderLayer`` and
user code that checks ``isinstance(m, nn.MultiheadAttention)`` keep working, and the state_dict
is the parent's, so ``load_state_dict(torch_mha.state_dict(), strict=True)`` loads unchanged.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from attn.api import scaled_dot_product_attention
from attn.core import validation as V

_FN = "MultiheadAttention.forward"


def _fail(name: str, expected: str, actual: object, exc: type = ValueError):
    raise exc(f"{_FN}: argument '{name}' expected {expected}, got {actual}")


def _keep_or_bias(mask: torch.Tensor) -> torch.Tensor:
    """PyTorch's MHA convention (bool True = masked out, float = additive) -> SDPA's
    (bool True = attend, float = additive)."""
    return ~mask if mask.dtype == torch.bool else mask


def _combine(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Intersects two SDPA-style masks: bool & bool stays bool, anything else adds as float."""
    if a is None or b is None:
        return a if b is None else b
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b
    as_bias = [
        torch.zeros(m.shape, dtype=torch.float32, device=m.device).masked_fill(~m, float("-inf"))
        if m.dtype == torch.bool else m.float()
        for m in (a, b)
    ]
    return as_bias[0] + as_bias[1]


def _weights_path(q, k, v, mask, dropout_p: float):
    """The reference path for ``need_weights=True``: explicit probabilities, fp32 softmax.

    ``q (B, H, L, Dh)``, ``k, v (B, H, S, Dh)``, ``mask`` SDPA-style broadcastable to
    ``(B, H, L, S)`` -> ``out (B, H, L, Dh)`` in q's dtype, ``probs (B, H, L, S)`` fp32.
    Rows that see no key get zero probabilities (PyTorch's math path gives NaN)."""
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    if scores.shape[-1] == 0:  # no keys (S = 0): amax has no identity; zero probabilities, output 0 as PyTorch
        row_max = scores.new_zeros(scores.shape[:-1] + (1,))
    else:
        row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    probs = torch.exp(scores - row_max)
    denom = probs.sum(dim=-1, keepdim=True)
    probs = probs / torch.where(denom == 0, torch.ones_like(denom), denom)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs.to(v.dtype), v), probs


def _route_to_attn(module: nn.Module, args: tuple) -> None:
    """A forward pre-hook that changes nothing. ``nn.TransformerEncoderLayer`` skips its fused
    inference fast path (which reads this module's weights and never calls it) when any submodule
    has a forward hook, so with this hook attached the layer calls :meth:`MultiheadAttention.forward`
    and attn's kernels run: a user who swaps the module in gets what they asked for."""
    return None


class MultiheadAttention(nn.MultiheadAttention):
    """Drop-in ``torch.nn.MultiheadAttention`` whose attention runs on attn's kernels.

    A subclass with the same constructor (plus keyword-only ``backend``), parameters,
    state_dict, ``forward`` signature and mask conventions as PyTorch's: ``attn_mask`` ``(L, S)``
    or ``(B * num_heads, L, S)`` and ``key_padding_mask`` ``(B, S)`` are bool (True = masked
    out, the opposite of SDPA's convention) or additive float. ``forward`` projects with the
    module's weights and calls :func:`attn.scaled_dot_product_attention`.

    Differences from PyTorch:

    * ``need_weights=True`` (PyTorch's default) computes the attention weights on a reference
      path in plain PyTorch (explicit ``(B, H, L, S)`` fp32 probabilities; ``backend`` is not
      used): the fused kernels never materialize them. Pass ``need_weights=False`` to run the
      kernels.
    * ``is_causal=True`` is a hint, as in PyTorch, but ``attn_mask`` may be omitted (a top-left
      causal mask is then built); see :meth:`forward`.
    * A query whose keys are all masked outputs 0 (PyTorch gives NaN).
    * Dropout: on the kernel path (``need_weights=False``) ``dropout > 0`` in training mode
      raises ``NotImplementedError`` (no kernel has dropout); the ``need_weights=True`` path
      applies dropout to the probabilities like PyTorch.

    Inside ``nn.TransformerEncoderLayer``: in inference (eval mode, no grad, batch_first, ...)
    PyTorch's fast path would call its fused native kernel with this module's weights and never
    call this module. The module registers a no-op forward pre-hook, which makes the layer skip
    that fast path, so attn's kernels run there too (PyTorch's own fast path needs the
    module to have no hooks; remove the hook from ``_forward_pre_hooks`` to get it back).

    NestedTensor inputs: self-attention (``query is key is value``) with ``batch_first=True``
    and no masks, as PyTorch's fast path takes them; the sequences are padded, masked with a
    key padding mask, and the output is a NestedTensor of the same lengths (weights, if
    requested, are padded ``(B, L_max, L_max)`` with zeros, as PyTorch's).

    ``torch.jit.script`` cannot compile this forward (backend selection and validation are
    Python); scripting the module (alone or inside a model) yields PyTorch's own
    ``nn.MultiheadAttention`` sharing these parameters, with a warning: the scripted model
    computes PyTorch's attention, not attn's kernels. ``torch.jit.trace`` and ``torch.compile``
    keep attn's kernels.

    Args:
        embed_dim: Model width ``E``; query feature size and output size.
        num_heads: Number of heads ``H``; must divide ``embed_dim``. The kernels take a head dim
            ``E // H`` of at most 256 (checked at the first kernel call).
        dropout: Dropout probability on the attention weights, applied only in training mode.
            Default 0.0. See above: any value > 0 makes training-mode kernel calls raise.
        bias: Add biases to the input and output projections. Default True.
        add_bias_kv: Append learned bias vectors to the key and value sequences (one extra
            key, never masked). Default False.
        add_zero_attn: Append a zero key/value (one extra key, never masked). Default False.
        kdim: Key feature size; default None means ``embed_dim``.
        vdim: Value feature size; default None means ``embed_dim``.
        batch_first: Inputs and output are ``(B, L, E)`` instead of ``(L, B, E)``. Default
            False.
        device: Device of the parameters (factory kwarg). Default None.
        dtype: Dtype of the parameters (factory kwarg). Default None.
        backend: Keyword-only. The ``backend=`` passed to
            :func:`attn.scaled_dot_product_attention` on the kernel path: None (default; the
            block default of :func:`attn.use_backend`, else "auto": on CUDA tensors "cuda",
            "triton", "torch", "reference", on CPU tensors "cpu", "torch", "reference") or one of
            "triton", "cuda", "cuda-sim", "cpu", "torch", "reference". Not validated here: an
            unknown or unavailable name raises at the first kernel call. Stored as
            ``self.backend`` (not part of the state_dict).

    Raises:
        ValueError: ``num_heads > 0`` does not divide ``embed_dim``. Other invalid arguments
            raise whatever ``torch.nn.MultiheadAttention.__init__`` raises.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
        *,
        backend: Optional[str] = None,
    ) -> None:
        if num_heads > 0 and embed_dim % num_heads:  # PyTorch asserts; attn's contract is a ValueError
            raise ValueError(f"MultiheadAttention: argument 'num_heads' expected a divisor of embed_dim={embed_dim}, "
                             f"got {num_heads}")
        super().__init__(
            embed_dim, num_heads, dropout=dropout, bias=bias, add_bias_kv=add_bias_kv,
            add_zero_attn=add_zero_attn, kdim=kdim, vdim=vdim, batch_first=batch_first,
            device=device, dtype=dtype,
        )
        self.backend = backend
        self.register_forward_pre_hook(_route_to_attn)

    def __prepare_scriptable__(self) -> nn.MultiheadAttention:
        """What ``torch.jit.script`` compiles instead of this module (see the class docstring)."""
        warnings.warn(
            "attn.MultiheadAttention: torch.jit.script cannot compile attn's forward (backend selection is "
            "Python); the scripted module is torch.nn.MultiheadAttention sharing these parameters and computes "
            "PyTorch's attention. Use torch.jit.trace or torch.compile to keep attn's kernels.",
            stacklevel=2,
        )
        twin = nn.MultiheadAttention.__new__(nn.MultiheadAttention)
        twin.__dict__.update(self.__dict__)  # the same Parameter objects and submodules
        twin._forward_pre_hooks = type(self._forward_pre_hooks)()
        del twin.backend
        return twin

    @classmethod
    def from_module(cls, module: nn.MultiheadAttention, *, backend: Optional[str] = None) -> MultiheadAttention:
        """A copy of ``module`` (same configuration, weights, device, dtype and train/eval mode)."""
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(
                f"MultiheadAttention.from_module: argument 'module' expected a torch.nn.MultiheadAttention, "
                f"got {type(module).__name__}"
            )
        weight = module.in_proj_weight if module._qkv_same_embed_dim else module.q_proj_weight
        new = cls(
            module.embed_dim, module.num_heads, dropout=module.dropout, bias=module.in_proj_bias is not None,
            add_bias_kv=module.bias_k is not None, add_zero_attn=module.add_zero_attn, kdim=module.kdim,
            vdim=module.vdim, batch_first=module.batch_first, device=weight.device, dtype=weight.dtype,
            backend=backend,
        )
        new.load_state_dict(module.state_dict(), strict=True)
        return new.train(module.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Multi-head attention of ``query`` over ``key``/``value``, as ``nn.MultiheadAttention``.

        Shapes below are batched with ``batch_first=False``; with ``batch_first=True`` swap the
        first two dims (``(B, L, E)``); unbatched inputs drop ``B`` (``(L, E)``, ``(S, kdim)``,
        ...). ``S`` is the key length; ``add_bias_kv`` and ``add_zero_attn`` each append one
        never-masked key, so the returned weights have ``S + 1`` or ``S + 2`` columns then.

        Args:
            query: ``(L, B, E)``, the dtype and device of the module's parameters (the dtype may
                differ under autocast).
            key: ``(S, B, kdim)``, same batch size, dtype and device.
            value: ``(S, B, vdim)``, the same batch and sequence dims as ``key``.
            key_padding_mask: Optional ``(B, S)`` (``(S,)`` unbatched): bool, True = ignore that
                key; or float, added to the scores. Default None.
            need_weights: Return the attention weights. Default True (PyTorch's default), which
                runs the plain-PyTorch reference path instead of the kernels; pass False for
                the fused kernels.
            attn_mask: Optional ``(L, S)`` or ``(B * num_heads, L, S)``: bool, True = not
                allowed to attend; or float, added to the scores. Default None.
            average_attn_weights: Average the returned weights over heads. Default True.
            is_causal: Causal hint (top-left aligned, PyTorch SDPA convention). Default False.
                With no ``key_padding_mask`` and ``need_weights=False`` the causal kernel runs
                and ``attn_mask`` is ignored (PyTorch likewise trusts ``attn_mask`` to be the
                causal mask); otherwise ``attn_mask`` is used if given, else a causal mask is
                built and combined with ``key_padding_mask``.

        Returns:
            ``(attn_output, attn_weights)``: ``attn_output (L, B, E)`` (``(B, L, E)`` with
            ``batch_first``, ``(L, E)`` unbatched) in the parameters' (or autocast's) dtype;
            ``attn_weights`` in
            ``query``'s dtype, ``(B, L, S)`` averaged over heads or ``(B, num_heads, L, S)``
            with ``average_attn_weights=False`` (``(L, S)`` / ``(num_heads, L, S)``
            unbatched), or None when ``need_weights=False``.

        Raises:
            TypeError: ``query``, ``key`` or ``value`` is not a tensor, or its dtype differs
                from the parameters' outside autocast; ``key_padding_mask`` or ``attn_mask`` is
                not a bool or floating-point tensor (integer masks are refused, as PyTorch
                does; the message names the argument); on the kernel path, a float64 mask
                (raised by :func:`attn.scaled_dot_product_attention`, whose name the message
                carries).
            ValueError: ``query`` not 2-D or 3-D; ``key``/``value`` rank differs from
                ``query``'s; a last dim other than ``embed_dim``/``kdim``/``vdim``; ``key`` and
                ``value`` batch/sequence dims differ; batch sizes differ; an input not on the
                parameters' device; ``attn_mask`` or ``key_padding_mask`` of the wrong shape;
                on the kernel path, a head dim above 256, a mask on another device, or an
                unknown ``backend`` name.
            NotImplementedError: on the kernel path, dropout > 0 in training mode, or the
                chosen backend cannot honour the call (the message names the backends that can).
            RuntimeError: on the kernel path, the module's ``backend`` is unavailable here.
        """
        if any(isinstance(t, torch.Tensor) and t.is_nested for t in (query, key, value)):
            return self._forward_nested(query, key, value, key_padding_mask, need_weights, attn_mask,
                                        average_attn_weights, is_causal)
        batched = self._check_inputs(query, key, value)
        for name, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            if mask is not None and (not isinstance(mask, torch.Tensor)
                                     or not (mask.dtype == torch.bool or mask.is_floating_point())):
                # PyTorch refuses integer masks too ("only bool and floating types of <name> are supported").
                _fail(name, "a bool or floating-point tensor",
                      mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__, TypeError)
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or not batched:  # (L, B, E) -> (B, L, E), a view
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, seqlen_q, _ = query.shape
        n_heads, head_dim = self.num_heads, self.head_dim

        q, k, v = self._project(query, key, value)  # (B, L, E), (B, S, E), (B, S, E)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(batch, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(batch, 1, -1)], dim=1)
        q = q.view(batch, seqlen_q, n_heads, head_dim)
        k = k.view(batch, k.shape[1], n_heads, head_dim)
        v = v.view(batch, v.shape[1], n_heads, head_dim)
        if self.add_zero_attn:
            zeros = torch.zeros(batch, 1, n_heads, head_dim, dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
        seqlen_k = k.shape[1]
        extra = seqlen_k - key.shape[1]  # columns appended by add_bias_kv / add_zero_attn, never masked

        mask = self._merged_mask(attn_mask, key_padding_mask, batch, seqlen_q, key.shape[1], extra)
        use_causal_kernel = is_causal and key_padding_mask is None and not need_weights
        if use_causal_kernel:
            mask = None
        elif is_causal and attn_mask is None:
            causal = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=q.device).tril()
            mask = _combine(mask, causal)
        dropout_p = self.dropout if self.training else 0.0

        # (B, S, H, Dh) -> (B, H, S, Dh): views, the kernels take strided inputs.
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        weights = None
        if need_weights:
            out, weights = _weights_path(qh, kh, vh, mask, dropout_p)
            weights = weights.to(query.dtype)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            out = scaled_dot_product_attention(
                qh, kh, vh, attn_mask=mask, dropout_p=dropout_p, is_causal=use_causal_kernel, backend=self.backend
            )
        out = out.transpose(1, 2).reshape(batch, seqlen_q, self.embed_dim)
        if not self.batch_first or not batched:  # back to (L, B, E), contiguous like PyTorch's output
            out = out.transpose(0, 1)
        out = self.out_proj(out)
        if not batched:
            out = out.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights

    def _forward_nested(self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                        is_causal):
        """NestedTensor ``(B, L_b, E)`` self-attention: padded to ``(B, L_max, E)`` with a key
        padding mask, then unpadded (see the class docstring)."""
        why_not = ("query, key and value are not the same tensor" if not (query is key and key is value) else
                   "batch_first is False" if not self.batch_first else
                   "a mask was given" if attn_mask is not None or key_padding_mask is not None else None)
        if why_not is not None:
            _fail("query", "a NestedTensor only for batch_first self-attention without masks (as PyTorch's fast "
                           f"path), but {why_not}", "a NestedTensor")
        lengths = [t.shape[0] for t in query.unbind()]
        padded = torch.nested.to_padded_tensor(query, 0.0)
        positions = torch.arange(padded.shape[1], device=padded.device)
        is_pad = positions.view(1, -1) >= torch.tensor(lengths, device=padded.device).view(-1, 1)
        out, weights = self.forward(padded, padded, padded, key_padding_mask=is_pad, need_weights=need_weights,
                                    average_attn_weights=average_attn_weights, is_causal=is_causal)
        out = torch.nested.as_nested_tensor([out[b, :n] for b, n in enumerate(lengths)])
        if weights is not None:  # padded query rows hold no weights, as in PyTorch's fast path
            weights = weights.masked_fill(is_pad.view(len(lengths), *(1,) * (weights.dim() - 3), -1, 1), 0.0)
        return out, weights

    def _check_inputs(self, query, key, value) -> bool:
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, torch.Tensor):
                _fail(name, "a torch.Tensor", type(t).__name__, TypeError)
        if query.dim() not in (2, 3):
            _fail("query", "a 3-D (batched) or 2-D (unbatched) tensor", f"shape {tuple(query.shape)}")
        for name, t, width in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if t.dim() != query.dim():
                _fail(name, f"{query.dim()} dims like 'query'", f"shape {tuple(t.shape)}")
            if t.shape[-1] != width:
                _fail(name, f"last dim {width}", f"shape {tuple(t.shape)}")
        weight = self.in_proj_weight if self._qkv_same_embed_dim else self.q_proj_weight
        for name, t in (("query", query), ("key", key), ("value", value)):
            V.check_module_input(_FN, name, t, weight)
        if key.shape[:-1] != value.shape[:-1]:
            _fail("value", f"the batch and sequence dims of 'key' {tuple(key.shape[:-1])}", tuple(value.shape))
        if query.dim() == 3:
            batch_axis = 0 if self.batch_first else 1
            if key.shape[batch_axis] != query.shape[batch_axis]:
                _fail("key", f"batch size {query.shape[batch_axis]} like 'query'", f"shape {tuple(key.shape)}")
        return query.dim() == 3

    def _project(self, query, key, value):
        """In-projections ``(B, L, E_in) -> (B, L, E)``; one fused matmul for self-attention."""
        bias = self.in_proj_bias
        if self._qkv_same_embed_dim and query is key and key is value:
            return F.linear(query, self.in_proj_weight, bias).chunk(3, dim=-1)
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = bias.chunk(3) if bias is not None else (None, None, None)
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def _merged_mask(self, attn_mask, key_padding_mask, batch: int, seqlen_q: int, seqlen_k: int, extra: int):
        """PyTorch-convention masks -> one SDPA-style mask broadcastable to ``(B, H, L, S + extra)``."""
        n_heads = self.num_heads
        merged = None
        if attn_mask is not None:
            if attn_mask.dim() == 2 and tuple(attn_mask.shape) == (seqlen_q, seqlen_k):
                attn_mask = attn_mask.view(1, 1, seqlen_q, seqlen_k)
            elif attn_mask.dim() == 3 and tuple(attn_mask.shape) == (batch * n_heads, seqlen_q, seqlen_k):
                attn_mask = attn_mask.view(batch, n_heads, seqlen_q, seqlen_k)
            else:
                _fail("attn_mask", f"shape ({seqlen_q}, {seqlen_k}) or ({batch * n_heads}, {seqlen_q}, {seqlen_k})",
                      tuple(attn_mask.shape))
            merged = _keep_or_bias(attn_mask)
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (batch, seqlen_k):
                _fail("key_padding_mask", f"shape ({batch}, {seqlen_k})", tuple(key_padding_mask.shape))
            merged = _combine(merged, _keep_or_bias(key_padding_mask).view(batch, 1, 1, seqlen_k))
        if merged is not None and extra:
            merged = F.pad(merged, (0, extra), value=True if merged.dtype == torch.bool else 0.0)
        return merged
