// Entry points of the per-instruction-set kernel builds and the runtime choice among them.
#pragma once

#include <string>
#include <vector>

#include "params.h"

namespace attn_cpu {

namespace generic { void forward(const FwdParams&); void decode(const DecodeParams&); }
#if defined(__x86_64__)
namespace avx2 { void forward(const FwdParams&); void decode(const DecodeParams&); }
namespace avx512 { void forward(const FwdParams&); void decode(const DecodeParams&); }
#endif

struct Kernels {
  const char* name;
  void (*forward)(const FwdParams&);
  void (*decode)(const DecodeParams&);
};

// Instruction sets this CPU can run, best first (always ends with "generic").
std::vector<std::string> supported_isas();

// The kernels for `isa` ("" = best supported); throws std::invalid_argument if unsupported.
Kernels select_kernels(const std::string& isa);

}  // namespace attn_cpu
