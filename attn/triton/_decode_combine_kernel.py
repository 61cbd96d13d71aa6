"""Combine kernel of split-KV decode: merges per-split partial outputs with their LSEs.

Grid: (Sq, B * H). One program owns one query row and folds in its ``n_splits`` partials one at a
time (an online softmax over splits, so registers do not grow with the split count); the math is
:func:`attn.api.merge.merge_attention_states` extended to many inputs:

    m = max_s lse_s,  w_s = exp(lse_s - m),  out = sum_s w_s out_s / sum_s w_s,
    lse = m + log(sum_s w_s)

Splits that saw no key have ``lse_s = -inf`` and weight 0; a row no split saw gets out 0,
lse -inf. The splits are summed in a fixed order, so the result does not depend on scheduling.

    out_part (n_splits, B, Sq, H, D)  fp32
    lse_part (n_splits, B, H, Sq)     fp32
    out      (B, Sq, H, D)            input dtype
    lse      (B, H, Sq)               fp32
"""
import triton
import triton.language as tl


@triton.jit
def _decode_combine_kernel(
    OutPart, LsePart, Out, Lse,
    stride_ps, stride_pb, stride_pm, stride_ph,
    stride_qs, stride_qb, stride_qh,
    stride_ob, stride_om, stride_oh,
    stride_lb, stride_lh,
    n_heads, n_splits, head_dim,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = (pid_bh // n_heads).to(tl.int64)
    head = pid_bh % n_heads
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    part = OutPart + batch * stride_pb + token * stride_pm + head * stride_ph + offs_d
    lse_part = LsePart + batch * stride_qb + head * stride_qh + token

    # Online merge over splits, in split order: running max m, sum of weights, weighted sum.
    m = tl.full([1], float("-inf"), dtype=tl.float32)
    total = tl.zeros([1], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for s in range(n_splits):
        lse_s = tl.load(lse_part + s * stride_qs + tl.zeros([1], dtype=tl.int32))  # (1,)
        m_new = tl.maximum(m, lse_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2((m - m_safe) * 1.4426950408889634)  # rescales what was summed so far
        w = tl.exp2((lse_s - m_safe) * 1.4426950408889634)  # 0 for a split that saw no key
        out_s = tl.load(part + s * stride_ps, mask=d_ok, other=0.0)
        acc = acc * alpha + out_s * w
        total = total * alpha + w
        m = m_new
    seen = total > 0.0
    out = acc / tl.where(seen, total, 1.0)
    lse = tl.where(seen, m + tl.log(tl.where(seen, total, 1.0)), float("-inf"))

    tl.store(Out + batch * stride_ob + token * stride_om + head * stride_oh + offs_d,
             out.to(Out.dtype.element_ty), mask=d_ok)
    tl.store(Lse + batch * stride_lb + head * stride_lh + token + tl.arange(0, 1), lse)
