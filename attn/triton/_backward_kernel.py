"""FlashAttention-2 style backward kernels.

With ``P = softmax(S)`` recomputed from the saved log-sum-exp (never stored), the gradients are

    dV = P^T dO                      dP = dO V^T
    Delta_i = rowsum(dO * O)_i - dLSE_i
    dS = P * (dP - Delta[:, None])   (times 1 - tanh^2 under softcap)
    dQ = scale * dS K                dK = scale * dS^T Q

Three kernels, none with atomics, so results are bitwise reproducible run to run:

* ``_attn_bwd_preprocess_kernel``, grid (cdiv(Sq, BLOCK_M), B * H): ``Delta`` in fp32.
* ``_attn_bwd_dkdv_kernel``, grid (cdiv(Sk, BLOCK_N), B * Hkv): one program owns BLOCK_N keys of
  one kv head, keeps K, V and the dK, dV accumulators in registers, and streams the query tiles
  of every query head of its GQA group (the group reduction happens here, in a fixed order).
* ``_attn_bwd_dq_kernel``, grid (cdiv(Sq, BLOCK_M), B * H): one program owns BLOCK_M query rows
  and streams the key tiles they see, like the forward.

    q, dq     (B, Sq, H,   D)   last dim contiguous
    k, v      (B, Sk, Hkv, D)   head h reads kv head h // GROUP
    dk, dv    (B, Sk, Hkv, D)
    o, do     (B, Sq, H,   D)
    lse       (B, H, Sq)        fp32, natural log, -inf for rows that see no key
    delta     (B, H, Sq)        fp32
    bias      (B, H, Sq, Sk)    optional additive fp32 mask, stride 0 on broadcast dims

Masked tiles are skipped by the tile-bound helpers of :mod:`attn.triton._common`.
"""
import triton
import triton.language as tl

from attn.triton._common import _dot, _key_tile_bounds, _query_tile_bounds, _scores, _softcap_grad, _visible


@triton.jit
def _attn_bwd_preprocess_kernel(
    Out, DOut, DLse, Delta,
    stride_ob, stride_om, stride_oh,
    stride_dob, stride_dom, stride_doh,
    n_heads, seqlen_q, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Delta = rowsum(dO * O) - dLSE (fp32). dLSE and Delta are contiguous (B, H, Sq)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // n_heads
    head = pid_bh % n_heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seqlen_q
    mask = m_ok[:, None] & (offs_d[None, :] < head_dim)
    o = tl.load(Out + batch.to(tl.int64) * stride_ob + head * stride_oh + offs_m[:, None] * stride_om
                + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DOut + batch.to(tl.int64) * stride_dob + head * stride_doh + offs_m[:, None] * stride_dom
                 + offs_d[None, :], mask=mask, other=0.0)
    row = pid_bh.to(tl.int64) * seqlen_q + offs_m
    dlse = tl.load(DLse + row, mask=m_ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1) - dlse
    tl.store(Delta + row, delta, mask=m_ok)


@triton.jit
def _lse_for_probs(lse):
    """Rows that saw no key (lse = -inf) get +inf, so that :func:`_probs` gives them P = 0
    rather than NaN or inf."""
    return tl.where(lse == float("-inf"), float("inf"), lse)


@triton.jit
def _probs(s, lse):
    """P = exp(s - lse), natural units (docs/design.md §3); ``lse`` from :func:`_lse_for_probs`."""
    return tl.exp(s - lse)


@triton.jit
def _bwd_dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, delta_base, bias_base,
                    stride_qm, stride_dom, stride_bm, stride_bn,
                    offs_n, offs_d, head_dim, seqlen_q, seqlen_k, diag_offset, window_left, window_right,
                    sm_scale, softcap, alibi_slope, lo, hi,
                    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                    HAS_ALIBI: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr,
                    PRECISION: tl.constexpr):
    """Accumulates dK, dV (BLOCK_N, BLOCK_D) over query tiles [lo, hi) of one query head.

    Works on transposed scores ``S^T (BLOCK_N, BLOCK_M)`` so that every dot has the key tile as
    its rows, like the dK/dV accumulators: no transposes of fp32 tiles, and on sm_90 every dot
    is a 64-row-per-warpgroup wgmma. The visibility and ALiBi rules are symmetric under swapping
    queries and keys with ``off -> -off``, ``left <-> right``, so the shared helpers are reused
    with those arguments. ``MASKED`` tiles apply the visibility rule and the end of the queries;
    unmasked ones are fully visible."""
    d_ok = offs_d < head_dim
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < seqlen_q
        if MASKED:
            q_mask = m_ok[:, None] & d_ok[None, :]
            lse = _lse_for_probs(tl.load(lse_base + offs_m, mask=m_ok, other=float("-inf")))
            delta = tl.load(delta_base + offs_m, mask=m_ok, other=0.0)
        else:
            q_mask = d_ok[None, :]
            lse = _lse_for_probs(tl.load(lse_base + offs_m))
            delta = tl.load(delta_base + offs_m)
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=q_mask, other=0.0)  # (M, D)
        do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :], mask=q_mask, other=0.0)  # (M, D)
        qk_t = _dot(k, tl.trans(q), tl.zeros([k.shape[0], BLOCK_M], dtype=tl.float32), DOT_FP32, PRECISION)  # (N, M)
        s_t = _scores(qk_t, offs_n, offs_m, -diag_offset, sm_scale, softcap, alibi_slope, HAS_SOFTCAP, HAS_ALIBI)
        if HAS_BIAS:
            # rows past Sq read row Sq-1 (their P is zeroed through lse = -inf)
            rows = tl.minimum(offs_m, seqlen_q - 1)
            bias = tl.load(bias_base + rows[None, :] * stride_bm + offs_n[:, None] * stride_bn,
                           mask=offs_n[:, None] < seqlen_k, other=0.0)
            s_t = s_t + bias
        if MASKED:
            visible = _visible(offs_n, offs_m, seqlen_q, -diag_offset, window_right, window_left)
            s_t = tl.where(visible, s_t, float("-inf"))
        p_t = _probs(s_t, lse[None, :])  # (N, M)
        dv = _dot(p_t.to(do.dtype), do, dv, DOT_FP32, PRECISION)  # (N, D)
        dp_t = _dot(v, tl.trans(do), tl.zeros([v.shape[0], BLOCK_M], dtype=tl.float32), DOT_FP32, PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])  # (N, M)
        if HAS_SOFTCAP:
            ds_t = ds_t * _softcap_grad(qk_t, sm_scale, softcap)
        dk = _dot(ds_t.to(q.dtype), q, dk, DOT_FP32, PRECISION)  # (N, D)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DOut, Lse, Delta, DK, DV, Bias, Alibi,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_vb, stride_vn, stride_vh,
    stride_dob, stride_dom, stride_doh,
    stride_dkb, stride_dkn, stride_dkh,
    stride_dvb, stride_dvn, stride_dvh,
    stride_bb, stride_bh, stride_bm, stride_bn,
    n_heads, n_kv_heads, group_size, seqlen_q, seqlen_k, head_dim,
    sm_scale, softcap, diag_offset, window_left, window_right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    """dK, dV for BLOCK_N keys of one (batch, kv head). Lse and Delta are contiguous (B, H, Sq)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // n_kv_heads
    kv_head = pid_bh % n_kv_heads

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < seqlen_k) & (offs_d[None, :] < head_dim)
    k = tl.load(K + batch.to(tl.int64) * stride_kb + kv_head * stride_kh + offs_n[:, None] * stride_kn
                + offs_d[None, :], mask=kv_mask, other=0.0)  # (N, D)
    v = tl.load(V + batch.to(tl.int64) * stride_vb + kv_head * stride_vh + offs_n[:, None] * stride_vn
                + offs_d[None, :], mask=kv_mask, other=0.0)  # (N, D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    col_last = tl.minimum(pid_n * BLOCK_N + BLOCK_N, seqlen_k) - 1
    start, mid_lo, mid_hi, end = _query_tile_bounds(
        pid_n * BLOCK_N, col_last, seqlen_q, diag_offset, window_left, window_right, BLOCK_M)
    for g in range(0, group_size):
        head = kv_head * group_size + g
        q_base = Q + batch.to(tl.int64) * stride_qb + head * stride_qh
        do_base = DOut + batch.to(tl.int64) * stride_dob + head * stride_doh
        row_base = (batch * n_heads + head).to(tl.int64) * seqlen_q
        bias_base = Bias + batch.to(tl.int64) * stride_bb + head * stride_bh
        alibi_slope = 0.0
        if HAS_ALIBI:
            alibi_slope = tl.load(Alibi + batch * n_heads + head)
        dk, dv = _bwd_dkdv_tiles(
            dk, dv, k, v, q_base, do_base, Lse + row_base, Delta + row_base, bias_base,
            stride_qm, stride_dom, stride_bm, stride_bn, offs_n, offs_d, head_dim, seqlen_q, seqlen_k,
            diag_offset, window_left, window_right, sm_scale, softcap, alibi_slope, start, mid_lo,
            BLOCK_M, True, HAS_SOFTCAP, HAS_ALIBI, HAS_BIAS, DOT_FP32, PRECISION)
        dk, dv = _bwd_dkdv_tiles(
            dk, dv, k, v, q_base, do_base, Lse + row_base, Delta + row_base, bias_base,
            stride_qm, stride_dom, stride_bm, stride_bn, offs_n, offs_d, head_dim, seqlen_q, seqlen_k,
            diag_offset, window_left, window_right, sm_scale, softcap, alibi_slope, mid_lo, mid_hi,
            BLOCK_M, False, HAS_SOFTCAP, HAS_ALIBI, HAS_BIAS, DOT_FP32, PRECISION)
        dk, dv = _bwd_dkdv_tiles(
            dk, dv, k, v, q_base, do_base, Lse + row_base, Delta + row_base, bias_base,
            stride_qm, stride_dom, stride_bm, stride_bn, offs_n, offs_d, head_dim, seqlen_q, seqlen_k,
            diag_offset, window_left, window_right, sm_scale, softcap, alibi_slope, mid_hi, end,
            BLOCK_M, True, HAS_SOFTCAP, HAS_ALIBI, HAS_BIAS, DOT_FP32, PRECISION)

    out_mask = kv_mask
    tl.store(DK + batch.to(tl.int64) * stride_dkb + kv_head * stride_dkh + offs_n[:, None] * stride_dkn
             + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty), mask=out_mask)
    tl.store(DV + batch.to(tl.int64) * stride_dvb + kv_head * stride_dvh + offs_n[:, None] * stride_dvn
             + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=out_mask)


@triton.jit
def _bwd_dq_tiles(dq, q, do, lse, delta, k_base, v_base, bias_base, stride_kn, stride_vn, stride_bn,
                  offs_m, offs_d, head_dim, seqlen_k, diag_offset, window_left, window_right,
                  sm_scale, softcap, alibi_slope, lo, hi,
                  BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                  HAS_ALIBI: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr,
                  PRECISION: tl.constexpr):
    """Accumulates dQ (BLOCK_M, BLOCK_D) over key tiles [lo, hi); ``lse`` is the natural-log LSE."""
    d_ok = offs_d < head_dim
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = d_ok[None, :]
        if MASKED:
            kv_mask = kv_mask & (offs_n[:, None] < seqlen_k)
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)  # (N, D)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)  # (N, D)
        qk = _dot(q, tl.trans(k), tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32), DOT_FP32, PRECISION)
        s = _scores(qk, offs_m, offs_n, diag_offset, sm_scale, softcap, alibi_slope, HAS_SOFTCAP, HAS_ALIBI)
        if HAS_BIAS:
            bias = tl.load(bias_base + offs_n[None, :] * stride_bn, mask=offs_n[None, :] < seqlen_k, other=0.0)
            s = s + bias
        if MASKED:
            s = tl.where(_visible(offs_m, offs_n, seqlen_k, diag_offset, window_left, window_right), s, float("-inf"))
        p = _probs(s, lse[:, None])  # (M, N)
        dp = _dot(do, tl.trans(v), tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32), DOT_FP32, PRECISION)
        ds = p * (dp - delta[:, None])
        if HAS_SOFTCAP:
            ds = ds * _softcap_grad(qk, sm_scale, softcap)
        dq = _dot(ds.to(k.dtype), k, dq, DOT_FP32, PRECISION)  # (M, D)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DOut, Lse, Delta, DQ, Bias, Alibi,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_vb, stride_vn, stride_vh,
    stride_dob, stride_dom, stride_doh,
    stride_dqb, stride_dqm, stride_dqh,
    stride_bb, stride_bh, stride_bm, stride_bn,
    n_heads, group_size, seqlen_q, seqlen_k, head_dim,
    sm_scale, softcap, diag_offset, window_left, window_right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    """dQ for BLOCK_M query rows of one (batch, head). Lse and Delta are contiguous (B, H, Sq)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // n_heads
    head = pid_bh % n_heads
    kv_head = head // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seqlen_q
    q_mask = m_ok[:, None] & (offs_d[None, :] < head_dim)
    q = tl.load(Q + batch.to(tl.int64) * stride_qb + head * stride_qh + offs_m[:, None] * stride_qm
                + offs_d[None, :], mask=q_mask, other=0.0)  # (M, D)
    do = tl.load(DOut + batch.to(tl.int64) * stride_dob + head * stride_doh + offs_m[:, None] * stride_dom
                 + offs_d[None, :], mask=q_mask, other=0.0)  # (M, D)
    row = pid_bh.to(tl.int64) * seqlen_q + offs_m
    lse = _lse_for_probs(tl.load(Lse + row, mask=m_ok, other=float("-inf")))
    delta = tl.load(Delta + row, mask=m_ok, other=0.0)
    alibi_slope = 0.0
    if HAS_ALIBI:
        alibi_slope = tl.load(Alibi + batch * n_heads + head)

    k_base = K + batch.to(tl.int64) * stride_kb + kv_head * stride_kh
    v_base = V + batch.to(tl.int64) * stride_vb + kv_head * stride_vh
    # rows past Sq read row Sq-1 of the bias (their P is zeroed through lse = -inf)
    bias_rows = tl.minimum(offs_m, seqlen_q - 1)
    bias_base = Bias + batch.to(tl.int64) * stride_bb + head * stride_bh + bias_rows[:, None] * stride_bm
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    row_last = tl.minimum(pid_m * BLOCK_M + BLOCK_M, seqlen_q) - 1
    start, mid_lo, mid_hi, end = _key_tile_bounds(
        pid_m * BLOCK_M, row_last, seqlen_k, diag_offset, window_left, window_right, BLOCK_N)
    dq = _bwd_dq_tiles(
        dq, q, do, lse, delta, k_base, v_base, bias_base, stride_kn, stride_vn, stride_bn, offs_m, offs_d,
        head_dim, seqlen_k, diag_offset, window_left, window_right, sm_scale, softcap, alibi_slope,
        start, mid_lo, BLOCK_N, True, HAS_SOFTCAP, HAS_ALIBI, HAS_BIAS, DOT_FP32, PRECISION)
    dq = _bwd_dq_tiles(
        dq, q, do, lse, delta, k_base, v_base, bias_base, stride_kn, stride_vn, stride_bn, offs_m, offs_d,
        head_dim, seqlen_k, diag_offset, window_left, window_right, sm_scale, softcap, alibi_slope,
        mid_lo, mid_hi, BLOCK_N, False, HAS_SOFTCAP, HAS_ALIBI, HAS_BIAS, DOT_FP32, PRECISION)
    dq = _bwd_dq_tiles(
        dq, q, do, lse, delta, k_base, v_base, bias_base, stride_kn, stride_vn, stride_bn, offs_m, offs_d,
        head_dim, seqlen_k, diag_offset, window_left, window_right, sm_scale, softcap, alibi_slope,
        mid_hi, end, BLOCK_N, True, HAS_SOFTCAP, HAS_ALIBI, HAS_BIAS, DOT_FP32, PRECISION)

    tl.store(DQ + batch.to(tl.int64) * stride_dqb + head * stride_dqh + offs_m[:, None] * stride_dqm
             + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)
