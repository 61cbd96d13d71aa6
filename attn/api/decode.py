"""``flash_attn_with_kvcache``: incremental decode against a KV cache (flash-attn semantics).

Order of work: validate everything (shapes, dtypes, devices, then index contents with one
device->host transfer) and pick the backend; only then append the new ``k``/``v`` into the
caller's cache; then attend. A refused call leaves the cache untouched.
"""
from __future__ import annotations

from typing import Optional

import torch

from attn.api.call import used_options
from attn.api.flash import flash_spec
from attn.backends import registry
from attn.core import cache_layout
from attn.core import validation as V


def flash_attn_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: Optional[torch.Tensor] = None,
    v: Optional[torch.Tensor] = None,
    rotary_cos: Optional[torch.Tensor] = None,
    rotary_sin: Optional[torch.Tensor] = None,
    cache_seqlens=None,
    cache_batch_idx: Optional[torch.Tensor] = None,
    cache_leftpad: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    alibi_slopes: Optional[torch.Tensor] = None,
    num_splits: int = 0,
    return_softmax_lse: bool = False,
    *,
    backend: Optional[str] = None,
):
    """Attention of new queries against a KV cache, appending new keys/values first.

    flash-attn 2.x's ``flash_attn_with_kvcache``: if ``k``/``v`` are given they are written into
    the caller's cache in place, at positions ``cache_seqlens[b] .. cache_seqlens[b] + S_new - 1``
    of each sequence ``b``; then ``q`` attends to the first ``L_b = cache_seqlens[b] + S_new``
    keys of its sequence. ``cache_seqlens`` itself is not updated (the caller advances it).
    The fused backends split the keys across programs and merge the partial results by their
    LSE (split-KV, as in Flash-Decoding, Dao et al. 2023). Everything is validated and the
    backend is chosen before anything is written: a call refused by validation or backend
    selection leaves the cache untouched.

    Masking is bottom-right aligned per sequence: query ``i`` sits at key position
    ``i + L_b - Sq``, so with ``causal=True`` it sees keys ``j <= i + L_b - Sq`` (speculative
    verification of ``Sq`` drafted tokens is a causal call with ``Sq > 1``). A row that sees no
    key outputs 0 with ``lse = -inf``. Not differentiable: a call whose ``q``, ``k`` or ``v``
    requires grad (with grad mode on) is refused.

    Args:
        q: ``(B, Sq, H, D)`` queries, float16, bfloat16 or float32, ``B, Sq >= 0`` (an empty
            ``q`` gives an empty output after the append, without a kernel launch),
            ``1 <= D <= 256``, last dim contiguous.
        k_cache: Keys, same dtype and device as ``q``, last dim contiguous. Contiguous layout
            ``(B_cache, S_max, Hkv, D)`` (``B_cache == B`` unless ``cache_batch_idx`` is given),
            or paged layout ``(num_blocks, page_size, Hkv, D)`` when ``block_table`` is given
            (any ``page_size >= 1``, vLLM's PagedAttention layout). ``H % Hkv == 0``.
        v_cache: Values, the same shape, dtype and device as ``k_cache``, last dim contiguous.
        k: Optional new keys ``(B, S_new, Hkv, D)`` (``S_new >= 1``) to append before
            attending; same dtype/device as ``q``. Default None (attend to the cache only).
        v: Optional new values, the same shape as ``k``; given if and only if ``k`` is.
        rotary_cos: Not supported (must be None): apply rotary embeddings to ``q``/``k``
            before the call.
        rotary_sin: Not supported (must be None).
        cache_seqlens: Keys already in the cache per sequence, before the append: an int (the
            same for every sequence, in ``[0, capacity]``) or an int32 ``(B,)`` tensor on
            ``q``'s device. Default None: the whole cache (``capacity`` keys) holds keys, as in
            flash-attn, which leaves no room to append ``k``/``v``. ``capacity`` is ``S_max``
            for a contiguous cache and ``max_blocks * page_size`` for a paged one; every
            ``cache_seqlens[b] + S_new`` must be ``<= capacity``.
        cache_batch_idx: Optional int32 ``(B,)`` on ``q``'s device: the cache row
            (``[0, B_cache)``) of each sequence; contiguous caches only. Indices must be
            distinct when ``k``/``v`` are appended. Default None: row ``b`` for sequence ``b``.
        cache_leftpad: Not supported (must be None): pass left-padded sequences' true lengths
            in ``cache_seqlens``.
        block_table: Optional int32 ``(B, max_blocks)`` on ``q``'s device, ``max_blocks >= 1``:
            page ``n`` of sequence ``b`` is pool block ``block_table[b, n]``, which must be in
            ``[0, num_blocks)`` for every page the sequence uses. Entries past the pages in use
            are never read. Default None: contiguous cache.
        softmax_scale: Multiplier of ``q @ k^T``. Default ``None`` means ``1 / sqrt(D)``. A finite
            number: a Python or numpy int or float, or a 0-d tensor that does not require grad.
        causal: Causal mask, bottom-right aligned (see above). Default False. Read by truth
            value, as flash-attn reads its flags (also ``rotary_interleaved`` and
            ``return_softmax_lse``). Implies ``window_size[1] = 0``.
        window_size: ``(left, right)`` sliding window around the aligned position: a tuple or
            list of two ints (Python or numpy ints, or 0-d integer tensors) or a 1-D integer
            tensor of two; each side >= 0, or negative for unbounded (flash-attn's reading).
            Default ``(-1, -1)``.
        softcap: Gemma-2 logit soft-capping ``softcap * tanh(s / softcap)``; a finite
            number >= 0 in the forms ``softmax_scale`` takes, default 0.0 (off).
        rotary_interleaved: Accepted for flash-attn compatibility; unused (no rotary support).
            Default True.
        alibi_slopes: Optional float32 ``(H,)`` or ``(B, H)`` on ``q``'s device; adds
            ``-slope * |i + L_b - Sq - j|`` (ALiBi, Press et al. 2022, flash-attn's convention).
        num_splits: Number of key splits for the split-KV kernels, an int >= 0 (a Python or
            numpy int, or a 0-d integer tensor). 0 (default)
            picks by wave efficiency from the shapes only (never from the data), so results
            are deterministic for a fixed configuration; 1 never splits (bitwise reproducible);
            ``n`` splits the keys ``n`` ways, capped at the number of key tiles. Ignored by the
            "reference" backend.
        return_softmax_lse: If True, also return the log-sum-exp. Default False.
        backend: Keyword-only. ``None`` (default) or ``"auto"``: the block default set by
            :func:`attn.use_backend` if any, else picked per call by
            :mod:`attn.backends.registry` — on CUDA tensors the first of "cuda", "triton",
            "torch", "reference" (on CPU tensors "cpu", "torch", "reference") that is available
            and supports every option of the call ("torch" has no decode, so it is skipped). Or
            one of ``"triton"``, ``"cuda"``, ``"cuda-sim"``, ``"cpu"``, ``"reference"`` (and
            ``"torch"``, which raises ``NotImplementedError`` here);
            :func:`attn.available_backends` lists which work here.

    Returns:
        ``out (B, Sq, H, D)`` in ``q``'s dtype; or, with ``return_softmax_lse=True``, a tuple
        ``(out, lse)`` with ``lse`` float32 ``(B, H, Sq)``, natural log, ``-inf`` for rows that
        see no key.

    Raises:
        TypeError: a tensor argument is not a tensor or has the wrong dtype (``q`` not
            float16/bfloat16/float32; caches, ``k`` or ``v`` not ``q``'s dtype;
            ``cache_seqlens``, ``cache_batch_idx`` or ``block_table`` not int32;
            ``alibi_slopes`` not float32); ``cache_seqlens`` is neither an int nor a tensor;
            ``num_splits``, ``softmax_scale``, ``softcap`` or ``window_size`` has the wrong type
            (see :func:`attn.flash_attn_func`); a flag has no truth value.
        ValueError: a wrong shape (ranks, batch, head dim, head counts, ``H % Hkv != 0``,
            ``D`` outside ``1..256``, a non-contiguous last dim, ``v_cache`` shape differs from
            ``k_cache``'s, ``k`` heads differ from the cache's, index tensors not ``(B,)`` /
            ``(B, max_blocks)``, contiguous cache with ``B_cache != B`` and no
            ``cache_batch_idx``); only one of ``k``/``v`` given; ``cache_batch_idx`` together
            with ``block_table``; a tensor not on ``q``'s device, or a named backend that does
            not run on that device type; a wrong value (``num_splits < 0``, non-finite
            ``softmax_scale``, negative ``softcap``);
            index contents out of range (``cache_seqlens < 0``, ``cache_seqlens + S_new >
            capacity``, ``cache_batch_idx`` outside ``[0, B_cache)`` or repeated when
            appending, a page in use outside ``[0, num_blocks)`` — checked in eager mode with one
            device-to-host transfer, skipped under ``torch.compile``); or ``backend`` is not a
            known name, "auto" or None.
        NotImplementedError: ``rotary_cos``, ``rotary_sin`` or ``cache_leftpad`` is given;
            ``q``, ``k``, ``v`` or ``alibi_slopes`` requires grad or carries a forward-mode
            tangent (``torch.func.jvp``); the named backend cannot honour an option (the message names
            the backends that can); under "auto" no backend can run the call. The "cuda" and
            "cuda-sim" backends also refuse float32, head dims other than 32/64/128/256 and
            caches that are not 16-byte aligned — at launch, after ``k``/``v`` were appended.
        RuntimeError: an explicitly requested backend is unavailable here.
    """
    fn = "flash_attn_with_kvcache"
    for name, value in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin), ("cache_leftpad", cache_leftpad)):
        if value is not None:
            raise NotImplementedError(
                f"{fn}: option '{name}' is not supported by any backend yet; apply rotary embeddings to "
                "q/k before the call and pass left-padded sequences' true lengths in 'cache_seqlens'")
    cache_seqlens, cache_batch_idx, block_table, capacity = V.check_kvcache_inputs(
        fn, q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table)
    num_splits = V.check_num_splits(fn, num_splits)
    V.check_flag(fn, "rotary_interleaved", rotary_interleaved)
    return_softmax_lse = V.check_flag(fn, "return_softmax_lse", return_softmax_lse)
    spec = flash_spec(fn, q, softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap,
                      alibi_slopes=alibi_slopes, need_lse=return_softmax_lse)
    impl = registry.select(fn, backend, q.device.type, "decode", used_options(spec, q, k, v))
    new_len = 0 if k is None else k.shape[1]
    batch, seqlen_q, n_heads, _ = q.shape
    if batch > 0 and not torch.compiler.is_compiling():  # data-dependent: one device->host transfer
        V.check_kvcache_contents(fn, cache_seqlens, new_len, capacity, k_cache.shape[0], cache_batch_idx,
                                 block_table, k_cache.shape[1])

    if k is not None:
        cache_layout.append(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table)
    if batch == 0 or seqlen_q == 0:  # nothing to attend: no kernel launch (as for empty forward calls)
        out, lse = q.new_zeros(q.shape), q.new_zeros((batch, n_heads, seqlen_q), dtype=torch.float32)
        return (out, lse) if return_softmax_lse else out
    seqlens_k = cache_seqlens + new_len if new_len else cache_seqlens
    out, lse = impl.decode(q, k_cache, v_cache, seqlens_k, cache_batch_idx, block_table, spec, num_splits)
    return (out, lse) if return_softmax_lse else out
