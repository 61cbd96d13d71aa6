// py_params.h — FwdParams from the plain Python values both bindings receive.
//
// Python (attn/_cuda_backend.py) validates the tensors and passes data pointers, strides and
// sizes as integers, so no binding ever sees a torch type.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>

#include "params.h"

namespace attn {

// strides: (q, k, v, out) x (batch, row, head), then lse (batch, head);
// sizes: batch, n_heads, n_kv_heads, seqlen_q, seqlen_k, head_dim.
inline FwdParams make_fwd_params(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse,
                                 const std::array<int64_t, 14>& strides, const std::array<int, 6>& sizes, int dtype,
                                 float softmax_scale, bool causal, int diagonal_offset) {
  if (dtype != static_cast<int>(DType::kF16) && dtype != static_cast<int>(DType::kBF16)) {
    throw std::invalid_argument("attn forward: dtype code must be 0 (float16) or 1 (bfloat16)");
  }
  FwdParams p{};
  p.q = reinterpret_cast<const void*>(q);
  p.k = reinterpret_cast<const void*>(k);
  p.v = reinterpret_cast<const void*>(v);
  p.out = reinterpret_cast<void*>(out);
  p.lse = reinterpret_cast<float*>(lse);
  int64_t* fields[14] = {&p.q_batch_stride,   &p.q_row_stride,   &p.q_head_stride,   &p.k_batch_stride,
                         &p.k_row_stride,     &p.k_head_stride,  &p.v_batch_stride,  &p.v_row_stride,
                         &p.v_head_stride,    &p.out_batch_stride, &p.out_row_stride, &p.out_head_stride,
                         &p.lse_batch_stride, &p.lse_head_stride};
  for (int i = 0; i < 14; ++i) *fields[i] = strides[i];
  p.batch = sizes[0];
  p.n_heads = sizes[1];
  p.n_kv_heads = sizes[2];
  p.seqlen_q = sizes[3];
  p.seqlen_k = sizes[4];
  p.head_dim = sizes[5];
  p.dtype = static_cast<DType>(dtype);
  p.softmax_scale = softmax_scale;
  p.causal = causal;
  p.diagonal_offset = diagonal_offset;
  return p;
}

}  // namespace attn
