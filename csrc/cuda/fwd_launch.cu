// fwd_launch.cu — picks the compiled forward kernel for a head dim and dtype.
#include "dispatch.cuh"
#include "params.h"

namespace attn {

// Defined in fwd_kernel.cuh, instantiated one head dim per file (fwd_hdim*.cu) so that the
// instantiations compile in parallel.
template <int D, typename T>
void launch_fwd(const FwdParams& p, void* stream);

void run_fwd(const FwdParams& p, void* stream) {
  const FwdParams widths = with_window_widths(p);
  with_head_dim(p.head_dim, "forward", [&](auto d) {
    with_element_type(p.dtype,
                      [&](auto element) { launch_fwd<decltype(d)::value, decltype(element)>(widths, stream); });
  });
}

}  // namespace attn
