// cuda.cpp — attn._cuda: the forward and decode kernels on a CUDA stream.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>


#include "../cuda/params.h"
#include "params.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "CUDA forward and decode attention kernels (see attn/_cuda_backend.py for the Python side)";
  m.def(
      "forward",
      [](const std::array<uintptr_t, 6>& ptrs, const std::array<int64_t, 14>& strides, const std::array<int, 6>& sizes,
         int dtype, float softmax_scale, float softcap, int diagonal_offset, int window_left, int window_right, uintptr_t stream) {
        const attn::FwdParams p = attn::make_fwd_params(ptrs, strides, sizes, dtype, softmax_scale, softcap,
                                                        diagonal_offset, window_left, window_right);
        attn::run_fwd(p, reinterpret_cast<void*>(stream));
      },
      py::arg("ptrs"), py::arg("strides"), py::arg("sizes"), py::arg("dtype"), py::arg("softmax_scale"),
      py::arg("softcap"), py::arg("diagonal_offset"), py::arg("window_left"), py::arg("window_right"), py::arg("stream"));
  m.attr("head_dims") = attn::as_tuple(attn::kHeadDims);
  m.def(
      "decode",
      [](const std::array<uintptr_t, 11>& ptrs, const std::array<int64_t, 15>& strides, const std::array<int, 7>& sizes,
         int dtype, float softmax_scale, float softcap, int window_left, int window_right, uintptr_t stream) {
        const attn::DecodeParams p =
            attn::make_decode_params(ptrs, strides, sizes, dtype, softmax_scale, softcap, window_left, window_right);
        attn::run_decode(p, reinterpret_cast<void*>(stream));
      },
      py::arg("ptrs"), py::arg("strides"), py::arg("sizes"), py::arg("dtype"), py::arg("softmax_scale"),
      py::arg("softcap"), py::arg("window_left"), py::arg("window_right"), py::arg("stream"));
  m.def("decode_tile", &attn::decode_tile, py::arg("head_dim"), py::arg("packed_rows"),
        "(block_m, block_n, uses_mma) of the decode kernel for this many packed query rows");
}
