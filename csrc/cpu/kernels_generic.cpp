// Kernels compiled for the generic instruction set (see kernels_isa.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "convert.h"
#include "params.h"
#include "workspace.h"

// The baseline of the build target (SSE2 on x86-64, NEON on aarch64): 128-bit vectors.
#define ATTN_CPU_ISA generic
#define ATTN_CPU_VEC_BYTES 16
#include "kernels_isa.h"
