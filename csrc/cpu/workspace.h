// Per-call scratch memory and the thread-team helpers shared by the forward and decode kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace attn_cpu {

// Uninitialized fp32 storage aligned to a cache line; allocated before any parallel region
// so that an allocation failure surfaces as std::bad_alloc (-> MemoryError in Python).
class Floats {
 public:
  explicit Floats(int64_t n) {
    const size_t bytes = (size_t(n > 0 ? n : 1) * sizeof(float) + 63) / 64 * 64;
    data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (data_ == nullptr) throw std::bad_alloc();
  }
  ~Floats() { std::free(data_); }
  Floats(const Floats&) = delete;
  Floats& operator=(const Floats&) = delete;
  float* get() const { return data_; }

 private:
  float* data_;
};

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// The thread count actually used: OpenMP builds honour num_threads, others run on one thread.
inline int team_size(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : 1;
#else
  (void)requested;
  return 1;
#endif
}

}  // namespace attn_cpu
