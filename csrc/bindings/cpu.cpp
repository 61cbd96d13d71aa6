// cpu.cpp — attn.cpu._cpu: the CPU kernels. Python fills a params struct (one attribute per field,
// params.h) and calls forward/decode; the GIL is released while the kernels run.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "../cpu/kernels.h"
#include "../cpu/params.h"
#include "params.h"

namespace py = pybind11;
using attn_cpu::DecodeParams;
using attn_cpu::FwdParams;

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "Fused attention kernels for CPU (OpenMP, AVX2/AVX-512 with a portable fallback)";

  attn::bind_dtype(m);

  py::class_<FwdParams> fwd(m, "FwdParams");
  attn::bind_common_fields(fwd)
      .def(py::init<>())
      ATTN_FIELD(FwdParams, q) ATTN_FIELD(FwdParams, k) ATTN_FIELD(FwdParams, v) ATTN_FIELD(FwdParams, out)
      ATTN_FIELD(FwdParams, lse) ATTN_FIELD(FwdParams, bias) ATTN_FIELD(FwdParams, alibi_slopes)
      ATTN_FIELD(FwdParams, seqlen_k) ATTN_FIELD(FwdParams, diagonal_offset)
      ATTN_FIELD(FwdParams, bias_batch_stride) ATTN_FIELD(FwdParams, bias_head_stride)
      ATTN_FIELD(FwdParams, bias_row_stride) ATTN_FIELD(FwdParams, bias_col_stride) ATTN_FIELD(FwdParams, num_threads);

  py::class_<DecodeParams> decode(m, "DecodeParams");
  attn::bind_common_fields(decode)
      .def(py::init<>())
      ATTN_FIELD(DecodeParams, q) ATTN_FIELD(DecodeParams, k_cache) ATTN_FIELD(DecodeParams, v_cache)
      ATTN_FIELD(DecodeParams, out) ATTN_FIELD(DecodeParams, lse) ATTN_FIELD(DecodeParams, alibi_slopes)
      ATTN_FIELD(DecodeParams, seqlens_k) ATTN_FIELD(DecodeParams, cache_batch_idx)
      ATTN_FIELD(DecodeParams, block_table) ATTN_FIELD(DecodeParams, block_table_batch_stride)
      ATTN_FIELD(DecodeParams, page_size) ATTN_FIELD(DecodeParams, num_splits) ATTN_FIELD(DecodeParams, num_threads);

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
