// decode_launch.cu — picks the compiled decode kernels for a head dim and dtype.
#include <stdexcept>
#include <string>

#include "decode_kernel.cuh"
#include "dtype_dispatch.cuh"
#include "params.h"

namespace attn {

// Defined in decode_kernel.cuh, instantiated one head dim per file (decode_hdim*.cu) so that
// the instantiations compile in parallel.
template <int D, typename T>
void launch_decode(const DecodeParams& p, void* stream);

namespace {

[[noreturn]] void no_kernel(int head_dim) {
  throw std::invalid_argument("attn decode: no kernel compiled for head dim " + std::to_string(head_dim) +
                              " (compiled: 32, 64, 128, 256)");
}

template <int D>
void launch_for_dtype(const DecodeParams& p, void* stream) {
  with_element_type(p.dtype, [&](auto element) { launch_decode<D, decltype(element)>(p, stream); });
}

}  // namespace

DecodeTileShape decode_tile_shape(int head_dim, int packed_rows) {
  switch (head_dim) {
    case 32: return decode_tile_shape_for<32>(packed_rows);
    case 64: return decode_tile_shape_for<64>(packed_rows);
    case 128: return decode_tile_shape_for<128>(packed_rows);
    case 256: return decode_tile_shape_for<256>(packed_rows);
    default: no_kernel(head_dim);
  }
}

void run_decode(const DecodeParams& p, void* stream) {
  switch (p.head_dim) {
    case 32: return launch_for_dtype<32>(p, stream);
    case 64: return launch_for_dtype<64>(p, stream);
    case 128: return launch_for_dtype<128>(p, stream);
    case 256: return launch_for_dtype<256>(p, stream);
    default: no_kernel(p.head_dim);
  }
}

}  // namespace attn
