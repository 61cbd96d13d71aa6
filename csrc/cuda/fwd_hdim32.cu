// fwd_hdim32.cu — forward kernels for head dim 32 (fp16 and bf16).
#include "fwd_kernel.cuh"

namespace attn {

template void launch_fwd<32, simt::half>(const FwdParams& p, void* stream);
template void launch_fwd<32, simt::bf16>(const FwdParams& p, void* stream);

}  // namespace attn
