// fwd_launch.cu — picks the compiled forward kernel for a head dim and dtype.
#include <stdexcept>
#include <string>

#include "../simt/simt.h"
#include "params.h"

namespace attn {

// Defined in fwd_kernel.cuh, instantiated one head dim per file (fwd_hdim*.cu) so that the
// instantiations compile in parallel.
template <int D, typename T>
void launch_fwd(const FwdParams& p, void* stream);

namespace {

template <int D>
void launch_for_dtype(const FwdParams& p, void* stream) {
  if (p.dtype == DType::kF16) {
    launch_fwd<D, simt::half>(p, stream);
  } else {
    launch_fwd<D, simt::bf16>(p, stream);
  }
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
