// simt.h — the one header a kernel includes for warp-level primitives.
//
// Under nvcc every function below is the real instruction (inline PTX or a CUDA intrinsic).
// Under a host compiler the same names run on the SIMT emulator in simt_host.h: each block's
// threads are cooperative fibers, collectives are barriers, and the PTX fragment layouts are
// reproduced exactly, so a kernel's logic can be executed and checked on a CPU.
//
// Kernel code written against this header must:
//   * use simt::dynamic_smem<T>() for shared memory (no static or extern __shared__ arrays);
//   * call collectives (shuffles, mma, ldmatrix) from all 32 lanes of a warp with a full mask;
//   * launch through simt::launch(kernel, grid, block, smem_bytes, stream, args...).
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Fully unrolls the loop that follows (register arrays must be indexed by constants on a GPU).
#if defined(__CUDACC__)
#define SIMT_UNROLL _Pragma("unroll")
#else
#define SIMT_UNROLL _Pragma("GCC unroll 64")
#endif

namespace simt {

// The 16-bit element types an mma/ldmatrix operand may hold.
using half = __half;
using bf16 = __nv_bfloat16;

}  // namespace simt

#if defined(__CUDACC__)

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace simt {

using Dim3 = dim3;

template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char simt_dynamic_smem[];
  return reinterpret_cast<T*>(simt_dynamic_smem);
}

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// D (16x8 f32) = A (16x16, row) * B (16x8, col) + C; fragment layouts in docs/design.md §5.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             const float (&c)[4]);

template <>
__device__ __forceinline__ void mma_m16n8k16<half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                   const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}

template <>
__device__ __forceinline__ void mma_m16n8k16<bf16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                   const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}

// ldmatrix: lane l supplies the address of row (l % 8) of matrix (l / 8); 16-byte aligned rows.
__device__ __forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_address(row)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_address(row)));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(smem_address(row)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_address(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
}

// Copies 16 bytes global -> shared asynchronously; with valid == false writes 16 zero bytes.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem_dst)), "l"(gmem_src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most `Pending` of this thread's committed groups are still in flight.
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
}

__device__ __forceinline__ void syncwarp() { __syncwarp(0xffffffffu); }

template <typename T>
__device__ __forceinline__ T shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  return __shfl_xor_sync(mask, value, lane_mask);
}
template <typename T>
__device__ __forceinline__ T shfl_sync(unsigned mask, T value, int src_lane) {
  return __shfl_sync(mask, value, src_lane);
}
template <typename T>
__device__ __forceinline__ T shfl_down_sync(unsigned mask, T value, unsigned delta) {
  return __shfl_down_sync(mask, value, delta);
}
template <typename T>
__device__ __forceinline__ T shfl_up_sync(unsigned mask, T value, unsigned delta) {
  return __shfl_up_sync(mask, value, delta);
}

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

// Launches `kernel` on `stream`, opting in to more than 48 KiB of dynamic shared memory.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), Dim3 grid, Dim3 block, size_t smem_bytes, void* stream, Args&&... args) {
  constexpr size_t kDefaultSmemLimit = 48 * 1024;
  if (smem_bytes > kDefaultSmemLimit) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes)),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  }
  kernel<<<grid, block, smem_bytes, static_cast<cudaStream_t>(stream)>>>(static_cast<Params>(args)...);
  check_cuda(cudaGetLastError(), "kernel launch");
}

}  // namespace simt

#else  // host compiler: the emulator

#include "simt_host.h"

#endif

namespace simt {

// Packs two floats into one 32-bit register of 16-bit elements, `lo` in the low half (the
// lower-indexed element of an mma fragment pair).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);

template <>
__device__ __forceinline__ uint32_t pack2<half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &h, sizeof(bits));
  return bits;
}

template <>
__device__ __forceinline__ uint32_t pack2<bf16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &h, sizeof(bits));
  return bits;
}

// One 16-bit element to or from fp32 (round to nearest even).
template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<half>(half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float to_float<bf16>(bf16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ half from_float<half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ unsigned lane_id() { return threadIdx.x % 32; }
__device__ __forceinline__ unsigned warp_id() { return threadIdx.x / 32; }

}  // namespace simt
