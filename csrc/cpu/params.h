// Plain parameter structs shared by the Python launcher (attn/cpu/forward.py, attn/cpu/decode.py), the bindings and
// every kernel. No torch types: Python passes data pointers (as integers), sizes and element
// strides. Layouts (FlashAttention's): q, out (B, Sq, H, D); k, v (B, Sk, Hkv, D); lse (B, H, Sq).
#pragma once

#include <cstdint>

#include "../common/dtype.h"

namespace attn_cpu {

using attn::DType;

// Window bounds use -1 for "unbounded" (docs/design.md §2); kernels test `>= 0`. Fields are
// named as in the CUDA params (cuda/params.h).
struct FwdParams {
  // Data. q/k/v/out share `dtype`; lse is fp32; bias is fp32 (additive, broadcast by strides);
  // alibi_slopes is fp32 (B, H) contiguous. Optional pointers are 0 when absent.
  uintptr_t q = 0, k = 0, v = 0, out = 0, lse = 0, bias = 0, alibi_slopes = 0;
  DType dtype = DType::kFloat32;
  // Sizes.
  int64_t batch = 0, seqlen_q = 0, seqlen_k = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  // Element strides (batch, sequence, head); the last dimension is contiguous.
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t out_batch_stride = 0, out_row_stride = 0, out_head_stride = 0;
  int64_t lse_batch_stride = 0, lse_head_stride = 0;
  int64_t bias_batch_stride = 0, bias_head_stride = 0, bias_row_stride = 0, bias_col_stride = 0;
  // Options. Query i sees key j when window_left < 0 or j >= i + diagonal_offset - window_left,
  // and window_right < 0 or j <= i + diagonal_offset + window_right (causal: window_right = 0).
  float softmax_scale = 1.f;
  float softcap = 0.f;  // 0: off; else s = softcap * tanh(s / softcap)
  int64_t diagonal_offset = 0;
  int64_t window_left = -1, window_right = -1;
  int num_threads = 1;
};

// Decode against a KV cache (flash-decoding). q, out (B, Sq, H, D) with small Sq; the cache is
// either (B_cache, S_cache, Hkv, D) indexed by batch (through cache_batch_idx when given) or
// paged (num_blocks, page_size, Hkv, D) through block_table (B, max_blocks) int32.
// Batch b sees its first seqlens_k[b] keys; alignment is bottom-right (offset Lk - Sq).
struct DecodeParams {
  uintptr_t q = 0, k_cache = 0, v_cache = 0, out = 0, lse = 0, alibi_slopes = 0;
  uintptr_t seqlens_k = 0;    // int32 (B,)
  uintptr_t cache_batch_idx = 0;  // int32 (B,) or 0
  uintptr_t block_table = 0;      // int32 (B, max_blocks) or 0
  DType dtype = DType::kFloat32;
  int64_t batch = 0, seqlen_q = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t page_size = 0, block_table_batch_stride = 0;
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  // For a paged cache the "batch" stride is the stride between pages.
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t out_batch_stride = 0, out_row_stride = 0, out_head_stride = 0;
  int64_t lse_batch_stride = 0, lse_head_stride = 0;
  float softmax_scale = 1.f;
  float softcap = 0.f;
  int64_t window_left = -1, window_right = -1;
  int num_splits = 0;  // 0: chosen from the work and the thread count
  int num_threads = 1;
};

}  // namespace attn_cpu
