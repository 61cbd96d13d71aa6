// fwd_launch.cu — picks the compiled forward kernel for a head dim and dtype.
#include <stdexcept>
#include <string>

#include "dtype_dispatch.cuh"
#include "params.h"

namespace attn {

// Defined in fwd_kernel.cuh, instantiated one head dim per file (fwd_hdim*.cu) so that the
// instantiations compile in parallel.
template <int D, typename T>
void launch_fwd(const FwdParams& p, void* stream);

namespace {

template <int D>
void launch_for_dtype(const FwdParams& p, void* stream) {
  with_element_type(p.dtype, [&](auto element) { launch_fwd<D, decltype(element)>(p, stream); });
}

}  // namespace

void run_fwd(const FwdParams& p, void* stream) {
  switch (p.head_dim) {
    case 32: return launch_for_dtype<32>(p, stream);
    case 64: return launch_for_dtype<64>(p, stream);
    case 128: return launch_for_dtype<128>(p, stream);
    case 256: return launch_for_dtype<256>(p, stream);
    default:
      throw std::invalid_argument("attn forward: no kernel compiled for head dim " + std::to_string(p.head_dim) +
                                  " (compiled: 32, 64, 128, 256)");
  }
}

}  // namespace attn
