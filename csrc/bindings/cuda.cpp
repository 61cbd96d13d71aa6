// cuda.cpp — attn.cuda._cuda: the forward and decode kernels on a CUDA stream.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "../cuda/params.h"
#include "params.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "CUDA forward and decode attention kernels (see attn/cuda/ for the Python side)";
  attn::bind_cuda_params(m);
  attn::bind_cuda_shapes(m);
  m.def(
      "forward",
      [](const attn::FwdParams& p, uintptr_t stream) { attn::run_fwd(p, reinterpret_cast<void*>(stream)); },
      py::arg("params"), py::arg("stream"), "Attention forward into params.out / params.lse on the cudaStream_t `stream`");
  m.def(
      "decode",
      [](const attn::DecodeParams& p, uintptr_t stream) { attn::run_decode(p, reinterpret_cast<void*>(stream)); },
      py::arg("params"), py::arg("stream"), "Split-KV decode into params.out / params.lse on the cudaStream_t `stream`");
}
