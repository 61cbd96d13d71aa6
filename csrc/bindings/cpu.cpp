// attn._cpu: the Python binding. Python fills a params struct (pointers as integers, sizes,
// element strides) and calls forward/decode; the GIL is released while the kernels run.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../cpu/kernels.h"
#include "../cpu/params.h"

namespace py = pybind11;
using attn_cpu::DecodeParams;
using attn_cpu::FwdParams;

#define FIELD(Struct, name) .def_readwrite(#name, &Struct::name)

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "Fused attention kernels for CPU (OpenMP, AVX2/AVX-512 with a portable fallback)";

  py::enum_<attn_cpu::DType>(m, "DType")
      .value("float32", attn_cpu::DType::kFloat32)
      .value("float16", attn_cpu::DType::kFloat16)
      .value("bfloat16", attn_cpu::DType::kBFloat16);

  py::class_<FwdParams>(m, "FwdParams")
      .def(py::init<>())
      FIELD(FwdParams, q) FIELD(FwdParams, k) FIELD(FwdParams, v) FIELD(FwdParams, out) FIELD(FwdParams, lse)
      FIELD(FwdParams, bias) FIELD(FwdParams, alibi_slopes) FIELD(FwdParams, dtype)
      FIELD(FwdParams, batch) FIELD(FwdParams, seqlen_q) FIELD(FwdParams, seqlen_k) FIELD(FwdParams, n_heads)
      FIELD(FwdParams, n_kv_heads) FIELD(FwdParams, head_dim)
      FIELD(FwdParams, q_batch_stride) FIELD(FwdParams, q_row_stride) FIELD(FwdParams, q_head_stride)
      FIELD(FwdParams, k_batch_stride) FIELD(FwdParams, k_row_stride) FIELD(FwdParams, k_head_stride)
      FIELD(FwdParams, v_batch_stride) FIELD(FwdParams, v_row_stride) FIELD(FwdParams, v_head_stride)
      FIELD(FwdParams, out_batch_stride) FIELD(FwdParams, out_row_stride) FIELD(FwdParams, out_head_stride)
      FIELD(FwdParams, lse_batch_stride) FIELD(FwdParams, lse_head_stride)
      FIELD(FwdParams, bias_batch_stride) FIELD(FwdParams, bias_head_stride) FIELD(FwdParams, bias_row_stride)
      FIELD(FwdParams, bias_col_stride)
      FIELD(FwdParams, softmax_scale) FIELD(FwdParams, softcap) FIELD(FwdParams, diag_offset)
      FIELD(FwdParams, window_left) FIELD(FwdParams, window_right) FIELD(FwdParams, num_threads);

  py::class_<DecodeParams>(m, "DecodeParams")
      .def(py::init<>())
      FIELD(DecodeParams, q) FIELD(DecodeParams, k_cache) FIELD(DecodeParams, v_cache) FIELD(DecodeParams, out)
      FIELD(DecodeParams, lse) FIELD(DecodeParams, alibi_slopes) FIELD(DecodeParams, cache_seqlens)
      FIELD(DecodeParams, cache_batch_idx) FIELD(DecodeParams, block_table) FIELD(DecodeParams, dtype)
      FIELD(DecodeParams, batch) FIELD(DecodeParams, seqlen_q) FIELD(DecodeParams, n_heads)
      FIELD(DecodeParams, n_kv_heads) FIELD(DecodeParams, head_dim) FIELD(DecodeParams, page_size)
      FIELD(DecodeParams, block_table_batch_stride)
      FIELD(DecodeParams, q_batch_stride) FIELD(DecodeParams, q_row_stride) FIELD(DecodeParams, q_head_stride)
      FIELD(DecodeParams, k_batch_stride) FIELD(DecodeParams, k_row_stride) FIELD(DecodeParams, k_head_stride)
      FIELD(DecodeParams, v_batch_stride) FIELD(DecodeParams, v_row_stride) FIELD(DecodeParams, v_head_stride)
      FIELD(DecodeParams, out_batch_stride) FIELD(DecodeParams, out_row_stride)
      FIELD(DecodeParams, out_head_stride) FIELD(DecodeParams, lse_batch_stride)
      FIELD(DecodeParams, lse_head_stride) FIELD(DecodeParams, softmax_scale) FIELD(DecodeParams, softcap)
      FIELD(DecodeParams, window_left) FIELD(DecodeParams, window_right) FIELD(DecodeParams, num_splits)
      FIELD(DecodeParams, num_threads);

  m.def("supported_isas", &attn_cpu::supported_isas, "Instruction sets this CPU can run, best first");
  m.def(
      "forward", [](const FwdParams& p, const std::string& isa) { attn_cpu::select_kernels(isa).forward(p); },
      py::arg("params"), py::arg("isa") = "", py::call_guard<py::gil_scoped_release>(),
      "Attention forward into params.out / params.lse (isa: '' = best supported)");
  m.def(
      "decode", [](const DecodeParams& p, const std::string& isa) { attn_cpu::select_kernels(isa).decode(p); },
      py::arg("params"), py::arg("isa") = "", py::call_guard<py::gil_scoped_release>(),
      "Split-KV decode into params.out / params.lse (isa: '' = best supported)");
}
