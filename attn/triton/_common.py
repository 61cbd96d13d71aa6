"""``@triton.jit`` helpers shared by the forward, backward and decode kernels.

Scores, running maxima and LSEs are in natural units; the softmax takes ``exp2((s - m) * log2(e))``,
so a finite score (e.g. a ``finfo.min`` mask) is scaled only after the max is subtracted and never
overflows to -inf (docs/design.md §3).
The visibility rule (see :mod:`attn.reference`) is expressed with a per-row diagonal:
query ``i`` sees keys ``j`` with ``i + off - left <= j <= i + off + right`` and ``j < seqlen_k``;
launchers pass "unbounded" sides as a window larger than any sequence.
"""
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b. ``DOT_FP32`` upcasts operands first: Triton 3.9's interpreter multiplies bf16
    operands wrongly, so launchers set it only when interpreting bf16 inputs; compiled GPU code
    never takes that branch."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _tanh(x):
    # tanh through the logistic function: exact at both tails, no overflow for |x| large.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _softcap_grad(qk, sm_scale, softcap):
    """d(softcap * tanh(x / softcap)) / dx at ``x = sm_scale * qk``: ``1 - tanh^2`` (elementwise)."""
    t = _tanh(qk * (sm_scale / softcap))
    return 1.0 - t * t


@triton.jit
def _scores(qk, offs_m, offs_n, diag_offset, sm_scale, softcap, alibi_slope,
            HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr):
    """Raw ``q.k`` products -> scores in natural units: scale, softcap, ALiBi."""
    if HAS_SOFTCAP:
        s = softcap * _tanh(qk * (sm_scale / softcap))
    else:
        s = qk * sm_scale
    if HAS_ALIBI:
        rel = (offs_m[:, None] + diag_offset - offs_n[None, :]).to(tl.float32)
        s = s - alibi_slope * tl.abs(rel)
    return s


@triton.jit
def _visible(offs_m, offs_n, seqlen_k, diag_offset, window_left, window_right):
    """Bool (BLOCK_M, BLOCK_N): key ``offs_n`` is visible to query ``offs_m``."""
    diag = offs_m[:, None] + diag_offset
    keys = offs_n[None, :]
    return (keys < seqlen_k) & (keys >= diag - window_left) & (keys <= diag + window_right)


@triton.jit
def _online_softmax_update(s, m_i, l_i):
    """One online-softmax step on a tile of scores ``s`` (BLOCK_M, BLOCK_N), natural units.

    Returns (p, alpha, m_new, l_new): unnormalized probabilities, the factor rescaling the old
    accumulator, and the new running max and sum. Rows with no visible key so far keep
    ``m = -inf`` and produce ``p = 0``, ``alpha = 0`` instead of NaN. The max is subtracted
    before the log2(e) factor, so very negative finite scores still give ``p = 1`` at the max.
    """
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2((s - m_safe[:, None]) * 1.4426950408889634)
    alpha = tl.exp2((m_i - m_safe) * 1.4426950408889634)
    l_new = l_i * alpha + tl.sum(p, 1)
    return p, alpha, m_new, l_new


@triton.jit
def _pv_finite(p, v, acc, bad, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """``acc + p @ v`` with the NaN/Inf values of ``v`` left out, and ``bad`` (int32 scalar) raised
    to 1 when the tile holds any. Used on tiles where some key may be hidden from some row: a
    hidden key's NaN or Inf ``v`` must not reach the row (docs/design.md §3), and ``0 * NaN`` in
    the product would. The visible keys' non-finite values are put back by
    :func:`_pv_nonfinite` in a second pass over the tiles, run only when ``bad`` is set, so the
    main loop keeps the registers of a plain ``p @ v``."""
    finite = tl.abs(v) < float("inf")  # False for NaN and +-Inf
    bad = tl.maximum(bad, tl.max(tl.where(finite, 0, 1)))
    return _dot(p, tl.where(finite, v, 0.0).to(v.dtype), acc, DOT_FP32, PRECISION), bad


@triton.jit
def _probs_hidden(s, m):
    """Probabilities ``exp(s - m)`` against the final row max ``m`` (BLOCK_M,), with the keys
    hidden from a row (``s = -inf``) as ``-0.0``: a zero :func:`_pv_nonfinite` tells apart from
    a visible key whose probability underflowed (``+0.0``)."""
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    p = tl.exp2((s - m_safe[:, None]) * 1.4426950408889634)
    return tl.where(s == float("-inf"), -0.0, p)


@triton.jit
def _pv_nonfinite(p, v_base, v_rows, n_keys, offs_d, d_ok, acc):
    """``acc`` plus the non-finite part of ``p @ v``, one key at a time: key ``j < n_keys`` (the
    tile's keys inside the sequence; its V row at ``v_base + v_rows[j]``) adds ``p[i, j] * v[j, d]`` for each
    NaN/Inf ``v[j, d]`` to every row ``i`` that sees it, so IEEE rules give the row NaN (a NaN,
    an Inf times an underflowed ``p = +0.0``, Infs of both signs) or the Inf's sign; rows the key
    is hidden from (``p = -0.0``, :func:`_probs_hidden`) get nothing. Vectors only: no V tile and
    no second accumulator in registers."""
    keys = tl.arange(0, p.shape[1])
    for j in tl.range(0, n_keys, num_stages=1):
        p_j = tl.min(tl.where(keys[None, :] == j, p, 1.0), 1)  # (BLOCK_M,), keeps a zero's sign
        hidden_j = p_j.to(tl.int32, bitcast=True) < 0
        row_j = tl.sum(tl.where(keys == j, v_rows, 0))
        v_j = tl.load(v_base + row_j + offs_d, mask=d_ok, other=0.0).to(tl.float32)  # (BLOCK_D,)
        bad_j = tl.where(tl.abs(v_j) < float("inf"), 0.0, v_j)
        acc = acc + tl.where(hidden_j[:, None], 0.0, p_j[:, None] * bad_j[None, :])
    return acc


@triton.jit
def _key_tile_bounds(row_first, row_last, seqlen_k, diag_offset, window_left, window_right,
                     BLOCK_N: tl.constexpr):
    """Key-tile ranges for query rows ``row_first..row_last``.

    Returns (start, mid_lo, mid_hi, end), multiples of BLOCK_N: tiles in [start, mid_lo) and
    [mid_hi, end) straddle a mask edge (window, causal diagonal, end of keys) and are masked;
    tiles in [mid_lo, mid_hi) are fully visible to every row and skip masking; tiles outside
    [start, end) are invisible to every row and are never loaded.
    """
    kv_lo = tl.maximum(row_first + diag_offset - window_left, 0)
    kv_hi = tl.minimum(row_last + diag_offset + window_right + 1, seqlen_k)
    kv_hi = tl.maximum(kv_hi, kv_lo)
    start = (kv_lo // BLOCK_N) * BLOCK_N
    end = tl.cdiv(kv_hi, BLOCK_N) * BLOCK_N
    end = tl.where(kv_hi > kv_lo, end, start)
    full_lo = tl.cdiv(tl.maximum(row_last + diag_offset - window_left, 0), BLOCK_N) * BLOCK_N
    full_lo = tl.minimum(tl.maximum(full_lo, start), end)
    full_hi = (tl.maximum(tl.minimum(row_first + diag_offset + window_right + 1, seqlen_k), 0) // BLOCK_N) * BLOCK_N
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), end)
    return start, full_lo, full_hi, end


@triton.jit
def _query_tile_bounds(col_first, col_last, seqlen_q, diag_offset, window_left, window_right,
                       BLOCK_M: tl.constexpr):
    """Query-tile ranges for key columns ``col_first..col_last`` (the transpose of
    :func:`_key_tile_bounds`, for key-tile-major loops).

    Query ``i`` sees key ``j`` when ``j - off - right <= i <= j - off + left``. Returns
    (start, mid_lo, mid_hi, end), multiples of BLOCK_M: tiles in [mid_lo, mid_hi) lie inside
    ``0..seqlen_q`` and every row there sees every column, so they skip masking; tiles in
    [start, mid_lo) and [mid_hi, end) are masked; tiles outside [start, end) see none of the
    columns and are never loaded.
    """
    q_lo = tl.maximum(col_first - diag_offset - window_right, 0)
    q_hi = tl.minimum(col_last - diag_offset + window_left + 1, seqlen_q)
    q_hi = tl.maximum(q_hi, q_lo)
    start = (q_lo // BLOCK_M) * BLOCK_M
    end = tl.cdiv(q_hi, BLOCK_M) * BLOCK_M
    end = tl.where(q_hi > q_lo, end, start)
    full_lo = tl.cdiv(tl.maximum(col_last - diag_offset - window_right, 0), BLOCK_M) * BLOCK_M
    full_lo = tl.minimum(tl.maximum(full_lo, start), end)
    full_hi = (tl.maximum(tl.minimum(col_first - diag_offset + window_left + 1, seqlen_q), 0) // BLOCK_M) * BLOCK_M
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), end)
    return start, full_lo, full_hi, end
