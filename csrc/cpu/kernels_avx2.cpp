// Kernels compiled for the avx2 instruction set (see kernels_isa.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "convert.h"
#include "params.h"
#include "workspace.h"

#if defined(__x86_64__)
// Only called when the CPU reports AVX2 and FMA (kernels.cpp checks at run time).
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif
#define ATTN_CPU_ISA avx2
#define ATTN_CPU_VEC_BYTES 32
#include "kernels_isa.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
