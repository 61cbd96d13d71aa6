// simt_host.h — the host side of simt.h: a SIMT emulator with CUDA semantics.
//
// Every block runs blockDim threads as cooperative fibers on one OS thread (blocks may be spread
// over several OS threads). A fiber runs until it reaches a synchronization point:
//   * __syncthreads(): a block barrier; all threads must arrive at the same call site;
//   * warp collectives (shuffles, mma, ldmatrix): a barrier of the warp's 32 lanes, with a full
//     mask, at the same call site; the last lane to arrive computes every lane's result.
// Between synchronization points a fiber is never interrupted, so the order in which fibers run
// (the schedule) decides which races show up. Dynamic shared memory starts as NaN (0xFF bytes);
// cp.async copies land either when issued or only at the wait that retires their group (the
// destination reads as NaN until then). Misuse is reported as simt::Error with the call site,
// including races between warps on shared memory moved by cp.async and read by ldmatrix.
//
// Include through simt.h, never directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// CUDA's host_defines.h makes __shared__ expand to nothing on a host compiler, which would turn a
// shared array into a per-thread one without a word; make any use a compile error instead.
#undef __shared__
#define __shared__ simt_emulator_has_no_static_shared_memory_use_simt_dynamic_smem
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace simt {

struct Dim3 {
  unsigned x, y, z;
  constexpr Dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// A misuse of CUDA semantics found by the emulator (deadlock, divergent barrier, bad address...).
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Schedule {
  kWarpFirst,   // run one warp as far as it can before the next (default)
  kRoundRobin,  // threads take turns, one synchronization point each
  kReverse,     // warp-first, highest warp and lane first
  kRandom,      // a seeded random runnable thread at every switch
};

enum class CpAsyncLanding {
  kAtIssue,  // the copy lands when issued
  kAtWait,   // the destination is NaN until the cp.async wait that retires the group
};

struct Options {
  Schedule schedule = Schedule::kWarpFirst;
  uint64_t seed = 0;
  CpAsyncLanding cp_async = CpAsyncLanding::kAtIssue;
  int os_threads = 1;              // blocks run on this many OS threads
  // Reports cp.async / ldmatrix traffic between warps that no __syncthreads (or no cp.async
  // wait) orders, whatever the schedule. Plain loads and stores are not tracked.
  bool racecheck = true;
  size_t stack_bytes = 64 * 1024;  // per fiber, usable
};

struct Stats {
  uint64_t blocks = 0, mma = 0, ldmatrix = 0, shuffles = 0, block_barriers = 0, switches = 0;
  uint64_t cp_async_bytes = 0;  // global memory read by cp.async (zero-filled chunks read nothing)
};

// Options for the following launches on this process, and counters since the last reset.
Options& options();
Stats stats();
void reset_stats();

namespace emu {

struct Site {
  const char* file;
  int line;
};

Dim3 thread_idx();
Dim3 block_idx();
Dim3 block_dim();
Dim3 grid_dim();
unsigned char* dynamic_smem_base();

void sync_block(Site site);

void sync_warp(Site site);

enum class Shuffle { kIdx, kXor, kDown, kUp };
uint32_t shuffle(Shuffle kind, unsigned mask, uint32_t value, int arg, Site site);

enum class MmaType { kF16, kBF16 };
void mma_m16n8k16(MmaType type, float* d, const uint32_t* a, const uint32_t* b, const float* c, Site site);
void ldmatrix(int matrices, bool trans, uint32_t* r, const void* row, Site site);

void cp_async_16(void* smem_dst, const void* gmem_src, bool valid, Site site);
void cp_async_commit();
void cp_async_wait(int pending);

// Runs body() once per thread of every block of the grid, under options().
void launch(Dim3 grid, Dim3 block, size_t smem_bytes, const std::function<void()>& body);

}  // namespace emu

template <typename T>
inline T* dynamic_smem() {
  return reinterpret_cast<T*>(emu::dynamic_smem_base());
}

template <typename T>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4],
                         emu::Site site = {__builtin_FILE(), __builtin_LINE()}) {
  static_assert(std::is_same<T, half>::value || std::is_same<T, bf16>::value, "mma operands are half or bf16");
  emu::mma_m16n8k16(std::is_same<T, half>::value ? emu::MmaType::kF16 : emu::MmaType::kBF16, d, a, b, c, site);
}

#define SIMT_HOST_LDMATRIX(NAME, N, TRANS)                                                   \
  inline void NAME(uint32_t (&r)[N], const void* row,                                         \
                   emu::Site site = {__builtin_FILE(), __builtin_LINE()}) {                   \
    emu::ldmatrix(N, TRANS, r, row, site);                                                    \
  }
SIMT_HOST_LDMATRIX(ldmatrix_x1, 1, false)
SIMT_HOST_LDMATRIX(ldmatrix_x2, 2, false)
SIMT_HOST_LDMATRIX(ldmatrix_x4, 4, false)
SIMT_HOST_LDMATRIX(ldmatrix_x1_trans, 1, true)
SIMT_HOST_LDMATRIX(ldmatrix_x2_trans, 2, true)
SIMT_HOST_LDMATRIX(ldmatrix_x4_trans, 4, true)
#undef SIMT_HOST_LDMATRIX

// A barrier of the warp's 32 lanes (__syncwarp with a full mask).
inline void syncwarp(emu::Site site = {__builtin_FILE(), __builtin_LINE()}) { emu::sync_warp(site); }

inline void cp_async_16(void* smem_dst, const void* gmem_src, bool valid,
                        emu::Site site = {__builtin_FILE(), __builtin_LINE()}) {
  emu::cp_async_16(smem_dst, gmem_src, valid, site);
}
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int Pending>
inline void cp_async_wait() {
  emu::cp_async_wait(Pending);
}

template <typename T>
inline T shuffle_as(emu::Shuffle kind, unsigned mask, T value, int arg, emu::Site site) {
  static_assert(sizeof(T) == 4, "the emulator shuffles 32-bit values");
  uint32_t bits;
  memcpy(&bits, &value, 4);
  bits = emu::shuffle(kind, mask, bits, arg, site);
  memcpy(&value, &bits, 4);
  return value;
}
template <typename T>
inline T shfl_xor_sync(unsigned mask, T value, int lane_mask, emu::Site site = {__builtin_FILE(), __builtin_LINE()}) {
  return shuffle_as(emu::Shuffle::kXor, mask, value, lane_mask, site);
}
template <typename T>
inline T shfl_sync(unsigned mask, T value, int src_lane, emu::Site site = {__builtin_FILE(), __builtin_LINE()}) {
  return shuffle_as(emu::Shuffle::kIdx, mask, value, src_lane, site);
}
template <typename T>
inline T shfl_down_sync(unsigned mask, T value, unsigned delta, emu::Site site = {__builtin_FILE(), __builtin_LINE()}) {
  return shuffle_as(emu::Shuffle::kDown, mask, value, static_cast<int>(delta), site);
}
template <typename T>
inline T shfl_up_sync(unsigned mask, T value, unsigned delta, emu::Site site = {__builtin_FILE(), __builtin_LINE()}) {
  return shuffle_as(emu::Shuffle::kUp, mask, value, static_cast<int>(delta), site);
}

// Runs `kernel` on the emulator, synchronously; `stream` is ignored.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), Dim3 grid, Dim3 block, size_t smem_bytes, void* /*stream*/,
            Args&&... args) {
  const std::tuple<Params...> bound(static_cast<Params>(args)...);
  emu::launch(grid, block, smem_bytes, [&] { std::apply(kernel, bound); });
}

}  // namespace simt

// CUDA built-ins. Macros (not objects) so that the call site of every barrier is recorded and
// no two __syncthreads() can be merged into one by the optimizer.
#define threadIdx (::simt::emu::thread_idx())
#define blockIdx (::simt::emu::block_idx())
#define blockDim (::simt::emu::block_dim())
#define gridDim (::simt::emu::grid_dim())
#define __syncthreads() (::simt::emu::sync_block(::simt::emu::Site{__FILE__, __LINE__}))
