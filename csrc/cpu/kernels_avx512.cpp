// Kernels compiled for the avx512 instruction set (see kernels_isa.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "convert.h"
#include "params.h"
#include "workspace.h"

#if defined(__x86_64__)
// Only called when the CPU reports AVX-512 F/VL/BW/DQ (kernels.cpp checks at run time).
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
#endif
#define ATTN_CPU_ISA avx512
#define ATTN_CPU_VEC_BYTES 64
#include "kernels_isa.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
