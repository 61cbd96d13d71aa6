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
// Throws std::invalid_argument for kFloat32 (the Python side refuses float32 before launching).
template <typename F>
void with_element_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16: return f(simt::half{});
    case DType::kBFloat16: return f(simt::bf16{});
    case DType::kFloat32: break;
  }
  throw std::invalid_argument("attn CUDA kernels: dtype must be float16 or bfloat16");
}

// The width that stands for an unbounded window side (-1 in the params, docs/design.md §2): no
// |query position - key| reaches it, and position + width + 1 stays within int for the
// sequences the kernels' int key arithmetic indexes (below 2^30 keys).
constexpr int kUnboundedWindow = 1 << 30;

// p with its unbounded window sides (< 0) as kUnboundedWindow: the kernels compare widths >= 0.
template <typename Params>
Params with_window_widths(Params p) {
  if (p.window_left < 0) p.window_left = kUnboundedWindow;
  if (p.window_right < 0) p.window_right = kUnboundedWindow;
  return p;
}

}  // namespace attn
