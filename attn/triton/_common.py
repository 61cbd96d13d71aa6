"""``@triton.jit`` helpers shared by the forward, backward and decode kernels.

Scores live in the log2 domain: ``s2 = log2(e) * score``, so the softmax uses ``exp2``.
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
def _scores_log2(qk, offs_m, offs_n, diag_offset, sm_scale, softcap, alibi_slope,
                 HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr):
    """Raw ``q.k`` products -> scores in the log2 domain: scale, softcap, ALiBi."""
    if HAS_SOFTCAP:
        s = softcap * _tanh(qk * (sm_scale / softcap)) * 1.4426950408889634
    else:
        s = qk * (sm_scale * 1.4426950408889634)
    if HAS_ALIBI:
        rel = (offs_m[:, None] + diag_offset - offs_n[None, :]).to(tl.float32)
        s = s - (alibi_slope * 1.4426950408889634) * tl.abs(rel)
    return s


@triton.jit
def _visible(offs_m, offs_n, seqlen_k, diag_offset, window_left, window_right):
    """Bool (BLOCK_M, BLOCK_N): key ``offs_n`` is visible to query ``offs_m``."""
    diag = offs_m[:, None] + diag_offset
    keys = offs_n[None, :]
    return (keys < seqlen_k) & (keys >= diag - window_left) & (keys <= diag + window_right)


@triton.jit
def _online_softmax_update(s, m_i, l_i):
    """One online-softmax step on a tile of log2-domain scores ``s`` (BLOCK_M, BLOCK_N).

    Returns (p, alpha, m_new, l_new): unnormalized probabilities, the factor rescaling the old
    accumulator, and the new running max and sum. Rows with no visible key so far keep
    ``m = -inf`` and produce ``p = 0``, ``alpha = 0`` instead of NaN.
    """
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_new = l_i * alpha + tl.sum(p, 1)
    return p, alpha, m_new, l_new


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
