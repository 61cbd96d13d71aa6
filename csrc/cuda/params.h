// params.h — everything a forward or decode launch needs, as plain data (no torch types).
#pragma once

#include <cstdint>

#include "../common/dtype.h"

namespace attn {

// q: (B, Sq, H, D), k and v: (B, Sk, Hkv, D), out: (B, Sq, H, D), lse: (B, H, Sq) fp32.
// Strides are in elements; the last dimension of every tensor is contiguous. Pointers and every
// stride but the last must keep 16-byte alignment (cp.async moves 16 bytes at a time).
// Fields are named as in the CPU params (cpu/params.h).
struct FwdParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  const float* alibi_slopes = nullptr;  // (B, H) contiguous, or nullptr

  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t out_batch_stride = 0, out_row_stride = 0, out_head_stride = 0;
  int64_t lse_batch_stride = 0, lse_head_stride = 0;

  int batch = 0, n_heads = 0, n_kv_heads = 0, seqlen_q = 0, seqlen_k = 0, head_dim = 0;
  DType dtype = DType::kFloat32;  // kFloat16 or kBFloat16

  float softmax_scale = 1.f;
  float softcap = 0.f;  // 0: none (score_rule.cuh)
  // Query i sits at key position i + diagonal_offset (Sk - Sq bottom-right, 0 top-left) and sees
  // keys in [pos - window_left, pos + window_right]; causal is window_right = 0, -1 is unbounded
  // (docs/design.md §2). run_fwd hands the kernel widths >= 0 (with_window_widths).
  int diagonal_offset = 0;
  int window_left = -1, window_right = -1;
};

// Runs the forward kernel for p.dtype and p.head_dim on `stream` (a cudaStream_t, or ignored by
// the emulator). Throws std::invalid_argument for a head dim without a compiled kernel or a
// dtype other than kFloat16 / kBFloat16.
void run_fwd(const FwdParams& p, void* stream);

// Head dims with compiled forward and decode kernels (fwd_hdim*.cu, decode_hdim*.cu; dispatch.cuh
// switches over them). The forward's caller zero-pads other head dims to the next one (96 goes
// to 128: its own instantiation spills registers); a cache cannot be padded in place, so decode
// refuses them (the Python side names the backends that take them).
constexpr int kHeadDims[] = {32, 64, 128, 256};

// Split-KV decode (flash-decoding) against a KV cache.
//
// q: (B, Sq, H, D). K/V cache: contiguous (B_cache, S_max, Hkv, D), sequence b in row
// cache_batch_idx[b] (or b), or paged (num_pages, page_size, Hkv, D), key n of sequence b at
// [block_table[b][n / page_size], n % page_size]; the *_batch_stride / *_row_stride fields are
// the strides of the cache's first two dims either way. seqlens_k[b] keys per sequence (after
// any append). Causal/window alignment is bottom-right: query i sits at key position
// i + seqlens_k[b] - Sq and sees keys in [pos - window_left, pos + window_right], -1 unbounded
// (docs/design.md §2; run_decode hands the kernels widths >= 0, with_window_widths).
// With num_splits > 1 every split writes fp32 partials, out_partial (num_splits, B, Sq, H, D)
// and lse_partial (num_splits, B, H, Sq), both contiguous, that a combine kernel merges into
// out and lse; with num_splits == 1 the split kernel writes out and lse itself.
struct DecodeParams {
  const void* q = nullptr;
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  float* out_partial = nullptr;
  float* lse_partial = nullptr;
  const int32_t* seqlens_k = nullptr;        // (B,)
  const int32_t* cache_batch_idx = nullptr;  // (B,) or nullptr
  const int32_t* block_table = nullptr;      // (B, max_pages) or nullptr: contiguous cache
  const float* alibi_slopes = nullptr;       // (B, H) contiguous or nullptr

  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t out_batch_stride = 0, out_row_stride = 0, out_head_stride = 0;
  int64_t lse_batch_stride = 0, lse_head_stride = 0;
  int64_t block_table_batch_stride = 0;

  int batch = 0, n_heads = 0, n_kv_heads = 0, seqlen_q = 0, head_dim = 0;
  int page_size = 0;  // keys per page; ignored without block_table
  int num_splits = 1;
  DType dtype = DType::kFloat32;  // kFloat16 or kBFloat16

  float softmax_scale = 1.f;
  float softcap = 0.f;  // 0: none; else scores are softcap * tanh(q.k * scale / softcap)
  int window_left = -1, window_right = -1;
};

// Runs the split kernel (and the combine kernel when num_splits > 1). Throws
// std::invalid_argument for a head dim without a compiled kernel, a dtype other than kFloat16 /
// kBFloat16, num_splits < 1, num_splits > 1 without partial buffers, or a block table with
// page_size < 1.
void run_decode(const DecodeParams& p, void* stream);

// Query rows (GQA group x new tokens) per block and keys per tile of the decode kernel that
// run_decode picks for `packed_rows` rows at head dim `head_dim`, and whether it uses mma.sync.
struct DecodeTileShape {
  int block_m, block_n;
  bool mma;
};
DecodeTileShape decode_tile_shape(int head_dim, int packed_rows);

}  // namespace attn
