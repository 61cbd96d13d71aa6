// fwd_hdim256.cu — forward kernels for head dim 256 (fp16 and bf16).
#include "fwd_kernel.cuh"

namespace attn {

template void launch_fwd<256, simt::half>(const FwdParams& p, void* stream);
template void launch_fwd<256, simt::bf16>(const FwdParams& p, void* stream);

}  // namespace attn
