"""Combine kernel of split-KV decode: merges per-split partial outputs with their LSEs.

Grid: (Sq, B * H). One program owns one query row and reads its ``n_splits`` partials; the math
is :func:`attn.merge.merge_attention_states` extended to many inputs:

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
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = (pid_bh // n_heads).to(tl.int64)
    head = pid_bh % n_heads
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < n_splits
    d_ok = offs_d < head_dim

    lse_s = tl.load(LsePart + offs_s * stride_qs + batch * stride_qb + head * stride_qh + token,
                    mask=s_ok, other=float("-inf"))  # (BLOCK_S,)
    m = tl.max(lse_s, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2((lse_s - m_safe) * 1.4426950408889634)  # 0 for splits that saw nothing
    total = tl.sum(w, 0)
    seen = total > 0.0
    out_s = tl.load(OutPart + offs_s[:, None] * stride_ps + batch * stride_pb + token * stride_pm
                    + head * stride_ph + offs_d[None, :], mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    out = tl.sum(out_s * w[:, None], 0) / tl.where(seen, total, 1.0)  # (BLOCK_D,)
    lse = tl.where(seen, m_safe + tl.log(tl.where(seen, total, 1.0)), float("-inf"))

    tl.store(Out + batch * stride_ob + token * stride_om + head * stride_oh + offs_d,
             out.to(Out.dtype.element_ty), mask=d_ok)
    tl.store(Lse + batch * stride_lb + head * stride_lh + token, lse)
