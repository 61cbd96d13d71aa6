// fwd_hdim128.cu — forward kernels for head dim 128 (fp16 and bf16).
#include "fwd_kernel.cuh"

namespace attn {

template void launch_fwd<128, simt::half>(const FwdParams& p, void* stream);
template void launch_fwd<128, simt::bf16>(const FwdParams& p, void* stream);

}  // namespace attn
