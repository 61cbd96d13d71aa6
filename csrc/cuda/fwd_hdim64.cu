// fwd_hdim64.cu — forward kernels for head dim 64 (fp16 and bf16).
#include "fwd_kernel.cuh"

namespace attn {

template void launch_fwd<64, simt::half>(const FwdParams& p, void* stream);
template void launch_fwd<64, simt::bf16>(const FwdParams& p, void* stream);

}  // namespace attn
