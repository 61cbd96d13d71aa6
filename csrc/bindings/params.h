// params.h — the one binding style of the three modules (_cuda, _cuda_sim, _cpu): each params
// struct is a Python class with one read/write attribute per field, named as the C++ field, and
// DType is an enum with torch's names.
//
// The launchers in attn/cuda/ and attn/cpu/ allocate the outputs; attn/core/kernel_params.py sets
// the fields: data pointers as integers (tensor.data_ptr(), 0 = absent), sizes and element
// strides, so no binding ever sees a torch type.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <iterator>
#include <vector>

#include "../common/dtype.h"
#include "../cuda/params.h"

// Binds Struct::name as the read/write attribute `name`.
#define ATTN_FIELD(Struct, name) .def_readwrite(#name, &Struct::name)

// Binds the typed pointer Struct::name as the read/write integer attribute `name`.
#define ATTN_POINTER(Struct, name)                                                           \
  .def_property(                                                                             \
      #name, [](const Struct& s) { return reinterpret_cast<uintptr_t>(s.name); },            \
      [](Struct& s, uintptr_t address) { s.name = reinterpret_cast<decltype(s.name)>(address); })

namespace attn {

// The fields every params struct (CPU and CUDA, forward and decode) has: q, k, v, out (batch,
// row, head) and lse (batch, head) element strides, q's sizes, the kv head count, dtype, and the
// score and window options.
template <typename Class>
Class& bind_common_fields(Class& cls) {
  using S = typename Class::type;
  return cls ATTN_FIELD(S, q_batch_stride) ATTN_FIELD(S, q_row_stride) ATTN_FIELD(S, q_head_stride)
      ATTN_FIELD(S, k_batch_stride) ATTN_FIELD(S, k_row_stride) ATTN_FIELD(S, k_head_stride)
      ATTN_FIELD(S, v_batch_stride) ATTN_FIELD(S, v_row_stride) ATTN_FIELD(S, v_head_stride)
      ATTN_FIELD(S, out_batch_stride) ATTN_FIELD(S, out_row_stride) ATTN_FIELD(S, out_head_stride)
      ATTN_FIELD(S, lse_batch_stride) ATTN_FIELD(S, lse_head_stride)
      ATTN_FIELD(S, batch) ATTN_FIELD(S, seqlen_q) ATTN_FIELD(S, n_heads) ATTN_FIELD(S, n_kv_heads)
      ATTN_FIELD(S, head_dim) ATTN_FIELD(S, dtype) ATTN_FIELD(S, softmax_scale) ATTN_FIELD(S, softcap)
      ATTN_FIELD(S, window_left) ATTN_FIELD(S, window_right);
}

// DType.float16 / bfloat16 / float32; module-local, as each of the three modules defines its own.
inline void bind_dtype(pybind11::module_& m) {
  pybind11::enum_<DType>(m, "DType", pybind11::module_local())
      .value("float16", DType::kFloat16)
      .value("bfloat16", DType::kBFloat16)
      .value("float32", DType::kFloat32);
}

// DType, FwdParams and DecodeParams of the CUDA kernels (cuda/params.h).
inline void bind_cuda_params(pybind11::module_& m) {
  namespace py = pybind11;
  bind_dtype(m);
  py::class_<FwdParams> fwd(m, "FwdParams", py::module_local());
  bind_common_fields(fwd)
      .def(py::init<>())
      ATTN_POINTER(FwdParams, q) ATTN_POINTER(FwdParams, k) ATTN_POINTER(FwdParams, v) ATTN_POINTER(FwdParams, out)
      ATTN_POINTER(FwdParams, lse) ATTN_POINTER(FwdParams, alibi_slopes)
      ATTN_FIELD(FwdParams, seqlen_k) ATTN_FIELD(FwdParams, diagonal_offset);

  py::class_<DecodeParams> decode(m, "DecodeParams", py::module_local());
  bind_common_fields(decode)
      .def(py::init<>())
      ATTN_POINTER(DecodeParams, q) ATTN_POINTER(DecodeParams, k_cache) ATTN_POINTER(DecodeParams, v_cache)
      ATTN_POINTER(DecodeParams, out) ATTN_POINTER(DecodeParams, lse) ATTN_POINTER(DecodeParams, out_partial)
      ATTN_POINTER(DecodeParams, lse_partial) ATTN_POINTER(DecodeParams, seqlens_k)
      ATTN_POINTER(DecodeParams, cache_batch_idx) ATTN_POINTER(DecodeParams, block_table)
      ATTN_POINTER(DecodeParams, alibi_slopes)
      ATTN_FIELD(DecodeParams, block_table_batch_stride) ATTN_FIELD(DecodeParams, page_size)
      ATTN_FIELD(DecodeParams, num_splits);
}

// The compiled kernels' shapes: `head_dims` and `decode_tile`.
inline void bind_cuda_shapes(pybind11::module_& m) {
  namespace py = pybind11;
  m.attr("head_dims") = py::tuple(py::cast(std::vector<int>(std::begin(kHeadDims), std::end(kHeadDims))));
  m.def(
      "decode_tile",
      [](int head_dim, int packed_rows) {
        const DecodeTileShape s = decode_tile_shape(head_dim, packed_rows);
        return py::make_tuple(s.block_m, s.block_n, s.mma);
      },
      py::arg("head_dim"), py::arg("packed_rows"),
      "(block_m, block_n, uses_mma) of the decode kernel for this many packed query rows");
}

}  // namespace attn
