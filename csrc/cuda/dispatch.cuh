// dispatch.cuh — calls a kernel launcher with the compile-time head dim and element type that
// runtime parameters name; one place lists what is compiled.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include "../simt/simt.h"
#include "params.h"

namespace attn {

// f(std::integral_constant<int, D>{}) for head_dim == D, one of kHeadDims; throws
// std::invalid_argument naming `what` (e.g. "decode") for any other head dim.
template <typename F>
decltype(auto) with_head_dim(int head_dim, const char* what, F&& f) {
  static_assert(sizeof(kHeadDims) / sizeof(kHeadDims[0]) == 4, "keep the cases below in step with kHeadDims");
  switch (head_dim) {
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    case 256: return f(std::integral_constant<int, 256>{});
    default:
      throw std::invalid_argument(std::string("attn ") + what + ": no kernel compiled for head dim " +
                                  std::to_string(head_dim) + " (compiled: 32, 64, 128, 256)");
  }
}

// f(simt::half{}) or f(simt::bf16{}): the launcher takes the type as decltype of its argument.
template <typename F>
void with_element_type(DType dtype, F&& f) {
  if (dtype == DType::kF16) {
    f(simt::half{});
  } else {
    f(simt::bf16{});
  }
}

}  // namespace attn
