// selftest.cpp — kernels for tests/test_simt_*.py: single instructions with fragments chosen
// by the test (so the layouts are checked against the test's own reading of the PTX ISA), and
// kernels with planted bugs that the emulator's schedules and detectors must expose.
#include "selftest.h"

#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <vector>

#include "simt.h"

namespace py = pybind11;

namespace simt {
namespace selftest {
namespace {

constexpr unsigned kFull = 0xffffffffu;

// One warp: lane l passes a[4l..4l+3], b[2l..2l+1], c[4l..4l+3] and gets d[4l..4l+3].
template <typename T>
__global__ void mma_kernel(const uint32_t* a, const uint32_t* b, const float* c, float* d) {
  const int l = threadIdx.x;
  const uint32_t af[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
  const uint32_t bf[2] = {b[2 * l], b[2 * l + 1]};
  const float cf[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
  float df[4];
  mma_m16n8k16<T>(df, af, bf, cf);
  for (int i = 0; i < 4; ++i) d[4 * l + i] = df[i];
}

std::vector<float> mma(const std::string& dtype, const std::vector<uint32_t>& a, const std::vector<uint32_t>& b,
                       const std::vector<float>& c) {
  if (a.size() != 128 || b.size() != 64 || c.size() != 128) {
    throw std::invalid_argument("mma: expected 32 lanes x (4 a, 2 b, 4 c) values");
  }
  std::vector<float> d(128);
  if (dtype == "float16") {
    launch(mma_kernel<half>, Dim3(1), Dim3(32), 0, nullptr, a.data(), b.data(), c.data(), d.data());
  } else if (dtype == "bfloat16") {
    launch(mma_kernel<bf16>, Dim3(1), Dim3(32), 0, nullptr, a.data(), b.data(), c.data(), d.data());
  } else {
    throw std::invalid_argument("mma: dtype must be 'float16' or 'bfloat16'");
  }
  return d;
}

// One warp: copies `image` (16-bit values) into shared memory, then lane l runs ldmatrix with
// its row address at byte offset row_offsets[l]; regs[l * matrices + m] is lane l's register m.
__global__ void ldmatrix_kernel(const uint16_t* image, int n, const int* row_offsets, int matrices, bool trans,
                                uint32_t* regs) {
  uint16_t* smem = dynamic_smem<uint16_t>();
  for (int i = threadIdx.x; i < n; i += 32) smem[i] = image[i];
  __syncthreads();
  const int l = threadIdx.x;
  const void* row = reinterpret_cast<const unsigned char*>(smem) + row_offsets[l];
  uint32_t r[4] = {};
  if (matrices == 1) {
    uint32_t x[1];
    trans ? ldmatrix_x1_trans(x, row) : ldmatrix_x1(x, row);
    r[0] = x[0];
  } else if (matrices == 2) {
    uint32_t x[2];
    trans ? ldmatrix_x2_trans(x, row) : ldmatrix_x2(x, row);
    memcpy(r, x, sizeof(x));
  } else {
    trans ? ldmatrix_x4_trans(r, row) : ldmatrix_x4(r, row);
  }
  for (int m = 0; m < matrices; ++m) regs[l * matrices + m] = r[m];
}

std::vector<uint32_t> ldmatrix(int matrices, bool trans, const std::vector<uint16_t>& image,
                               const std::vector<int>& row_offsets) {
  if (matrices != 1 && matrices != 2 && matrices != 4) throw std::invalid_argument("ldmatrix: matrices is 1, 2 or 4");
  if (row_offsets.size() != 32) throw std::invalid_argument("ldmatrix: one row offset per lane");
  std::vector<uint32_t> regs(32 * matrices);
  launch(ldmatrix_kernel, Dim3(1), Dim3(32), image.size() * 2, nullptr, image.data(), static_cast<int>(image.size()),
         row_offsets.data(), matrices, trans, regs.data());
  return regs;
}

// 4 warps; thread i stores i + 1 to shared memory and reads back thread (i + 32) % 128's value.
// A warp shuffle sits between the store and the load; only a __syncthreads orders them.
__global__ void exchange_kernel(bool with_barrier, float* out) {
  float* smem = dynamic_smem<float>();
  const int i = threadIdx.x;
  smem[i] = static_cast<float>(i + 1);
  const float lane_sum = shfl_xor_sync(kFull, 1.f, 1);
  if (with_barrier) __syncthreads();
  out[i] = smem[(i + 32) % 128] * lane_sum;  // lane_sum is 1
}

std::vector<float> exchange(bool with_barrier) {
  std::vector<float> out(128);
  launch(exchange_kernel, Dim3(1), Dim3(128), 128 * sizeof(float), nullptr, with_barrier, out.data());
  return out;
}

// One warp; lane l stores l + 1 and reads lane 31 - l's value, with or without __syncwarp.
__global__ void warp_exchange_kernel(bool with_syncwarp, float* out) {
  float* smem = dynamic_smem<float>();
  const int l = threadIdx.x;
  smem[l] = static_cast<float>(l + 1);
  if (with_syncwarp) syncwarp();
  out[l] = smem[31 - l];
}

std::vector<float> warp_exchange(bool with_syncwarp) {
  std::vector<float> out(32);
  launch(warp_exchange_kernel, Dim3(1), Dim3(32), 32 * sizeof(float), nullptr, with_syncwarp, out.data());
  return out;
}

// 2 warps; each thread copies 16 bytes (4 floats) global -> shared with cp.async, then every
// thread reads another thread's copy. Without the wait the copy may not have landed.
__global__ void cp_async_kernel(const float* in, bool with_wait, float* out) {
  float* smem = dynamic_smem<float>();
  const int i = threadIdx.x;
  cp_async_16(smem + 4 * i, in + 4 * i, true);
  cp_async_commit();
  if (with_wait) cp_async_wait<0>();
  __syncthreads();
  const int j = (i + 33) % 64;
  for (int c = 0; c < 4; ++c) out[4 * i + c] = smem[4 * j + c];
}

std::vector<float> cp_async_exchange(const std::vector<float>& in, bool with_wait) {
  if (in.size() != 256) throw std::invalid_argument("cp_async_exchange: expected 256 floats");
  std::vector<float> aligned_in(in);  // std::vector<float> storage is 16-byte aligned by malloc
  std::vector<float> out(256);
  launch(cp_async_kernel, Dim3(1), Dim3(64), 256 * sizeof(float), nullptr, aligned_in.data(), with_wait, out.data());
  return out;
}

// 2 warps: every thread copies one 16-byte row into shared memory with cp.async, then each warp
// reads the other warp's 32 rows with ldmatrix (x4, rows of 8 halves). `order` drops the wait
// ("no-wait"), the barrier ("no-barrier") or neither ("ok"); "overwrite" has warp 1 copy into
// rows that warp 0 reads, with no barrier between the read and the copy.
__global__ void race_kernel(const uint16_t* in, int order, uint32_t* out) {
  uint16_t* smem = dynamic_smem<uint16_t>();
  const int i = threadIdx.x, warp = i / 32, lane = i % 32;
  if (order == 3) {
    if (warp == 0) {
      uint32_t r[4];
      ldmatrix_x4(r, smem + 8 * lane);
      out[i] = r[0];
    } else {
      cp_async_16(smem + 8 * lane, in + 8 * lane, true);
      cp_async_commit();
      cp_async_wait<0>();
    }
    return;
  }
  cp_async_16(smem + 8 * i, in + 8 * i, true);
  cp_async_commit();
  if (order != 1) cp_async_wait<0>();
  if (order != 2) __syncthreads();
  uint32_t r[4];
  ldmatrix_x4(r, smem + 8 * (32 * (1 - warp) + lane));
  out[i] = r[0];
  cp_async_wait<0>();
}

std::vector<uint32_t> race(const std::string& order) {
  const char* kOrders[] = {"ok", "no-wait", "no-barrier", "overwrite"};
  int code = -1;
  for (int k = 0; k < 4; ++k) {
    if (order == kOrders[k]) code = k;
  }
  if (code < 0) throw std::invalid_argument("race: unknown order '" + order + "'");
  std::vector<uint16_t> in(64 * 8);
  for (size_t k = 0; k < in.size(); ++k) in[k] = static_cast<uint16_t>(k);
  std::vector<uint32_t> out(64);
  launch(race_kernel, Dim3(1), Dim3(64), in.size() * 2, nullptr, in.data(), code, out.data());
  return out;
}

// Planted misuses, one per detector.
__global__ void misuse_kernel(int kind, size_t alloca_bytes, float* out) {
  const int i = threadIdx.x;
  const int lane = i % 32;
  unsigned char* smem = dynamic_smem<unsigned char>();
  switch (kind) {
    case 0:  // threads of the second half exit before the barrier the first half waits at
      if (i >= 64) return;
      __syncthreads();
      break;
    case 1:  // half a warp shuffles while the other half waits at a block barrier
      if (lane < 16) {
        out[i] = shfl_xor_sync(kFull, 1.f, 1);
      } else {
        __syncthreads();
      }
      break;
    case 2:  // the two halves of the block reach different __syncthreads
      if (i < 64) {
        __syncthreads();
      } else {
        __syncthreads();
      }
      break;
    case 3:  // a shuffle with a partial mask
      out[i] = shfl_xor_sync(0x0000ffffu, 1.f, 1);
      break;
    case 4:  // the two halves of a warp reach different shuffles
      if (lane < 16) {
        out[i] = shfl_xor_sync(kFull, 1.f, 1);
      } else {
        out[i] = shfl_xor_sync(kFull, 2.f, 1);
      }
      break;
    case 5: {  // ldmatrix rows 8 bytes off 16-byte alignment
      uint32_t r[1];
      ldmatrix_x1(r, smem + 8 + 16 * (lane % 8));
      out[i] = static_cast<float>(r[0]);
      break;
    }
    case 6:  // cp.async into a destination 8 bytes off 16-byte alignment
      cp_async_16(smem + 8 + 16 * i, out, true);
      break;
    case 7: {  // a local array larger than the fiber's stack
      auto* big = static_cast<volatile unsigned char*>(__builtin_alloca(alloca_bytes));
      for (size_t b = alloca_bytes; b >= 64; b -= 64) big[b - 64] = 1;  // downwards, as a stack grows
      out[i] = big[0];
      break;
    }
    default:
      break;
  }
}

void misuse(const std::string& what, size_t alloca_bytes) {
  static const char* kKinds[] = {"early-exit",     "split-warp",   "divergent-barrier", "partial-mask",
                                 "mismatched-lanes", "misaligned-ldmatrix", "misaligned-cp-async", "stack-overflow"};
  int kind = -1;
  for (int k = 0; k < 8; ++k) {
    if (what == kKinds[k]) kind = k;
  }
  if (kind < 0) throw std::invalid_argument("misuse: unknown kind '" + what + "'");
  std::vector<float> out(128, 0.f);
  launch(misuse_kernel, Dim3(1), Dim3(128), 4096, nullptr, kind, alloca_bytes, out.data());
}

// One block of 4 warps, each issuing `count` mma with fixed operands (for timing).
__global__ void mma_loop_kernel(int count, float* out) {
  const uint32_t a[4] = {0x3c003c00u, 0x3c003c00u, 0x3c003c00u, 0x3c003c00u};  // fp16 ones
  const uint32_t b[2] = {0x3c003c00u, 0x3c003c00u};
  float acc[4] = {};
  for (int n = 0; n < count; ++n) mma_m16n8k16<half>(acc, a, b, acc);
  out[threadIdx.x] = acc[0];
}

float mma_loop(int count) {
  std::vector<float> out(128);
  launch(mma_loop_kernel, Dim3(1), Dim3(128), 0, nullptr, count, out.data());
  return out[0];
}

}  // namespace

void register_kernels(py::module_& m) {
  m.def("mma", &mma, py::arg("dtype"), py::arg("a"), py::arg("b"), py::arg("c"),
        "One mma.m16n8k16 on a warp; per-lane fragments in, per-lane accumulators out.");
  m.def("ldmatrix", &ldmatrix, py::arg("matrices"), py::arg("trans"), py::arg("image"), py::arg("row_offsets"),
        "One ldmatrix on a warp from a shared-memory image; per-lane registers out.");
  m.def("exchange", &exchange, py::arg("with_barrier"),
        "Threads swap values through shared memory, with or without the __syncthreads between.");
  m.def("warp_exchange", &warp_exchange, py::arg("with_syncwarp"),
        "Lanes of one warp swap values through shared memory, with or without __syncwarp.");
  m.def("cp_async_exchange", &cp_async_exchange, py::arg("values"), py::arg("with_wait"),
        "Threads swap values copied by cp.async, with or without the cp.async wait.");
  m.def("race", &race, py::arg("order"),
        "Warps exchange rows through cp.async and ldmatrix; order 'ok', 'no-wait', 'no-barrier' or 'overwrite'.");
  m.def("misuse", &misuse, py::arg("kind"), py::arg("alloca_bytes") = 0,
        "Runs a kernel with a planted misuse; the emulator must raise.");
  m.def("mma_loop", &mma_loop, py::arg("count"), "4 warps issue `count` mma each; returns one accumulator.");
}

}  // namespace selftest
}  // namespace simt
