// The kernels of one instruction set. Each kernels_<isa>.cpp sets ATTN_CPU_ISA (namespace)
// and ATTN_CPU_VEC_BYTES, switches the target, and includes this file.
namespace attn_cpu {
namespace ATTN_CPU_ISA {

#include "vec.h"
#include "tiles.h"
#include "fwd_kernel.h"
#include "decode_kernel.h"

}  // namespace ATTN_CPU_ISA
}  // namespace attn_cpu
