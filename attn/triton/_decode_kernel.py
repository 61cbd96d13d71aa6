"""Split-KV decode kernel (flash-decoding) with GQA packing, over contiguous or paged caches.

Grid: (n_q_tiles, B * Hkv, n_splits). One program owns one kv head of one sequence and a tile of
BLOCK_M packed query rows: all ``GROUP = H // Hkv`` query heads that read this kv head, times the
``Sq`` new tokens, row ``r`` = token ``r // GROUP``, head ``kv_head * GROUP + r % GROUP``. Every
K/V tile is therefore loaded once per (group, q tile) instead of once per query head. Split ``s``
walks the ``s``-th of ``n_splits`` equal runs of the key tiles its rows can see, and writes its
normalized partial output and natural-log LSE (fp32 partial buffers when ``n_splits > 1``; the
final out/lse directly when ``n_splits == 1``); :mod:`attn.triton._decode_combine_kernel` merges splits.

    q        (B, Sq, H, D)                        any strides, last dim contiguous
    k/v      contiguous (B_cache, S_max, Hkv, D)  sequence b is row cache_batch_idx[b] (or b)
             paged (num_blocks, page_size, Hkv, D) position n of b at
                   [block_table[b, n // page_size], n % page_size]; any page_size >= 1
    seqlens  (B,) int32                           keys per sequence (cache + appended)
    out      (n_splits, B, Sq, H, D)              split axis has stride 0 when n_splits == 1
    lse      (n_splits, B, H, Sq)                 fp32
"""
import triton
import triton.language as tl

from attn.triton._common import (
    _dot, _key_tile_bounds, _online_softmax_update, _probs_hidden, _pv_finite, _pv_nonfinite, _scores, _visible,
)


@triton.jit
def _key_rows(offs_n, n_ok, block_table_row, page_size, PAGED: tl.constexpr):
    """(row, slot) int64 (BLOCK_N,) of logical key positions ``offs_n`` in the cache's first two
    dims: the sequence's own row and the position (contiguous), or the page and slot (paged)."""
    if PAGED:
        page = tl.load(block_table_row + offs_n // page_size, mask=n_ok, other=0).to(tl.int64)
        return page, (offs_n % page_size).to(tl.int64)
    else:
        return tl.zeros_like(offs_n).to(tl.int64), offs_n.to(tl.int64)


@triton.jit
def _decode_tiles(acc, m_i, l_i, bad, q, k_base, v_base, block_table_row,
                  stride_kp, stride_kn, stride_vp, stride_vn, page_size,
                  offs_m, offs_d, head_dim, seqlen_k, diag_offset, window_left, window_right,
                  sm_scale, softcap, alibi_slope, lo, hi,
                  BLOCK_N: tl.constexpr, MASKED: tl.constexpr, PAGED: tl.constexpr,
                  HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, DOT_FP32: tl.constexpr,
                  PRECISION: tl.constexpr, NONFINITE_PASS: tl.constexpr):
    """Online softmax over key tiles [lo, hi). ``MASKED`` tiles apply the visibility rule;
    unmasked ones are known to be fully visible to every row and inside the sequence. Masked
    tiles leave NaN/Inf values of V out and set ``bad`` when they meet one; ``NONFINITE_PASS``
    is the second pass that then adds them back to the rows that see them, with ``m_i`` the
    split's final row max (docs/design.md §3)."""
    d_ok = offs_d < head_dim
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < seqlen_k
        kv_mask = d_ok[:, None]
        if MASKED:
            kv_mask = kv_mask & n_ok[None, :]
        row, slot = _key_rows(offs_n, n_ok, block_table_row, page_size, PAGED)
        k_rows = row * stride_kp + slot * stride_kn  # (BLOCK_N,) element offsets
        v_rows = row * stride_vp + slot * stride_vn
        # K tile loaded transposed: (BLOCK_D, BLOCK_N)
        k = tl.load(k_base + k_rows[None, :] + offs_d[:, None], mask=kv_mask, other=0.0)
        if NONFINITE_PASS:  # ``q`` holds the Q tile's pointers: reloaded per tile, not kept live
            q_tile = tl.load(q, mask=d_ok[None, :], other=0.0)
        else:
            q_tile = q
        qk = _dot(q_tile, k, tl.zeros([offs_m.shape[0], BLOCK_N], dtype=tl.float32), DOT_FP32, PRECISION)
        s = _scores(qk, offs_m, offs_n, diag_offset, sm_scale, softcap, alibi_slope, HAS_SOFTCAP, HAS_ALIBI)
        if MASKED:
            s = tl.where(_visible(offs_m, offs_n, seqlen_k, diag_offset, window_left, window_right), s, float("-inf"))
        if NONFINITE_PASS:
            acc = _pv_nonfinite(_probs_hidden(s, m_i), v_base, v_rows, tl.minimum(seqlen_k - start_n, BLOCK_N),
                                offs_d, d_ok, acc)
        else:
            p, alpha, m_i, l_i = _online_softmax_update(s, m_i, l_i)
            # (BLOCK_N, BLOCK_D)
            v = tl.load(v_base + v_rows[:, None] + offs_d[None, :], mask=tl.trans(kv_mask), other=0.0)
            if MASKED:
                acc, bad = _pv_finite(p.to(v.dtype), v, acc * alpha[:, None], bad, DOT_FP32, PRECISION)
            else:
                acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], DOT_FP32, PRECISION)
    return acc, m_i, l_i, bad


@triton.jit
def _decode_split_kernel(
    Q, K, V, Out, Lse, Seqlens, BatchIdx, BlockTable, Alibi,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_vb, stride_vn, stride_vh,
    stride_os, stride_ob, stride_om, stride_oh,
    stride_ls, stride_lb, stride_lh,
    stride_tb,
    n_heads, group_size, seqlen_q, head_dim, page_size, n_splits,
    sm_scale, softcap, window_left, window_right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PAGED: tl.constexpr, HAS_BATCH_IDX: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    split = tl.program_id(2)
    n_kv_heads = n_heads // group_size
    batch = pid_bh // n_kv_heads
    kv_head = pid_bh % n_kv_heads

    # Packed rows: token-major, so a q tile covers a contiguous run of tokens (tight causal bounds).
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_rows = seqlen_q * group_size
    row_ok = rows < n_rows
    token = tl.minimum(rows, n_rows - 1) // group_size  # (BLOCK_M,) query position
    head = kv_head * group_size + rows % group_size  # (BLOCK_M,) query head
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim

    seqlen_k = tl.load(Seqlens + batch)
    diag_offset = seqlen_k - seqlen_q  # bottom-right alignment among the new tokens

    q_ptrs = Q + batch.to(tl.int64) * stride_qb + token[:, None] * stride_qm + head[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    alibi_slope = 0.0
    if HAS_ALIBI:
        alibi_slope = tl.load(Alibi + batch * n_heads + head)[:, None]  # (BLOCK_M, 1)

    if PAGED:
        cache_row = batch * 0
    elif HAS_BATCH_IDX:
        cache_row = tl.load(BatchIdx + batch)
    else:
        cache_row = batch
    k_base = K + cache_row.to(tl.int64) * stride_kb + kv_head * stride_kh
    v_base = V + cache_row.to(tl.int64) * stride_vb + kv_head * stride_vh
    block_table_row = BlockTable + batch.to(tl.int64) * stride_tb

    # This split's share of the key tiles the tile's rows can see.
    row_first = (pid_m * BLOCK_M) // group_size
    row_last = (tl.minimum(pid_m * BLOCK_M + BLOCK_M, n_rows) - 1) // group_size
    start, mid_lo, mid_hi, end = _key_tile_bounds(
        row_first, row_last, seqlen_k, diag_offset, window_left, window_right, BLOCK_N)
    tiles_per_split = tl.cdiv((end - start) // BLOCK_N, n_splits)
    lo = tl.minimum(start + split * tiles_per_split * BLOCK_N, end)
    hi = tl.minimum(lo + tiles_per_split * BLOCK_N, end)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    bad = tl.zeros([], dtype=tl.int32)
    acc, m_i, l_i, bad = _decode_tiles(
        acc, m_i, l_i, bad, q, k_base, v_base, block_table_row, stride_kb, stride_kn, stride_vb, stride_vn, page_size,
        token, offs_d, head_dim, seqlen_k, diag_offset, window_left, window_right, sm_scale, softcap, alibi_slope,
        lo, tl.minimum(hi, mid_lo), BLOCK_N, True, PAGED, HAS_SOFTCAP, HAS_ALIBI, DOT_FP32, PRECISION, False)
    acc, m_i, l_i, bad = _decode_tiles(
        acc, m_i, l_i, bad, q, k_base, v_base, block_table_row, stride_kb, stride_kn, stride_vb, stride_vn, page_size,
        token, offs_d, head_dim, seqlen_k, diag_offset, window_left, window_right, sm_scale, softcap, alibi_slope,
        tl.maximum(lo, mid_lo), tl.minimum(hi, mid_hi), BLOCK_N, False, PAGED, HAS_SOFTCAP, HAS_ALIBI, DOT_FP32,
        PRECISION, False)
    acc, m_i, l_i, bad = _decode_tiles(
        acc, m_i, l_i, bad, q, k_base, v_base, block_table_row, stride_kb, stride_kn, stride_vb, stride_vn, page_size,
        token, offs_d, head_dim, seqlen_k, diag_offset, window_left, window_right, sm_scale, softcap, alibi_slope,
        tl.maximum(lo, mid_hi), hi, BLOCK_N, True, PAGED, HAS_SOFTCAP, HAS_ALIBI, DOT_FP32, PRECISION, False)

    if bad > 0:
        # Rare: a masked tile held NaN/Inf in V. The split's tiles again (unmasked ones already
        # added theirs, and adding a NaN/Inf twice changes nothing), against the final max; Q is
        # reloaded per tile (its rows are clamped in range) so that the pass keeps no Q tile live.
        acc, m_i, l_i, bad = _decode_tiles(
            acc, m_i, l_i, bad, q_ptrs, k_base, v_base, block_table_row, stride_kb, stride_kn, stride_vb, stride_vn,
            page_size, token, offs_d, head_dim, seqlen_k, diag_offset, window_left, window_right, sm_scale, softcap,
            alibi_slope, lo, hi, BLOCK_N, True, PAGED, HAS_SOFTCAP, HAS_ALIBI, DOT_FP32, PRECISION, True)

    # Rows that saw no key in this split: out = 0, lse = -inf (the combine gives them weight 0).
    seen = l_i > 0.0
    acc = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))

    o_ptrs = (Out + split.to(tl.int64) * stride_os + batch.to(tl.int64) * stride_ob
              + token[:, None] * stride_om + head[:, None] * stride_oh + offs_d[None, :])
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    l_ptrs = Lse + split.to(tl.int64) * stride_ls + batch.to(tl.int64) * stride_lb + head * stride_lh + token
    tl.store(l_ptrs, lse, mask=row_ok)
