// dtype_dispatch.cuh — calls a kernel launcher with the element type a DType names.
#pragma once

#include "../simt/simt.h"
#include "params.h"

namespace attn {

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
