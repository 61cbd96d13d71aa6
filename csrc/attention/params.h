// params.h — everything a forward attention launch needs, as plain data (no torch types).
#pragma once

#include <cstdint>

namespace attn {

enum class DType : int { kF16 = 0, kBF16 = 1 };

// q: (B, Sq, H, D), k and v: (B, Sk, Hkv, D), out: (B, Sq, H, D), lse: (B, H, Sq) fp32.
// Strides are in elements; the last dimension of every tensor is contiguous. Pointers and every
// stride but the last must keep 16-byte alignment (cp.async moves 16 bytes at a time).
struct FwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;

  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int64_t out_batch_stride, out_row_stride, out_head_stride;
  int64_t lse_batch_stride, lse_head_stride;

  int batch, n_heads, n_kv_heads, seqlen_q, seqlen_k, head_dim;
  DType dtype;

  float softmax_scale;
  bool causal;
  // With causal, query i sees keys j <= i + diagonal_offset: Sk - Sq (bottom-right) or 0 (top-left).
  int diagonal_offset;
};

// Runs the forward kernel for p.dtype and p.head_dim on `stream` (a cudaStream_t, or ignored by
// the emulator). Throws std::invalid_argument for a head dim without a compiled kernel.
void run_fwd(const FwdParams& p, void* stream);

// Head dims with a compiled kernel (fwd_hdim*.cu); the caller zero-pads others to the next one.
// 96 is padded to 128: its own instantiation spills registers.
constexpr int kFwdHeadDims[] = {32, 64, 128, 256};

}  // namespace attn
