// Runtime choice of the kernel build for the CPU at hand.
#include "kernels.h"

#include <stdexcept>

namespace attn_cpu {

namespace {

bool cpu_has(const std::string& isa) {
#if defined(__x86_64__)
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return isa == "generic";
}

}  // namespace

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const char* isa : {"avx512", "avx2", "generic"})
    if (cpu_has(isa)) out.emplace_back(isa);
  return out;
}

Kernels select_kernels(const std::string& isa) {
  const std::string chosen = isa.empty() ? supported_isas().front() : isa;
  if (!cpu_has(chosen)) throw std::invalid_argument("instruction set '" + chosen + "' is not supported by this CPU");
#if defined(__x86_64__)
  if (chosen == "avx512") return {"avx512", avx512::forward, avx512::decode};
  if (chosen == "avx2") return {"avx2", avx2::forward, avx2::decode};
#endif
  return {"generic", generic::forward, generic::decode};
}

}  // namespace attn_cpu
