"""``flash_attn_func``: attention with flash-attn 2.x's signature and semantics."""
from __future__ import annotations

from typing import Optional

import torch

from attn.api.call import run_forward
from attn.core import validation as V
from attn.core.spec import AttentionSpec


def flash_spec(fn: str, q: torch.Tensor, *, softmax_scale, causal, window_size, softcap, alibi_slopes,
               need_lse: bool, deterministic: bool = False) -> AttentionSpec:
    """Validates flash-attn style options (bottom-right causal) into an AttentionSpec."""
    left, right = V.check_window(fn, window_size)
    causal = V.check_flag(fn, "causal", causal)
    return AttentionSpec(
        softmax_scale=V.check_scale(fn, "softmax_scale", softmax_scale, q.shape[-1]),
        causal=causal,
        window_left=left,
        window_right=0 if causal else right,
        bottom_right=True,
        softcap=V.check_softcap(fn, softcap),
        alibi_slopes=V.check_alibi(fn, alibi_slopes, q),
        need_lse=need_lse,
        deterministic=V.check_flag(fn, "deterministic", deterministic),
    )


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[torch.Tensor] = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    *,
    backend: Optional[str] = None,
):
    """Attention with flash-attn 2.x's ``flash_attn_func`` signature and semantics.

    Computes ``softmax(scale * q @ k^T [softcapped] [+ ALiBi] [masked]) @ v`` per head, softmax
    and accumulation in fp32, output in the input dtype. The fused backends use the
    FlashAttention-2 (Dao 2023) online softmax and never materialize the ``(Sq, Sk)`` scores.
    Grouped-/multi-query attention: query head ``h`` reads kv head ``h // (H // Hkv)``; the fused
    backends never expand K/V.

    Masking is flash-attn's, **bottom-right aligned**: query ``i`` sits at key position
    ``i + Sk - Sq``. With ``causal=True`` it sees keys ``j <= i + Sk - Sq``; with a window
    ``(left, right)`` it sees ``i + Sk - Sq - left <= j <= i + Sk - Sq + right``. A query row that
    sees no key (e.g. causal with ``Sq > Sk``) outputs 0 and has ``lse = -inf``, never NaN; NaN
    inputs propagate.

    Differentiable w.r.t. ``q``, ``k``, ``v`` and ``alibi_slopes`` on the backends with a
    backward ("triton", "cpu", "torch", "reference"; not "cuda"/"cuda-sim"), through ``out`` and
    ``lse``. Forward-mode AD (``torch.func.jvp``) runs on "reference" only ("auto" picks it).
    The Triton backward uses no atomics, so it is deterministic whatever ``deterministic`` says.
    Empty inputs (``B``, ``Sq`` or ``Sk`` = 0) give an empty output, or zeros with
    ``lse = -inf`` when ``Sk = 0``, as PyTorch does, without a kernel launch.

    Args:
        q: ``(B, Sq, H, D)`` queries, float16, bfloat16 or float32, ``1 <= D <= 256``,
            ``B, Sq >= 0``. Any strides except that the last dim must be contiguous (stride 1).
        k: ``(B, Sk, Hkv, D)`` keys, same dtype and device as ``q``, ``Sk >= 0``,
            ``H % Hkv == 0``, last dim contiguous.
        v: ``(B, Sk, Hkv, D)`` values, the same shape as ``k``, same dtype and device as ``q``,
            last dim contiguous.
        dropout_p: Dropout probability in ``[0, 1)``. Default 0.0. No backend implements
            dropout yet, so any value > 0 raises ``NotImplementedError``.
        softmax_scale: Multiplier of ``q @ k^T`` before the softmax. Default ``None`` means
            ``1 / sqrt(D)``. A finite number: a Python or numpy int or float, or a 0-d tensor
            that does not require grad (read once on the host), as flash-attn takes it.
        causal: Apply a causal mask aligned bottom-right (flash-attn >= 2.1 convention).
            Default False. Read by truth value, as flash-attn reads its flags (also
            ``deterministic`` and ``return_attn_probs``). Implies ``window_size[1] = 0``.
        window_size: ``(left, right)`` sliding-window (local) attention in keys on either side
            of the query's aligned position: a tuple or list of two ints (Python or numpy ints,
            or 0-d integer tensors) or a 1-D integer tensor of two. Each side is >= 0, or
            negative for unbounded (as in flash-attn, every negative value means -1). Default
            ``(-1, -1)``: no window (Mistral-style sliding window is ``(w, 0)`` with
            ``causal=True``).
        softcap: Logit soft-capping as in Gemma-2 (and flash-attn 2.6): scores become
            ``softcap * tanh(scale * q.k / softcap)`` before ALiBi and masking. A finite
            number >= 0 in the forms ``softmax_scale`` takes; default 0.0 disables it.
        alibi_slopes: Optional float32 ``(H,)`` or ``(B, H)`` per-head slopes on ``q``'s
            device. Adds ``-slope * |i + Sk - Sq - j|`` to the scores (ALiBi, Press et al.
            2022, with flash-attn's bias convention). Default None. Gets a gradient when it
            requires grad (flash-attn gives none).
        deterministic: Accepted for flash-attn compatibility. Default False. Every backward
            here is deterministic already, so it changes nothing.
        return_attn_probs: If True, also return the log-sum-exp of each query row. Default
            False. Unlike flash-attn, the attention probabilities are never returned (the third
            element is always None).
        backend: Keyword-only. Which implementation runs the call:

            * ``None`` (default) or ``"auto"``: the block default set by
              :func:`attn.use_backend` if any, else picked per call by
              :mod:`attn.backends.registry`. On CUDA tensors the order is "cuda", "triton",
              "torch", "reference"; on CPU tensors "cpu", "torch", "reference". The first
              backend that is available here and supports every option the call uses (causal,
              window, softcap, ALiBi, LSE output, backward when an input requires grad) is
              used. The Triton interpreter and "cuda-sim" are never picked automatically.
            * a name: ``"triton"``, ``"cuda"``, ``"cuda-sim"``, ``"cpu"``, ``"torch"`` or
              ``"reference"``. :func:`attn.available_backends` lists which work here and why
              the others don't.

    Returns:
        ``out`` of shape ``(B, Sq, H, D)`` in ``q``'s dtype; or, with
        ``return_attn_probs=True``, a tuple ``(out, lse, None)`` where ``lse`` is float32
        ``(B, H, Sq)``, the natural-log log-sum-exp of the scaled (softcapped, biased) scores of
        each row (``-inf`` for a row that sees no key).

    Raises:
        TypeError: ``q``, ``k`` or ``v`` is not a tensor or has an unsupported dtype, ``k``/``v``
            dtype differs from ``q``'s, ``alibi_slopes`` is not float32, ``softmax_scale``,
            ``softcap``, ``dropout_p`` or ``window_size`` has the wrong type (a bool, a tensor
            that is not 0-d or requires grad, a float where an int is needed, a
            ``window_size`` that is not two values), or a flag has no truth value (e.g. a
            tensor of several elements).
        ValueError: a wrong shape (not 4-D, mismatched batch or head
            dim, ``k``/``v`` shapes differ, ``H % Hkv != 0``, ``D`` outside ``1..256``, a
            non-contiguous last dim, ``alibi_slopes`` not ``(H,)``/``(B, H)``); a wrong device
            (``k``, ``v`` or ``alibi_slopes`` not on ``q``'s device, or a named backend that
            does not run on that device type); a wrong value (non-finite ``softmax_scale``, negative or non-finite ``softcap``, ``dropout_p``
            outside ``[0, 1)``); or ``backend`` is not a known name, "auto" or None.
        NotImplementedError: ``dropout_p > 0``; or the named backend cannot honour an option of
            the call (the message names the backends that can, e.g. "cuda" has no backward and
            no float32, only "reference" takes forward-mode tangents, option "forward_ad"); or under "auto" no backend in the order can run the call (the message
            says why each was skipped).
        RuntimeError: an explicitly requested backend is unavailable here (extension not built,
            no CUDA device, Triton on CPU tensors without ``TRITON_INTERPRET=1``, ...).
    """
    fn = "flash_attn_func"
    V.check_attention_inputs(fn, q, k, v)
    if V.check_dropout(fn, "dropout_p", dropout_p) > 0:
        raise NotImplementedError(f"{fn}: option 'dropout_p' > 0 is not supported by any backend yet")
    return_attn_probs = V.check_flag(fn, "return_attn_probs", return_attn_probs)
    spec = flash_spec(fn, q, softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap,
                      alibi_slopes=alibi_slopes, need_lse=return_attn_probs, deterministic=deterministic)
    out, lse = run_forward(fn, q, k, v, spec, backend)
    return (out, lse, None) if return_attn_probs else out
