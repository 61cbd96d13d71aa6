"""Input validation shared by every public function.

Each check raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong value or shape)
with a message that names the function, the argument, what was expected and what was given.
Nothing is written anywhere before these checks pass.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def _fail(fn: str, name: str, expected: str, actual: object, exc: type = ValueError):
    raise exc(f"{fn}: argument '{name}' expected {expected}, got {actual}")


def _describe(t: torch.Tensor) -> str:
    return f"tensor of shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def as_number(value: object, integral: bool = False) -> Optional[Union[int, float]]:
    """``value`` as a Python int (``integral=True``) or float, or None when it is not one.

    Accepts the scalar forms PyTorch's and flash-attn's scalar arguments take: a Python int or
    float, a numpy integer or floating scalar, or a 0-d integer or floating tensor that does not
    require grad (its value is read with one device-to-host transfer). Bools, complex numbers,
    tensors of another rank and floats where an int is expected are not numbers here.
    """
    if isinstance(value, torch.Tensor):
        if (value.dim() != 0 or value.requires_grad or value.dtype == torch.bool or value.is_complex()
                or (integral and value.is_floating_point())):
            return None
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integral else numbers.Real):
        return None
    return int(value) if integral else float(value)


def _describe_value(value: object) -> str:
    if not isinstance(value, torch.Tensor):
        return repr(value)
    return _describe(value) + (", requires_grad=True" if value.requires_grad else "")


def check_int(fn: str, name: str, value: object, low: int, high: Optional[int] = None) -> int:
    """``value`` is an int (not a bool) with ``low <= value`` and, when given, ``value < high``."""
    expected = f"an int >= {low}" if high is None else f"an int in [{low}, {high})"
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(fn, name, expected, repr(value), TypeError)
    if value < low or (high is not None and value >= high):
        _fail(fn, name, expected, repr(value))
    return value


def check_num_splits(fn: str, num_splits: object) -> int:
    """flash-attn's ``num_splits``: an int >= 0 in any form :func:`as_number` takes."""
    expected = "an int >= 0 (0 = heuristic)"
    number = as_number(num_splits, integral=True)
    if number is None:
        _fail(fn, "num_splits", expected, _describe_value(num_splits), TypeError)
    if number < 0:
        _fail(fn, "num_splits", expected, number)
    return number


def check_flag(fn: str, name: str, value: object) -> bool:
    """``value``'s truth value, as flash-attn reads its flags (``bool(value)``)."""
    try:
        return bool(value)
    except (RuntimeError, TypeError, ValueError):
        _fail(fn, name, "a bool (or any value with a truth value)", _describe_value(value), TypeError)


def check_module_input(fn: str, name: str, t: torch.Tensor, weight: torch.Tensor) -> None:
    """``t`` feeds a projection whose parameter is ``weight``: the same device, and the same dtype
    unless autocast casts both."""
    if t.device != weight.device:
        _fail(fn, name, f"device {weight.device} (the module's parameters)", t.device)
    if t.dtype != weight.dtype and not torch.is_autocast_enabled(t.device.type):
        _fail(fn, name, f"dtype {weight.dtype} (the module's parameters)", t.dtype, TypeError)


def check_tensor(fn: str, name: str, t: object, *, rank: Optional[int] = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        _fail(fn, name, "a torch.Tensor", type(t).__name__, TypeError)
    if rank is not None and t.dim() != rank:
        _fail(fn, name, f"a {rank}-D tensor", f"{t.dim()}-D {_describe(t)}")
    return t


def check_attention_inputs(
    fn: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    names: Sequence[str] = ("q", "k", "v"),
    dims: str = "(B, S, H, D)",
    *,
    dtypes: Sequence[torch.dtype] = SUPPORTED_DTYPES,
    max_head_dim: Optional[int] = MAX_HEAD_DIM,
    value_head_dim: bool = False,
) -> None:
    """Checks q, k, v in kernel-native layout ``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)``;
    ``B``, ``Sq`` and ``Sk`` may be 0 (an empty problem, as in PyTorch).

    ``dtypes``, ``max_head_dim`` (None: unbounded) and ``value_head_dim`` (``v``'s last dim may
    differ from ``k``'s) widen the checks for :func:`attn.scaled_dot_product_attention`, whose
    extra cases are routed to the backends that take them (docs/design.md §2)."""
    qn, kn, vn = names
    for name, t in zip(names, (q, k, v)):
        check_tensor(fn, name, t, rank=4)
        if t.dtype not in dtypes:
            *first, last = (str(d).replace("torch.", "") for d in dtypes)
            _fail(fn, name, f"dtype {', '.join(first)} or {last}", t.dtype, TypeError)
    for name, t in ((kn, k), (vn, v)):
        if t.dtype != q.dtype:
            _fail(fn, name, f"the same dtype as '{qn}' ({q.dtype})", t.dtype, TypeError)
        if t.device != q.device:
            _fail(fn, name, f"the same device as '{qn}' ({q.device})", t.device)
    batch, seqlen_q, n_heads, head_dim = q.shape
    if k.shape[:3] != v.shape[:3] or (not value_head_dim and k.shape != v.shape):
        same = "batch, sequence and head dims" if value_head_dim else "shape"
        _fail(fn, vn, f"the same {same} as '{kn}' {tuple(k.shape)}", tuple(v.shape))
    if k.shape[0] != batch:
        _fail(fn, kn, f"batch size {batch} (from '{qn}') in {dims}", tuple(k.shape))
    if k.shape[3] != head_dim:
        _fail(fn, kn, f"head dim {head_dim} (from '{qn}') in {dims}", tuple(k.shape))
    if head_dim < 1 or (max_head_dim is not None and head_dim > max_head_dim):
        _fail(fn, qn, f"head dim in 1..{max_head_dim}" if max_head_dim else "head dim >= 1", head_dim)
    if v.shape[3] < 1:
        _fail(fn, vn, "head dim >= 1", v.shape[3])
    n_kv_heads = k.shape[2]
    if n_kv_heads < 1 or n_heads % n_kv_heads != 0:
        _fail(fn, kn, f"a number of heads dividing the {n_heads} heads of '{qn}'", n_kv_heads)
    for name, t in zip(names, (q, k, v)):
        if t.stride(-1) != 1 and t.shape[-1] > 1:
            _fail(fn, name, "a contiguous last dimension (stride 1)", f"stride {t.stride(-1)}")


def check_window(fn: str, window_size: object) -> tuple[int, int]:
    """``(left, right)`` from a tuple, list or numpy array of two ints or a 1-D integer tensor of two
    (what flash-attn indexes; elements in any form :func:`as_number` takes). As in flash-attn, every negative side
    means unbounded and becomes -1."""
    expected = "a pair of ints (left, right): a tuple, list, numpy array or 1-D integer tensor of 2"
    if isinstance(window_size, torch.Tensor):
        pair = list(window_size.unbind()) if window_size.dim() == 1 and window_size.numel() == 2 else []
    elif isinstance(window_size, Sequence) or hasattr(window_size, "__array__"):  # tuple, list, numpy array
        pair = list(window_size) if len(window_size) == 2 else []
    else:
        pair = []
    sides = [as_number(w, integral=True) for w in pair]
    if len(sides) != 2 or None in sides:
        _fail(fn, "window_size", expected, _describe_value(window_size), TypeError)
    left, right = sides
    return max(left, -1), max(right, -1)


def check_scale(fn: str, name: str, scale: object, head_dim: int) -> float:
    """A finite real number (any form :func:`as_number` takes); None means ``1 / sqrt(head_dim)``."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    return _check_real(fn, name, scale, "a finite float or None", math.isfinite)


def check_softcap(fn: str, softcap: object) -> float:
    return _check_real(fn, "softcap", softcap, "a finite float >= 0 (0 disables it)",
                       lambda x: math.isfinite(x) and x >= 0)


def check_dropout(fn: str, name: str, dropout_p: object) -> float:
    return _check_real(fn, name, dropout_p, "a probability in [0, 1)", lambda x: 0.0 <= x < 1.0)


def _check_real(fn: str, name: str, value: object, expected: str, valid) -> float:
    number = as_number(value)
    if number is None:
        _fail(fn, name, expected + " (a number, or a 0-d tensor that does not require grad)", _describe_value(value), TypeError)
    if not valid(number):
        _fail(fn, name, expected, number)
    return number


def check_alibi(fn: str, alibi_slopes: Optional[torch.Tensor], q: torch.Tensor, n_heads_axis: int = 2):
    if alibi_slopes is None:
        return None
    check_tensor(fn, "alibi_slopes", alibi_slopes)
    batch, n_heads = q.shape[0], q.shape[n_heads_axis]
    if alibi_slopes.dtype != torch.float32:
        _fail(fn, "alibi_slopes", "dtype float32", alibi_slopes.dtype, TypeError)
    if alibi_slopes.device != q.device:
        _fail(fn, "alibi_slopes", f"device {q.device}", alibi_slopes.device)
    if tuple(alibi_slopes.shape) not in ((n_heads,), (batch, n_heads)):
        _fail(fn, "alibi_slopes", f"shape ({n_heads},) or ({batch}, {n_heads})", tuple(alibi_slopes.shape))
    return alibi_slopes.reshape(-1, n_heads).expand(batch, n_heads).contiguous()


def check_attn_mask(
    fn: str, attn_mask: Optional[torch.Tensor], shape: tuple[int, ...], q: torch.Tensor
) -> Optional[torch.Tensor]:
    """Checks an SDPA-style mask and returns it as an additive bias of ``shape`` (``(B, H, Sq, Sk)``
    or ``(..., H, Sq, Sk)``): fp32, or fp64 for an fp64 mask.

    The result is an ``expand`` view (stride 0 on broadcast dims), never a copy of the
    broadcast shape.
    """
    if attn_mask is None:
        return None
    check_tensor(fn, "attn_mask", attn_mask)
    if attn_mask.device != q.device:
        _fail(fn, "attn_mask", f"device {q.device}", attn_mask.device)
    if attn_mask.dtype != torch.bool and not attn_mask.dtype.is_floating_point:
        _fail(fn, "attn_mask", "dtype bool or a float dtype", attn_mask.dtype, TypeError)
    if attn_mask.dim() > len(shape):
        _fail(fn, "attn_mask", f"at most {len(shape)} dims, broadcastable to {shape}", tuple(attn_mask.shape))
    padded = (1,) * (len(shape) - attn_mask.dim()) + tuple(attn_mask.shape)
    for got, want in zip(padded, shape):
        if got not in (1, want):
            _fail(fn, "attn_mask", f"a shape broadcastable to {shape}", tuple(attn_mask.shape))
    mask = attn_mask.reshape(padded)
    if mask.dtype == torch.bool:
        bias = torch.zeros(padded, dtype=torch.float32, device=mask.device)
        bias.masked_fill_(~mask, float("-inf"))
    else:
        bias = mask if mask.dtype == torch.float64 else mask.float()
    return bias.expand(shape)


def _check_index_tensor(fn: str, name: str, t: object, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """int32 only, as flash-attn: narrowing int64 would wrap values past 2**31 into valid-looking
    lengths and rows."""
    check_tensor(fn, name, t, rank=len(shape))
    if t.dtype != torch.int32:
        _fail(fn, name, "dtype int32", t.dtype, TypeError)
    if tuple(t.shape) != shape:
        _fail(fn, name, f"shape {shape}", tuple(t.shape))
    if t.device != device:
        _fail(fn, name, f"device {device} (from 'q')", t.device)
    return t.contiguous()


def check_kvcache_inputs(
    fn: str,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: Optional[torch.Tensor],
    v: Optional[torch.Tensor],
    cache_seqlens: object,
    cache_batch_idx: Optional[torch.Tensor],
    block_table: Optional[torch.Tensor],
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], int]:
    """Checks the shapes, dtypes and devices of a ``flash_attn_with_kvcache`` call.

    ``q (B, Sq, H, D)``; contiguous cache ``(B, S_max, Hkv, D)`` (``B_cache`` rows when
    ``cache_batch_idx`` picks them) or paged cache ``(num_blocks, page_size, Hkv, D)`` with
    ``block_table (B, max_blocks)``; new ``k, v (B, S_new, Hkv, D)``. Returns
    ``(cache_seqlens, cache_batch_idx, block_table, capacity)``: index tensors as contiguous
    int32 (``cache_seqlens=None`` means a full cache) ``(B,)``/``(B, max_blocks)`` and the longest sequence the cache can hold. Contents
    (lengths in range, pages inside the pool) are checked by :func:`check_kvcache_contents`.
    """
    check_attention_inputs(fn, q, q, q)
    batch, _, n_heads, head_dim = q.shape
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(fn, name, t, rank=4)
        if t.dtype != q.dtype:
            _fail(fn, name, f"the same dtype as 'q' ({q.dtype})", t.dtype, TypeError)
        if t.device != q.device:
            _fail(fn, name, f"the same device as 'q' ({q.device})", t.device)
        if t.stride(-1) != 1 and t.shape[-1] > 1:
            _fail(fn, name, "a contiguous last dimension (stride 1)", f"stride {t.stride(-1)}")
    if v_cache.shape != k_cache.shape:
        _fail(fn, "v_cache", f"the same shape as 'k_cache' {tuple(k_cache.shape)}", tuple(v_cache.shape))
    if (k_cache.shape[0] < 1 and batch > 0) or k_cache.shape[1] < 1:
        _fail(fn, "k_cache", "non-empty first two dims (B_cache, S_max) or (num_blocks, page_size)",
              tuple(k_cache.shape))
    if k_cache.shape[3] != head_dim:
        _fail(fn, "k_cache", f"head dim {head_dim} (from 'q') in its last dim", tuple(k_cache.shape))
    n_kv_heads = k_cache.shape[2]
    if n_kv_heads < 1 or n_heads % n_kv_heads != 0:
        _fail(fn, "k_cache", f"a number of heads dividing the {n_heads} heads of 'q'", n_kv_heads)
    if (k is None) != (v is None):
        _fail(fn, "v" if v is None else "k", "a tensor when 'k'/'v' is given (both or neither)", None)
    if k is not None:
        check_attention_inputs(fn, q, k, v, names=("q", "k", "v"))
        if k.shape[2] != k_cache.shape[2]:
            _fail(fn, "k", f"{k_cache.shape[2]} heads like 'k_cache' in (B, S_new, Hkv, D)", tuple(k.shape))
    if block_table is not None:
        if cache_batch_idx is not None:
            _fail(fn, "cache_batch_idx", "None with a paged cache (block_table maps sequences to pages)",
                  "a tensor")
        check_tensor(fn, "block_table", block_table, rank=2)
        block_table = _check_index_tensor(fn, "block_table", block_table, (batch, block_table.shape[1]), q.device)
        if block_table.shape[1] < 1:
            _fail(fn, "block_table", "at least one page per sequence", tuple(block_table.shape))
        capacity = block_table.shape[1] * k_cache.shape[1]
    else:
        if cache_batch_idx is not None:
            cache_batch_idx = _check_index_tensor(fn, "cache_batch_idx", cache_batch_idx, (batch,), q.device)
        elif k_cache.shape[0] != batch:
            _fail(fn, "k_cache", f"batch size {batch} (from 'q') in (B, S_max, Hkv, D), or pass 'cache_batch_idx'",
                  tuple(k_cache.shape))
        capacity = k_cache.shape[1]
    if cache_seqlens is None:  # flash-attn: the whole cache holds keys
        cache_seqlens = capacity
    if isinstance(cache_seqlens, int) and not isinstance(cache_seqlens, bool):
        if not 0 <= cache_seqlens <= capacity:  # before torch.full, which cannot hold every int
            holder = ("the cache's capacity" if block_table is None else
                      f"the capacity of 'block_table': {block_table.shape[1]} pages of {k_cache.shape[1]} keys")
            _fail(fn, "cache_seqlens", f"an int in [0, {capacity}] ({holder})", cache_seqlens)
        cache_seqlens = torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)
    elif isinstance(cache_seqlens, torch.Tensor):
        cache_seqlens = _check_index_tensor(fn, "cache_seqlens", cache_seqlens, (batch,), q.device)
    else:
        _fail(fn, "cache_seqlens", "an int or an int32 tensor of shape (B,)", type(cache_seqlens).__name__, TypeError)
    return cache_seqlens, cache_batch_idx, block_table, capacity


def check_kvcache_contents(
    fn: str,
    cache_seqlens: torch.Tensor,
    new_len: int,
    capacity: int,
    cache_rows: int,
    cache_batch_idx: Optional[torch.Tensor],
    block_table: Optional[torch.Tensor],
    page_size: int,
) -> None:
    """Checks index contents with one device->host transfer: ``0 <= cache_seqlens`` and
    ``cache_seqlens + new_len <= capacity`` (for a paged cache the error names ``block_table``,
    whose width sets the capacity); ``cache_batch_idx`` in ``[0, cache_rows)`` and, when
    appending, without repeats; every page a sequence uses (``n < cache_seqlens + new_len``)
    inside the pool ``[0, cache_rows)``."""
    seqlens_k = cache_seqlens.long() + new_len
    checks = [cache_seqlens.min() < 0, seqlens_k.max() > capacity]
    if cache_batch_idx is not None:
        checks += [(cache_batch_idx < 0).any() | (cache_batch_idx >= cache_rows).any()]
        if new_len > 0:
            checks += [torch.unique(cache_batch_idx).numel() != cache_batch_idx.numel()]
    if block_table is not None:
        used = torch.arange(block_table.shape[1], device=block_table.device).view(1, -1) * page_size
        used = used < seqlens_k.view(-1, 1)
        checks += [(used & ((block_table < 0) | (block_table >= cache_rows))).any()]
    bad = torch.stack([torch.as_tensor(c, device=cache_seqlens.device) for c in checks]).tolist()
    if bad[0]:
        _fail(fn, "cache_seqlens", "values >= 0", cache_seqlens.tolist())
    if bad[1]:
        what = "appending " + str(new_len) + " tokens" if new_len else "attending"
        if block_table is None:
            _fail(fn, "cache_seqlens", f"cache_seqlens + {new_len} <= {capacity} (the cache's capacity) when {what}",
                  cache_seqlens.tolist())
        # Paged: the pool may have room; the table maps too few pages per sequence.
        pages = -(-int(seqlens_k.max()) // page_size)
        _fail(fn, "block_table", f"at least {pages} pages of {page_size} keys per sequence to hold cache_seqlens + "
              f"{new_len} = {seqlens_k.tolist()} keys when {what}",
              f"{block_table.shape[1]} pages per sequence (shape {tuple(block_table.shape)})")
    if cache_batch_idx is not None:
        if bad[2]:
            _fail(fn, "cache_batch_idx", f"indices in [0, {cache_rows})", cache_batch_idx.tolist())
        if new_len > 0 and bad[3]:
            _fail(fn, "cache_batch_idx", "distinct indices when appending 'k'/'v'", cache_batch_idx.tolist())
    if block_table is not None and bad[-1]:
        _fail(fn, "block_table", f"page indices in [0, {cache_rows}) for every page in use",
              f"out-of-pool pages in {block_table.tolist()}")
