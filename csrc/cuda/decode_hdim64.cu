// decode_hdim64.cu — decode kernels for head dim 64 (fp16 and bf16).
#include "decode_kernel.cuh"

namespace attn {

template void launch_decode<64, simt::half>(const DecodeParams& p, void* stream);
template void launch_decode<64, simt::bf16>(const DecodeParams& p, void* stream);

}  // namespace attn
