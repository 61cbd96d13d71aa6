// bindings.cpp — attn._cuda: the forward kernel on a CUDA stream.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <iterator>
#include <vector>

#include "params.h"
#include "py_params.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "CUDA forward attention kernels (see attn/_cuda_backend.py for the Python side)";
  m.def(
      "forward",
      [](uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse, const std::array<int64_t, 14>& strides,
         const std::array<int, 6>& sizes, int dtype, float softmax_scale, bool causal, int diagonal_offset,
         uintptr_t stream) {
        const attn::FwdParams p =
            attn::make_fwd_params(q, k, v, out, lse, strides, sizes, dtype, softmax_scale, causal, diagonal_offset);
        attn::run_fwd(p, reinterpret_cast<void*>(stream));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("strides"), py::arg("sizes"),
      py::arg("dtype"), py::arg("softmax_scale"), py::arg("causal"), py::arg("diagonal_offset"), py::arg("stream"));
  m.attr("head_dims") = py::tuple(py::cast(std::vector<int>(std::begin(attn::kFwdHeadDims), std::end(attn::kFwdHeadDims))));
}
