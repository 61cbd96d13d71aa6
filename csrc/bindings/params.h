// params.h — FwdParams and DecodeParams from the plain Python values both bindings receive.
//
// Python (attn/_cuda_backend.py) validates the tensors and passes data pointers, strides and
// sizes as integers, so no binding ever sees a torch type.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <iterator>
#include <stdexcept>
#include <vector>

#include "../cuda/params.h"

namespace attn {

template <size_t N>
void set_strides(int64_t* const (&fields)[N], const std::array<int64_t, N>& strides) {
  for (size_t i = 0; i < N; ++i) *fields[i] = strides[i];
}

inline void check_window(int window_left, int window_right) {
  if (window_left < 0 || window_right < 0) {
    throw std::invalid_argument("attn kernels: window widths must be >= 0 (pass a large width for unbounded)");
  }
}

inline DType dtype_from_code(int dtype) {
  if (dtype != static_cast<int>(DType::kF16) && dtype != static_cast<int>(DType::kBF16)) {
    throw std::invalid_argument("attn kernels: dtype code must be 0 (float16) or 1 (bfloat16)");
  }
  return static_cast<DType>(dtype);
}

// pointers: q, k, v, out, lse, alibi_slopes (0 = absent); strides: (q, k, v, out) x (batch, row,
// head), then lse (batch, head); sizes: batch, n_heads, n_kv_heads, seqlen_q, seqlen_k, head_dim.
inline FwdParams make_fwd_params(const std::array<uintptr_t, 6>& ptrs, const std::array<int64_t, 14>& strides,
                                 const std::array<int, 6>& sizes, int dtype, float softmax_scale, float softcap,
                                 int diagonal_offset, int window_left, int window_right) {
  FwdParams p{};
  p.q = reinterpret_cast<const void*>(ptrs[0]);
  p.k = reinterpret_cast<const void*>(ptrs[1]);
  p.v = reinterpret_cast<const void*>(ptrs[2]);
  p.out = reinterpret_cast<void*>(ptrs[3]);
  p.lse = reinterpret_cast<float*>(ptrs[4]);
  p.alibi_slopes = reinterpret_cast<const float*>(ptrs[5]);
  set_strides({&p.q_batch_stride, &p.q_row_stride, &p.q_head_stride, &p.k_batch_stride, &p.k_row_stride,
               &p.k_head_stride, &p.v_batch_stride, &p.v_row_stride, &p.v_head_stride, &p.out_batch_stride,
               &p.out_row_stride, &p.out_head_stride, &p.lse_batch_stride, &p.lse_head_stride},
              strides);
  p.batch = sizes[0];
  p.n_heads = sizes[1];
  p.n_kv_heads = sizes[2];
  p.seqlen_q = sizes[3];
  p.seqlen_k = sizes[4];
  p.head_dim = sizes[5];
  check_window(window_left, window_right);
  p.dtype = dtype_from_code(dtype);
  p.softmax_scale = softmax_scale;
  p.softcap = softcap;
  p.diagonal_offset = diagonal_offset;
  p.window_left = window_left;
  p.window_right = window_right;
  return p;
}

// pointers: q, k_cache, v_cache, out, lse, out_partial, lse_partial, seqlens_k, cache_batch_idx,
// block_table, alibi_slopes (0 = absent); strides: (q, k_cache, v_cache, out) x (batch, row, head),
// lse (batch, head), block_table batch; sizes: batch, n_heads, n_kv_heads, seqlen_q, head_dim,
// page_size, num_splits.
inline DecodeParams make_decode_params(const std::array<uintptr_t, 11>& ptrs, const std::array<int64_t, 15>& strides,
                                       const std::array<int, 7>& sizes, int dtype, float softmax_scale, float softcap,
                                       int window_left, int window_right) {
  DecodeParams p{};
  p.q = reinterpret_cast<const void*>(ptrs[0]);
  p.k_cache = reinterpret_cast<const void*>(ptrs[1]);
  p.v_cache = reinterpret_cast<const void*>(ptrs[2]);
  p.out = reinterpret_cast<void*>(ptrs[3]);
  p.lse = reinterpret_cast<float*>(ptrs[4]);
  p.out_partial = reinterpret_cast<float*>(ptrs[5]);
  p.lse_partial = reinterpret_cast<float*>(ptrs[6]);
  p.seqlens_k = reinterpret_cast<const int32_t*>(ptrs[7]);
  p.cache_batch_idx = reinterpret_cast<const int32_t*>(ptrs[8]);
  p.block_table = reinterpret_cast<const int32_t*>(ptrs[9]);
  p.alibi_slopes = reinterpret_cast<const float*>(ptrs[10]);
  set_strides({&p.q_batch_stride, &p.q_row_stride, &p.q_head_stride, &p.k_batch_stride, &p.k_row_stride,
               &p.k_head_stride, &p.v_batch_stride, &p.v_row_stride, &p.v_head_stride, &p.out_batch_stride,
               &p.out_row_stride, &p.out_head_stride, &p.lse_batch_stride, &p.lse_head_stride,
               &p.block_table_batch_stride},
              strides);
  p.batch = sizes[0];
  p.n_heads = sizes[1];
  p.n_kv_heads = sizes[2];
  p.seqlen_q = sizes[3];
  p.head_dim = sizes[4];
  p.page_size = sizes[5];
  p.num_splits = sizes[6];
  if (p.num_splits < 1 || (p.num_splits > 1 && (p.out_partial == nullptr || p.lse_partial == nullptr))) {
    throw std::invalid_argument("attn decode: num_splits must be >= 1, with partial buffers when > 1");
  }
  if (p.block_table != nullptr && p.page_size < 1) throw std::invalid_argument("attn decode: page_size must be >= 1");
  check_window(window_left, window_right);
  p.dtype = dtype_from_code(dtype);
  p.softmax_scale = softmax_scale;
  p.softcap = softcap;
  p.window_left = window_left;
  p.window_right = window_right;
  return p;
}

// The decode kernels' packed-row tile, for the Python side's split heuristic.
inline pybind11::tuple decode_tile(int head_dim, int packed_rows) {
  const DecodeTileShape s = decode_tile_shape(head_dim, packed_rows);
  return pybind11::make_tuple(s.block_m, s.block_n, s.mma);
}

template <typename T>
pybind11::tuple as_tuple(const T& values) {
  return pybind11::tuple(pybind11::cast(std::vector<int>(std::begin(values), std::end(values))));
}

}  // namespace attn
