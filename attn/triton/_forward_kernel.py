"""FlashAttention-2 style forward kernel.

Grid: (cdiv(Sq, BLOCK_M), B * H). One program owns BLOCK_M query rows of one (batch, head);
it keeps Q in registers, streams the key/value tiles its rows can see, and writes O and the
natural-log LSE once.

    q   (B, Sq, H,   D)   any strides, last dim contiguous
    k,v (B, Sk, Hkv, D)   head h reads kv head h // GROUP
    out (B, Sq, H,   D)
    lse (B, H, Sq)        fp32
    bias (B, H, Sq, Sk)   optional additive fp32 mask, stride 0 on broadcast dims
"""
import triton
import triton.language as tl

from attn.triton._common import (
    _dot, _key_tile_bounds, _online_softmax_update, _probs_hidden, _pv_finite, _pv_nonfinite, _scores, _visible,
)


@triton.jit
def _fwd_tiles(acc, m_i, l_i, bad, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_bn,
               offs_m, offs_d, head_dim, seqlen_k, diag_offset, window_left, window_right,
               sm_scale, softcap, alibi_slope, lo, hi,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
               HAS_ALIBI: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr,
               PRECISION: tl.constexpr, NONFINITE_PASS: tl.constexpr):
    """Online softmax over key tiles [lo, hi). ``MASKED`` tiles apply the visibility rule;
    unmasked ones are known to be fully visible and in bounds. Tiles where a key may be hidden
    from a row (masked or biased) leave NaN/Inf values of V out and set ``bad`` when they meet
    one; ``NONFINITE_PASS`` is the second pass that then adds them back to the rows that see
    them, with ``m_i`` the final row max (docs/design.md §3)."""
    d_ok = offs_d < head_dim
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = d_ok[:, None]
        if MASKED:
            kv_mask = kv_mask & (offs_n[None, :] < seqlen_k)
        # K tile loaded transposed: (BLOCK_D, BLOCK_N)
        k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None], mask=kv_mask, other=0.0)
        if NONFINITE_PASS:  # ``q`` holds the Q tile's pointers: reloaded per tile, not kept live
            q_tile = tl.load(q, mask=d_ok[None, :], other=0.0)
        else:
            q_tile = q
        qk = _dot(q_tile, k, tl.zeros([offs_m.shape[0], BLOCK_N], dtype=tl.float32), DOT_FP32, PRECISION)
        s = _scores(qk, offs_m, offs_n, diag_offset, sm_scale, softcap, alibi_slope, HAS_SOFTCAP, HAS_ALIBI)
        if HAS_BIAS:
            bias = tl.load(bias_base + offs_n[None, :] * stride_bn, mask=offs_n[None, :] < seqlen_k, other=0.0)
            s = s + bias
        if MASKED:
            s = tl.where(_visible(offs_m, offs_n, seqlen_k, diag_offset, window_left, window_right), s, float("-inf"))
        if NONFINITE_PASS:
            acc = _pv_nonfinite(_probs_hidden(s, m_i), v_base, offs_n.to(tl.int64) * stride_vn,
                                tl.minimum(seqlen_k - start_n, BLOCK_N), offs_d, d_ok, acc)
        else:
            p, alpha, m_i, l_i = _online_softmax_update(s, m_i, l_i)
            v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=tl.trans(kv_mask), other=0.0)
            if MASKED or HAS_BIAS:
                acc, bad = _pv_finite(p.to(v.dtype), v, acc * alpha[:, None], bad, DOT_FP32, PRECISION)
            else:
                acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], DOT_FP32, PRECISION)
    return acc, m_i, l_i, bad


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Out, Lse, Bias, Alibi,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_vb, stride_vn, stride_vh,
    stride_ob, stride_om, stride_oh,
    stride_lb, stride_lh,
    stride_bb, stride_bh, stride_bm, stride_bn,
    n_heads, group_size, seqlen_q, seqlen_k, head_dim,
    sm_scale, softcap, diag_offset, window_left, window_right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // n_heads
    head = pid_bh % n_heads
    kv_head = head // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seqlen_q
    d_ok = offs_d < head_dim

    q_base = Q + batch.to(tl.int64) * stride_qb + head * stride_qh
    k_base = K + batch.to(tl.int64) * stride_kb + kv_head * stride_kh
    v_base = V + batch.to(tl.int64) * stride_vb + kv_head * stride_vh
    # rows past Sq read row Sq-1 of the bias (their results are never stored)
    bias_rows = tl.minimum(offs_m, seqlen_q - 1)
    bias_base = Bias + batch.to(tl.int64) * stride_bb + head * stride_bh + bias_rows[:, None] * stride_bm
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    alibi_slope = 0.0
    if HAS_ALIBI:
        alibi_slope = tl.load(Alibi + batch * n_heads + head)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    row_last = tl.minimum(pid_m * BLOCK_M + BLOCK_M, seqlen_q) - 1
    start, mid_lo, mid_hi, end = _key_tile_bounds(
        pid_m * BLOCK_M, row_last, seqlen_k, diag_offset, window_left, window_right, BLOCK_N)
    bad = tl.zeros([], dtype=tl.int32)
    acc, m_i, l_i, bad = _fwd_tiles(
        acc, m_i, l_i, bad, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_bn, offs_m, offs_d,
        head_dim, seqlen_k, diag_offset, window_left, window_right, sm_scale, softcap, alibi_slope,
        start, mid_lo, BLOCK_N, True, HAS_SOFTCAP, HAS_ALIBI, HAS_BIAS, DOT_FP32, PRECISION, False)
    acc, m_i, l_i, bad = _fwd_tiles(
        acc, m_i, l_i, bad, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_bn, offs_m, offs_d,
        head_dim, seqlen_k, diag_offset, window_left, window_right, sm_scale, softcap, alibi_slope,
        mid_lo, mid_hi, BLOCK_N, False, HAS_SOFTCAP, HAS_ALIBI, HAS_BIAS, DOT_FP32, PRECISION, False)
    acc, m_i, l_i, bad = _fwd_tiles(
        acc, m_i, l_i, bad, q, k_base, v_base, bias_base, stride_kn, stride_vn, stride_bn, offs_m, offs_d,
        head_dim, seqlen_k, diag_offset, window_left, window_right, sm_scale, softcap, alibi_slope,
        mid_hi, end, BLOCK_N, True, HAS_SOFTCAP, HAS_ALIBI, HAS_BIAS, DOT_FP32, PRECISION, False)
    if bad > 0:
        # Rare: some tile held NaN/Inf in V. Every tile again (unmasked ones already added theirs,
        # and adding a NaN/Inf twice changes nothing), against the final max; Q is reloaded per
        # tile (rows past Sq read row Sq-1) so that the pass keeps no Q tile live.
        q_rows = tl.minimum(offs_m, seqlen_q - 1)
        acc, m_i, l_i, bad = _fwd_tiles(
            acc, m_i, l_i, bad, q_base + q_rows[:, None] * stride_qm + offs_d[None, :], k_base, v_base, bias_base,
            stride_kn, stride_vn, stride_bn, offs_m, offs_d,
            head_dim, seqlen_k, diag_offset, window_left, window_right, sm_scale, softcap, alibi_slope,
            start, end, BLOCK_N, True, HAS_SOFTCAP, HAS_ALIBI, HAS_BIAS, DOT_FP32, PRECISION, True)

    # Rows that saw no key: out = 0, lse = -inf (never 0/0).
    seen = l_i > 0.0
    acc = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))

    o_base = Out + batch.to(tl.int64) * stride_ob + head * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], acc.to(Out.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
    tl.store(Lse + batch.to(tl.int64) * stride_lb + head * stride_lh + offs_m, lse, mask=m_ok)
