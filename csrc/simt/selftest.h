// selftest.h — kernels that check the emulator itself (exposed as attn.cuda._cuda_sim.selftest).
#pragma once

#include <pybind11/pybind11.h>

namespace simt {
namespace selftest {

void register_kernels(pybind11::module_& m);

}  // namespace selftest
}  // namespace simt
