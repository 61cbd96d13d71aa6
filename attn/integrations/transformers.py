"""Hugging Face ``transformers`` integration: ``attn_implementation="attn"`` (attn picks the backend
per call) or ``"attn_<backend>"`` (pinned: ``"attn_triton"``, ``"attn_cpu"``, ``"attn_cuda"``, ...).

:func:`register` adds two entries under one name, both through the interfaces' ``register``
class methods (assigning into the mapping only changes a local copy and silently does nothing):

* an attention function in ``transformers.AttentionInterface``;
* a mask function in ``transformers.AttentionMaskInterface``. Without one, transformers treats
  the name as a backend that builds its own masks and hands the attention function
  ``attention_mask=None`` even for padded batches and sliding windows.

The mask function builds PyTorch-SDPA masks (bool, True = attend), and returns ``None`` where
the mask is plain causal, so unpadded prefill and decode run the fused kernels without a mask.
The attention function picks a path per call:

* no mask, no bias and one query against a cache (decode), when the backend has a decode kernel
  for the call's options: the split-KV decode kernel (``flash_attn_with_kvcache``);
* otherwise the forward kernel, with everything the call asks for in one attention spec
  (docs/design.md §1): causal and sliding window (bottom-right, flash-attn's alignment) when
  there is no mask, else the mask (it already encodes causality, padding and the window),
  plus softcap (Gemma-2) and an additive float ``position_bias`` (T5).

Keyword arguments are read for what they mean to the attention math (:data:`_REFUSED_KWARGS`);
every other one is ignored, so a new transformers release that passes new bookkeeping
arguments keeps working.

Models whose attention layers never call the AttentionInterface (GPT-Neo, Falcon, Bloom in
transformers 5.24: they compute attention in their own code) would silently run without attn;
:func:`register` therefore makes transformers refuse attn's names for them when the model is
built or ``set_attn_implementation`` is called (transformers has no per-implementation hook,
so this wraps two ``PreTrainedModel`` methods and asks transformers' own test,
``_can_set_attn_implementation``).

Checked with transformers 5.24.0. Names containing "flash" are refused: transformers treats
them as hub kernels to download.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from attn.api import available_backends, flash_attn_with_kvcache
from attn.api.call import run_forward
from attn.core import validation as V
from attn.core.spec import AttentionSpec

DEFAULT_NAME = "attn"

_FN = "attn.integrations.transformers.attention_forward"

# Keyword arguments that change the attention math and that attn cannot honour, with why.
# Every other unknown keyword (position_ids, use_cache, output_router_logits, deterministic,
# output_hidden_states, indices, ...) is bookkeeping for other layers and is ignored.
_REFUSED_KWARGS = {
    "output_attentions": "the attention weights are never materialized",
    "s_aux": "attention sinks are not implemented",
    "sinks": "attention sinks are not implemented",
    "head_mask": "per-head scaling of the attention weights is not implemented",
}
# Packed sequences: without a mask, these are the only record of where sequences start.
_PACKING_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k")

# Backends whose backward gives an additive float bias its gradient (T5 learns position_bias);
# the cpu and triton backends are getting it under issue 15.
_BIAS_GRAD_BACKENDS = ("torch", "reference")

# Every name registered here.
_REGISTERED: set[str] = set()


def _refuse(name: str, why: str) -> None:
    raise NotImplementedError(
        f"{_FN}: option '{name}' is not supported ({why}); use attn_implementation='eager' or 'sdpa' for this model"
    )


def _check_kwargs(module: torch.nn.Module, dropout: float, attention_mask, kwargs: dict) -> None:
    for name, why in _REFUSED_KWARGS.items():
        if kwargs.get(name) is not None and kwargs.get(name) is not False:
            _refuse(name, why)
    if attention_mask is None:
        for name in _PACKING_KWARGS:
            if kwargs.get(name) is not None:
                _refuse(name, "packed sequences without a mask would attend across sequence boundaries")
    if dropout and module.training:
        raise NotImplementedError(
            f"{_FN}: attention dropout (dropout={dropout} in {type(module).__name__}, training) is not supported by "
            f"any attn backend yet; set the config's attention dropout to 0.0, call model.eval(), or use "
            f"attn_implementation='eager' or 'sdpa' for training"
        )


def _additive(attention_mask: Optional[torch.Tensor], position_bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """One additive mask from a bool/float mask and a float bias (either may be None)."""
    if position_bias is None or attention_mask is None:
        return position_bias if attention_mask is None else attention_mask
    if attention_mask.dtype == torch.bool:
        attention_mask = torch.zeros(attention_mask.shape, device=attention_mask.device).masked_fill(
            ~attention_mask, float("-inf"))
    return position_bias.float() + attention_mask


def _decode_supported(backend: Optional[str], options: set[str]) -> bool:
    """Whether the decode kernel can serve a call: always under auto (the forward is the fallback
    inside attn's own selection as well), for a pinned backend only if it has decode with these options."""
    if backend is None:
        return True
    capabilities = available_backends()[backend].capabilities
    return "decode" in capabilities and options <= capabilities["decode"]


def _bias_backend(backend: Optional[str], bias: Optional[torch.Tensor], softcap: float) -> Optional[str]:
    """The backend for a call whose bias needs a gradient: one that gives it (see _BIAS_GRAD_BACKENDS)."""
    if bias is None or not (bias.requires_grad and torch.is_grad_enabled()):
        return backend
    if backend is None:
        return "reference" if softcap else "torch"
    if backend not in _BIAS_GRAD_BACKENDS:
        raise NotImplementedError(
            f"{_FN}: option 'position_bias' with a gradient is not supported by backend '{backend}'; "
            f"backends that support it: {list(_BIAS_GRAD_BACKENDS)}"
        )
    return backend


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    sliding_window: Optional[int] = None,
    softcap: Optional[float] = None,
    position_bias: Optional[torch.Tensor] = None,
    *,
    backend: Optional[str] = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function protocol on attn's kernels.

    Args:
        module: The calling attention layer; its ``is_causal`` (default True) applies when
            ``is_causal`` is None, and ``training`` decides whether ``dropout`` matters.
        query: ``(B, H, Lq, D)``, float16/bfloat16/float32, any strides with a contiguous last dim.
        key, value: ``(B, Hkv, Lk, D)``, already holding the cache, ``H % Hkv == 0``.
        attention_mask: ``None`` (plain causal, or none for a non-causal layer), a bool mask
            broadcastable to ``(B, H, Lq, Lk)`` (True = attend, from this integration's mask
            function), or an additive float mask.
        dropout: Attention dropout probability. Ignored unless ``module.training``; > 0 while
            training raises ``NotImplementedError``.
        scaling: Multiplier of ``q·k``; None means ``1/sqrt(D)``.
        is_causal: Overrides ``module.is_causal``.
        sliding_window: Keys visible to a query, itself included (Mistral's convention), when
            there is no mask; None for unbounded.
        softcap: Logit soft-capping (Gemma-2); None or 0 disables it.
        position_bias: Additive float bias broadcastable to ``(B, H, Lq, Lk)`` (T5's relative
            position bias); differentiable.
        backend: attn backend name, or None for attn's per-call choice.
        **kwargs: Ignored unless they change the math; those attn cannot honour raise.

    Returns:
        ``(out (B, Lq, H, D), None)``: attention weights are never materialized.

    Raises:
        NotImplementedError: dropout while training, ``output_attentions=True``, attention
            sinks (``s_aux``/``sinks``), ``head_mask``, packed-sequence lengths without a mask,
            or a pinned backend lacking an option of the call (the message names those that
            have it).
        TypeError, ValueError: malformed tensors or options (see :func:`attn.flash_attn_func`).
    """
    _check_kwargs(module, dropout, attention_mask, kwargs)
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    seqlen_q, seqlen_k = query.shape[2], key.shape[2]
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (B, L, H, D) views
    softcap = softcap or 0.0
    if attention_mask is None and causal and 1 < seqlen_q < seqlen_k:
        # Several queries against a cache come without a mask only when the cache was empty (an
        # empty static cache, top-left causal): the keys past Lq are unwritten slots.
        k, v, seqlen_k = k[:, :seqlen_q], v[:, :seqlen_q], seqlen_q
        if position_bias is not None:
            position_bias = position_bias[..., :seqlen_q]
    window_left = sliding_window - 1 if attention_mask is None and causal and sliding_window else -1
    bias = _additive(attention_mask, position_bias)

    V.check_attention_inputs(_FN, q, k, v, names=("query", "key", "value"))
    batch, _, n_heads, head_dim = q.shape
    causal = causal and attention_mask is None
    spec = AttentionSpec(
        softmax_scale=V.check_scale(_FN, "scaling", scaling, head_dim),
        causal=causal, window_left=window_left, window_right=0 if causal else -1, bottom_right=True,
        softcap=V.check_softcap(_FN, softcap),
        bias=V.check_attn_mask(_FN, bias, (batch, n_heads, seqlen_q, seqlen_k), q),
    )
    if causal and bias is None and seqlen_q == 1 < seqlen_k and _decode_supported(backend, set(spec.options_in_use())):
        out = flash_attn_with_kvcache(q, k, v, softmax_scale=spec.softmax_scale, causal=True,
                                      window_size=spec.window_size, softcap=spec.softcap, backend=backend)
        return out, None
    out, _ = run_forward(_FN, q, k, v, spec, _bias_backend(backend, bias, spec.softcap))
    return out, None


def mask_function(*args, **kwargs) -> Optional[torch.Tensor]:
    """transformers' mask-function protocol: SDPA's boolean masks (True = attend), ``None``
    where the pattern is plain causal (see :func:`attention_forward` for how ``None`` is read)."""
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def _requested_names(attn_implementation) -> set:
    """Every implementation name in a ``str`` or (nested) per-sub-config ``dict`` request."""
    if isinstance(attn_implementation, dict):
        return set().union(*(_requested_names(value) for value in attn_implementation.values()))
    return {attn_implementation}


def _check_served(model, attn_implementation) -> None:
    """Refuses attn's names for a model class whose attention layers never call the
    AttentionInterface: attn would be accepted and never run."""
    names = sorted(n for n in _requested_names(attn_implementation) if n in _REGISTERED)
    if names and not type(model)._can_set_attn_implementation():
        raise ValueError(
            f"{type(model).__name__}: attn_implementation='{names[0]}' expected a model whose attention layers "
            f"call transformers' AttentionInterface, got one that computes attention in its own code (attn would "
            f"never run); use attn_implementation='eager' or 'sdpa'"
        )


def _install_model_check() -> None:
    """Wraps ``PreTrainedModel.get_correct_attn_implementation`` (run when any model or sub-model
    is built) and ``set_attn_implementation`` (which only warns for such models) once."""
    from transformers import PreTrainedModel

    if getattr(PreTrainedModel.set_attn_implementation, "_attn_model_check", False):
        return
    get_correct, set_impl = PreTrainedModel.get_correct_attn_implementation, PreTrainedModel.set_attn_implementation

    @functools.wraps(get_correct)
    def get_correct_attn_implementation(self, requested_attention, *args, **kwargs):
        _check_served(self, requested_attention)
        return get_correct(self, requested_attention, *args, **kwargs)

    @functools.wraps(set_impl)
    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        for submodel in self.modules():
            if isinstance(submodel, PreTrainedModel):
                _check_served(submodel, attn_implementation)
        return set_impl(self, attn_implementation, *args, **kwargs)

    set_attn_implementation._attn_model_check = True
    PreTrainedModel.get_correct_attn_implementation = get_correct_attn_implementation
    PreTrainedModel.set_attn_implementation = set_attn_implementation


def register(name: Optional[str] = None, *, backend: Optional[str] = None) -> str:
    """Registers attn as ``attn_implementation=name`` for every transformers model; returns ``name``.

    Use it with ``AutoModelForCausalLM.from_pretrained(..., attn_implementation=name)``,
    ``from_config(..., attn_implementation=name)`` or ``model.set_attn_implementation(name)``.
    Models whose attention layers do not go through transformers' AttentionInterface (GPT-Neo,
    Falcon, Bloom) are then refused with a ``ValueError`` when built or switched to ``name``.

    Args:
        name: The implementation name. Default None: ``"attn"`` without ``backend``, else
            ``"attn_<backend>"`` with ``-`` replaced by ``_`` (``"attn_triton"``,
            ``"attn_cpu"``, ``"attn_cuda_sim"``, ...). Must not contain "flash".
        backend: Pin an attn backend (a name from :func:`attn.available_backends`). Default
            None: attn picks per call (:func:`attn.use_backend` still applies). A pinned
            backend serves single-token decode with its decode kernel only if it has one for
            the call's options, else with its forward kernel; a call it cannot run raises
            ``NotImplementedError`` naming the backends that can.

    Returns:
        The registered name.

    Raises:
        TypeError: ``name`` is not a non-empty str.
        ValueError: ``name`` contains "flash" or is one of transformers' own implementations;
            ``backend`` is not an attn backend name.
        ImportError: transformers is not installed.
    """
    fn = "attn.integrations.transformers.register"
    known = available_backends()
    if backend is not None and backend not in known:
        raise ValueError(f"{fn}: argument 'backend' expected one of {sorted(known)} or None, got {backend!r}")
    if name is None:
        name = DEFAULT_NAME if backend is None else f"{DEFAULT_NAME}_{backend.replace('-', '_')}"
    if not isinstance(name, str) or not name:
        raise TypeError(f"{fn}: argument 'name' expected a non-empty str, got {name!r}")
    try:
        from transformers import AttentionInterface, AttentionMaskInterface
    except ImportError as exc:
        raise ImportError(f"{fn}: needs the 'transformers' package ({exc})") from exc
    if "flash" in name.lower():
        raise ValueError(
            f"{fn}: argument 'name' expected a name without 'flash' (transformers loads such names "
            f"as hub kernels), got {name!r}"
        )
    builtin = set(AttentionInterface._global_mapping) | set(AttentionMaskInterface._global_mapping) | {"eager"}
    if name in builtin and name not in _REGISTERED:
        raise ValueError(f"{fn}: argument 'name' expected a new name, got {name!r}, transformers' own")

    def attention(module, query, key, value, attention_mask, **kwargs):
        return attention_forward(module, query, key, value, attention_mask, backend=backend, **kwargs)

    _install_model_check()
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, mask_function)
    _REGISTERED.add(name)
    return name
