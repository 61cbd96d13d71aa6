// decode_hdim256.cu — decode kernels for head dim 256 (fp16 and bf16).
#include "decode_kernel.cuh"

namespace attn {

template void launch_decode<256, simt::half>(const DecodeParams& p, void* stream);
template void launch_decode<256, simt::bf16>(const DecodeParams& p, void* stream);

}  // namespace attn
