// decode_hdim32.cu — decode kernels for head dim 32 (fp16 and bf16).
#include "decode_kernel.cuh"

namespace attn {

template void launch_decode<32, simt::half>(const DecodeParams& p, void* stream);
template void launch_decode<32, simt::bf16>(const DecodeParams& p, void* stream);

}  // namespace attn
