// dtype.h — the element type of q, k, v and out, one enum for the CPU and the CUDA params.
#pragma once

namespace attn {

// The bindings export it as DType.float16 / bfloat16 / float32 (torch's names). The CPU kernels
// take all three; the CUDA kernels take the 16-bit types and throw std::invalid_argument for
// kFloat32.
enum class DType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2 };

}  // namespace attn
