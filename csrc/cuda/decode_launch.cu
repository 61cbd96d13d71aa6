// decode_launch.cu — picks the compiled decode kernels for a head dim and dtype.
#include "decode_kernel.cuh"
#include "dispatch.cuh"
#include "params.h"

namespace attn {

// Defined in decode_kernel.cuh, instantiated one head dim per file (decode_hdim*.cu) so that
// the instantiations compile in parallel.
template <int D, typename T>
void launch_decode(const DecodeParams& p, void* stream);

DecodeTileShape decode_tile_shape(int head_dim, int packed_rows) {
  return with_head_dim(head_dim, "decode",
                       [&](auto d) { return decode_tile_shape_for<decltype(d)::value>(packed_rows); });
}

void run_decode(const DecodeParams& p, void* stream) {
  if (p.num_splits < 1 || (p.num_splits > 1 && (p.out_partial == nullptr || p.lse_partial == nullptr))) {
    throw std::invalid_argument("attn decode: num_splits must be >= 1, with partial buffers when > 1");
  }
  if (p.block_table != nullptr && p.page_size < 1) throw std::invalid_argument("attn decode: page_size must be >= 1");
  const DecodeParams widths = with_window_widths(p);
  with_head_dim(p.head_dim, "decode", [&](auto d) {
    with_element_type(p.dtype,
                      [&](auto element) { launch_decode<decltype(d)::value, decltype(element)>(widths, stream); });
  });
}

}  // namespace attn
