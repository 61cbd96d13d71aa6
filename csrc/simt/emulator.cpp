// emulator.cpp — the scheduler, barriers and collectives behind simt_host.h.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "fiber.h"
#include "simt.h"

namespace simt {
namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxSmemBytes = 227 * 1024;  // sm_90's opt-in limit per block
constexpr size_t kSmemAlign = 128;
constexpr unsigned char kPoisonByte = 0xff;  // NaN as fp32, fp16 and bf16

Options g_options;

struct GlobalStats {
  std::atomic<uint64_t> blocks{0}, mma{0}, ldmatrix{0}, shuffles{0}, block_barriers{0}, switches{0}, cp_async_bytes{0};
} g_stats;

}  // namespace

Options& options() { return g_options; }

Stats stats() {
  return Stats{g_stats.blocks.load(), g_stats.mma.load(), g_stats.ldmatrix.load(), g_stats.shuffles.load(),
               g_stats.block_barriers.load(), g_stats.switches.load(), g_stats.cp_async_bytes.load()};
}

void reset_stats() {
  for (auto* c : {&g_stats.blocks, &g_stats.mma, &g_stats.ldmatrix, &g_stats.shuffles, &g_stats.block_barriers,
                  &g_stats.switches, &g_stats.cp_async_bytes}) {
    c->store(0);
  }
}

namespace emu {
namespace {

enum class State : uint8_t { kRunnable, kAtBarrier, kAtCollective, kDone, kFailed };

enum class Op : uint8_t { kShuffle, kMma, kLdmatrix, kSyncWarp };

const char* op_name(Op op, int variant) {
  switch (op) {
    case Op::kShuffle: {
      static const char* kNames[] = {"shfl_sync", "shfl_xor_sync", "shfl_down_sync", "shfl_up_sync"};
      return kNames[variant];
    }
    case Op::kMma:
      return variant == 0 ? "mma.m16n8k16.f16" : "mma.m16n8k16.bf16";
    case Op::kLdmatrix:
      return "ldmatrix";
    case Op::kSyncWarp:
      return "__syncwarp";
  }
  return "?";
}

std::string where(Site site) {
  const char* slash = strrchr(site.file, '/');
  std::ostringstream s;
  s << (slash ? slash + 1 : site.file) << ":" << site.line;
  return s.str();
}

bool same_site(Site a, Site b) { return a.line == b.line && (a.file == b.file || strcmp(a.file, b.file) == 0); }

struct PendingCopy {
  unsigned char* dst;
  const unsigned char* src;
  bool valid;
  bool landed;  // already copied (cp.async landing at issue); still pending until its wait
};

// Race-check state of one 16-byte chunk of shared memory. Epochs count the block's completed
// __syncthreads; cp.async writes count from the wait that retires them, ldmatrix reads from the
// read. A chunk written or read in the current epoch by one warp must not be touched by another.
struct ChunkState {
  int pending = 0;         // cp.async copies issued into it and not yet retired by a wait
  int write_epoch = -1;    // epoch of the last retired cp.async into it
  int writer_warp = -1;
  Site write_site{"", 0};
  int read_epoch = -1;     // epoch of the last ldmatrix reads
  uint32_t reader_warps = 0;
  Site read_site{"", 0};
};

struct Thread {
  Context ctx;
  std::unique_ptr<FiberStack> stack;
  State state = State::kRunnable;
  Site site{"", 0};  // where it waits
  std::vector<PendingCopy> open_group;
  std::deque<std::vector<PendingCopy>> committed;  // oldest first
};

// What one lane brings to a warp collective, and what it takes away.
struct LaneSlot {
  Op op;
  int variant;  // shuffle kind, mma type, or ldmatrix (matrices * 2 + trans)
  unsigned mask;
  int arg;
  Site site;
  const void* addr;
  uint32_t a[4], b[2];
  float c[4];
  uint32_t out[4];
  float d[4];
};

struct Warp {
  LaneSlot lanes[kWarpSize];
  int arrived = 0;
};

void land(const PendingCopy& copy) {
  if (copy.valid) {
    memcpy(copy.dst, copy.src, 16);
  } else {
    memset(copy.dst, 0, 16);
  }
}

float element_to_float(uint32_t bits, MmaType type) {
  if (type == MmaType::kBF16) {
    const uint32_t widened = bits << 16;
    float f;
    memcpy(&f, &widened, 4);
    return f;
  }
  __half_raw raw;
  raw.x = static_cast<unsigned short>(bits);
  return __half2float(__half(raw));
}

void fiber_entry();

// Runs the blocks handed to one OS thread; one instance per OS thread, reused across launches.
class Worker {
 public:
  void run(Dim3 grid, Dim3 block, size_t smem_bytes, const std::function<void()>* body, const Options& opts,
           std::atomic<uint64_t>& next_block, uint64_t n_blocks);

  // Called on fibers.
  [[noreturn]] void fail(const std::string& message);
  void yield(State state);
  Thread& current() { return threads_[current_]; }
  unsigned current_index() const { return current_; }
  Dim3 block_index() const { return block_index_; }
  Dim3 block_dim() const { return block_; }
  Dim3 grid_dim() const { return grid_; }
  unsigned char* smem() const { return smem_; }
  void check_smem_range(const void* p, const char* what, Site site);
  void sync_block(Site site);
  LaneSlot& enter_collective(Op op, int variant, unsigned mask, Site site);
  void finish_collective();
  void cp_async(void* dst, const void* src, bool valid, Site site);
  void land_groups(size_t keep_pending);
  void check_ldmatrix_read(const void* row, int warp, Site site);
  void body_done();
  const std::function<void()>* body() const { return body_; }

  Stats local;

 private:
  void prepare(unsigned n_threads, size_t smem_bytes, size_t stack_bytes);
  void run_block(uint64_t linear_block);
  int pick();
  void complete_collective(Warp& warp, int warp_index);
  void retire(const PendingCopy& copy);
  ChunkState& chunk(const void* p) { return chunks_[(static_cast<const unsigned char*>(p) - smem_) / 16]; }
  std::string describe_waits() const;
  std::string block_name() const;

  std::vector<Thread> threads_;
  std::vector<Warp> warps_;
  size_t stack_bytes_ = 0;
  std::unique_ptr<unsigned char[]> smem_storage_;
  size_t smem_capacity_ = 0;
  unsigned char* smem_ = nullptr;
  size_t smem_bytes_ = 0;
  Context scheduler_;
  unsigned current_ = 0;
  int last_ = -1;
  unsigned barrier_arrived_ = 0;
  int epoch_ = 0;  // completed __syncthreads in this block
  std::vector<ChunkState> chunks_;
  unsigned done_ = 0;
  std::string error_;
  Dim3 grid_, block_, block_index_;
  const std::function<void()>* body_ = nullptr;
  Options opts_;
  std::mt19937_64 rng_;
};

thread_local std::unique_ptr<Worker> t_worker_storage;
thread_local Worker* t_worker = nullptr;

Worker& worker() {
  if (t_worker == nullptr) throw Error("simt emulator: a device function was called outside simt::launch");
  return *t_worker;
}

std::string Worker::block_name() const {
  std::ostringstream s;
  s << "block (" << block_index_.x << "," << block_index_.y << "," << block_index_.z << ")";
  return s.str();
}

void Worker::fail(const std::string& message) {
  if (error_.empty()) error_ = message;
  current().state = State::kFailed;
  context_switch(current().ctx, scheduler_);
  abort();  // a failed fiber is never resumed
}

void Worker::yield(State state) {
  current().state = state;
  context_switch(current().ctx, scheduler_);
}

void Worker::check_smem_range(const void* p, const char* what, Site site) {
  const auto* byte = static_cast<const unsigned char*>(p);
  if (byte < smem_ || byte + 16 > smem_ + smem_bytes_) {
    std::ostringstream s;
    s << "simt emulator: " << what << " at " << where(site) << " in " << block_name() << ", thread "
      << current_ << ": shared address " << p << " is outside the block's " << smem_bytes_
      << " bytes of dynamic shared memory";
    fail(s.str());
  }
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    std::ostringstream s;
    s << "simt emulator: " << what << " at " << where(site) << " in " << block_name() << ", thread " << current_
      << ": shared address offset " << (byte - smem_) << " is not 16-byte aligned";
    fail(s.str());
  }
}

void Worker::sync_block(Site site) {
  Thread& self = current();
  self.site = site;
  self.state = State::kAtBarrier;
  local.block_barriers++;
  if (++barrier_arrived_ < threads_.size()) {
    yield(State::kAtBarrier);
    return;
  }
  for (unsigned i = 0; i < threads_.size(); ++i) {
    if (!same_site(threads_[i].site, site)) {
      fail("simt emulator: divergent __syncthreads in " + block_name() + ": " + describe_waits());
    }
  }
  barrier_arrived_ = 0;
  ++epoch_;
  for (auto& t : threads_) t.state = State::kRunnable;
  yield(State::kRunnable);  // the schedule decides who leaves the barrier first
}

LaneSlot& Worker::enter_collective(Op op, int variant, unsigned mask, Site site) {
  if (mask != kFullMask) {
    std::ostringstream s;
    s << "simt emulator: " << op_name(op, variant) << " at " << where(site) << " in " << block_name()
      << ", thread " << current_ << " has mask 0x" << std::hex << mask
      << "; warp collectives must be called by all 32 lanes with mask 0xffffffff";
    fail(s.str());
  }
  LaneSlot& slot = warps_[current_ / kWarpSize].lanes[current_ % kWarpSize];
  slot.op = op;
  slot.variant = variant;
  slot.mask = mask;
  slot.site = site;
  current().site = site;
  return slot;
}

void Worker::finish_collective() {
  const int warp_index = static_cast<int>(current_ / kWarpSize);
  Warp& warp = warps_[warp_index];
  if (++warp.arrived < kWarpSize) {
    yield(State::kAtCollective);
    return;
  }
  warp.arrived = 0;
  complete_collective(warp, warp_index);
  for (int lane = 0; lane < kWarpSize; ++lane) threads_[warp_index * kWarpSize + lane].state = State::kRunnable;
}

void Worker::complete_collective(Warp& warp, int warp_index) {
  const LaneSlot& first = warp.lanes[0];
  for (int lane = 1; lane < kWarpSize; ++lane) {
    const LaneSlot& s = warp.lanes[lane];
    if (s.op != first.op || s.variant != first.variant || !same_site(s.site, first.site)) {
      std::ostringstream m;
      m << "simt emulator: lanes of warp " << warp_index << " in " << block_name()
        << " disagree at a warp collective: lane 0 at " << op_name(first.op, first.variant) << " ("
        << where(first.site) << "), lane " << lane << " at " << op_name(s.op, s.variant) << " (" << where(s.site)
        << ")";
      fail(m.str());
    }
  }
  switch (first.op) {
    case Op::kSyncWarp:
      break;
    case Op::kShuffle: {
      local.shuffles++;
      for (int lane = 0; lane < kWarpSize; ++lane) {
        LaneSlot& s = warp.lanes[lane];
        int src = lane;
        switch (static_cast<Shuffle>(s.variant)) {
          case Shuffle::kIdx: src = s.arg & (kWarpSize - 1); break;
          case Shuffle::kXor: src = (lane ^ s.arg) & (kWarpSize - 1); break;
          case Shuffle::kDown: src = lane + s.arg < kWarpSize ? lane + s.arg : lane; break;
          case Shuffle::kUp: src = lane - s.arg >= 0 ? lane - s.arg : lane; break;
        }
        s.out[0] = warp.lanes[src].a[0];
      }
      break;
    }
    case Op::kMma: {
      // Fragment layouts of mma.m16n8k16 (docs/design.md §5), g = lane / 4, t = lane % 4.
      local.mma++;
      const auto type = static_cast<MmaType>(first.variant);
      float a[16][16], b[16][8], c[16][8];
      for (int lane = 0; lane < kWarpSize; ++lane) {
        const LaneSlot& s = warp.lanes[lane];
        const int g = lane / 4, t = lane % 4;
        for (int i = 0; i < 8; ++i) {
          const uint32_t bits = s.a[i / 2] >> (16 * (i & 1)) & 0xffffu;
          a[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + (i >= 4 ? 8 : 0)] = element_to_float(bits, type);
        }
        for (int i = 0; i < 4; ++i) {
          const uint32_t bits = s.b[i / 2] >> (16 * (i & 1)) & 0xffffu;
          b[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g] = element_to_float(bits, type);
        }
        for (int i = 0; i < 4; ++i) c[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)] = s.c[i];
      }
      for (int lane = 0; lane < kWarpSize; ++lane) {
        LaneSlot& s = warp.lanes[lane];
        const int g = lane / 4, t = lane % 4;
        for (int i = 0; i < 4; ++i) {
          const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
          double acc = c[row][col];  // products of 16-bit floats are exact in double
          for (int k = 0; k < 16; ++k) acc += static_cast<double>(a[row][k]) * b[k][col];
          s.d[i] = static_cast<float>(acc);
        }
      }
      break;
    }
    case Op::kLdmatrix: {
      // Lane l reads row l % 8 of matrix l / 8 at warp.lanes[l].addr; each row is 8 16-bit values.
      local.ldmatrix++;
      const int matrices = first.variant / 2;
      const bool trans = first.variant % 2 != 0;
      uint16_t m[4][8][8];
      for (int mat = 0; mat < matrices; ++mat) {
        for (int row = 0; row < 8; ++row) {
          const void* addr = warp.lanes[mat * 8 + row].addr;
          if (opts_.racecheck) check_ldmatrix_read(addr, warp_index, first.site);
          memcpy(m[mat][row], addr, 16);
        }
      }
      for (int lane = 0; lane < kWarpSize; ++lane) {
        const int g = lane / 4, t = lane % 4;
        for (int mat = 0; mat < matrices; ++mat) {
          uint16_t lo, hi;
          if (trans) {
            lo = m[mat][2 * t][g];
            hi = m[mat][2 * t + 1][g];
          } else {
            lo = m[mat][g][2 * t];
            hi = m[mat][g][2 * t + 1];
          }
          warp.lanes[lane].out[mat] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
        }
      }
      break;
    }
  }
}

void Worker::cp_async(void* dst, const void* src, bool valid, Site site) {
  check_smem_range(dst, "cp.async destination", site);
  if (valid && reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    std::ostringstream s;
    s << "simt emulator: cp.async at " << where(site) << " in " << block_name() << ", thread " << current_
      << ": global source " << src << " is not 16-byte aligned";
    fail(s.str());
  }
  const int warp = static_cast<int>(current_ / kWarpSize);
  if (opts_.racecheck) {
    ChunkState& c = chunk(dst);
    const uint32_t other_readers = c.read_epoch == epoch_ ? c.reader_warps & ~(1u << warp) : 0;
    if (other_readers != 0) {
      std::ostringstream m;
      m << "simt emulator: race in " << block_name() << ": cp.async at " << where(site) << " (thread " << current_
        << ", warp " << warp << ") overwrites shared memory (offset " << (static_cast<unsigned char*>(dst) - smem_)
        << ") that other warps (mask 0x" << std::hex << other_readers << std::dec << ") read with ldmatrix at "
        << where(c.read_site) << " since the last __syncthreads: a missing __syncthreads before the copy";
      fail(m.str());
    }
    if ((c.pending > 0 || c.write_epoch == epoch_) && c.writer_warp != warp) {
      std::ostringstream m;
      m << "simt emulator: race in " << block_name() << ": cp.async at " << where(site) << " (warp " << warp
        << ") and cp.async at " << where(c.write_site) << " (warp " << c.writer_warp
        << ") write the same shared memory without a __syncthreads between";
      fail(m.str());
    }
    c.pending++;
    c.writer_warp = warp;
    c.write_site = site;
  }
  PendingCopy copy{static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src), valid, false};
  if (valid) local.cp_async_bytes += 16;
  if (opts_.cp_async == CpAsyncLanding::kAtIssue) {
    land(copy);
    copy.landed = true;
  } else {
    memset(copy.dst, kPoisonByte, 16);
  }
  current().open_group.push_back(copy);
}

void Worker::retire(const PendingCopy& copy) {
  if (!copy.landed) land(copy);
  if (opts_.racecheck) {
    ChunkState& c = chunk(copy.dst);
    c.pending--;
    c.write_epoch = epoch_;
  }
}

void Worker::check_ldmatrix_read(const void* row, int warp, Site site) {
  ChunkState& c = chunk(row);
  if (c.pending > 0 || (c.write_epoch == epoch_ && c.writer_warp != warp)) {
    std::ostringstream m;
    m << "simt emulator: race in " << block_name() << ": ldmatrix at " << where(site) << " (warp " << warp
      << ") reads shared memory (offset " << (static_cast<const unsigned char*>(row) - smem_)
      << ") written by cp.async at " << where(c.write_site) << " (warp " << c.writer_warp << ") "
      << (c.pending == 0 ? "since the last __syncthreads: a missing __syncthreads"
          : c.writer_warp == warp ? "that no cp_async_wait has retired yet: a missing cp.async wait"
                                  : "that no cp_async_wait has retired yet: a missing cp.async wait, or a missing "
                                    "__syncthreads between the issuing warp's wait and this read");
    fail(m.str());
  }
  if (c.read_epoch != epoch_) {
    c.read_epoch = epoch_;
    c.reader_warps = 0;
  }
  c.reader_warps |= 1u << warp;
  c.read_site = site;
}

void Worker::land_groups(size_t keep_pending) {
  Thread& self = current();
  while (self.committed.size() > keep_pending) {
    for (const auto& copy : self.committed.front()) retire(copy);
    self.committed.pop_front();
  }
}

void Worker::body_done() {
  Thread& self = current();
  // Copies still in flight land eventually on a GPU too.
  self.committed.push_back(std::move(self.open_group));
  self.open_group.clear();
  land_groups(0);
  ++done_;
  yield(State::kDone);
  abort();  // a finished fiber is never resumed
}

void fiber_entry() {
  Worker& w = *t_worker;
  (*w.body())();
  w.body_done();
}

std::string Worker::describe_waits() const {
  std::ostringstream s;
  auto describe = [](const Thread& t) {
    switch (t.state) {
      case State::kAtBarrier: return "wait at __syncthreads (" + where(t.site) + ")";
      case State::kAtCollective: return "wait at a warp collective (" + where(t.site) + ")";
      case State::kDone: return std::string("exited");
      case State::kFailed: return std::string("failed");
      case State::kRunnable: return std::string("are runnable");
    }
    return std::string();
  };
  size_t begin = 0;
  bool first = true;
  for (size_t i = 1; i <= threads_.size(); ++i) {
    if (i < threads_.size() && describe(threads_[i]) == describe(threads_[begin])) continue;
    s << (first ? "" : "; ") << "threads " << begin << "-" << i - 1 << " " << describe(threads_[begin]);
    first = false;
    begin = i;
  }
  return s.str();
}

int Worker::pick() {
  const int n = static_cast<int>(threads_.size());
  auto runnable = [&](int i) { return threads_[i].state == State::kRunnable; };
  switch (opts_.schedule) {
    case Schedule::kWarpFirst: {
      const int base = last_ < 0 ? 0 : last_ / kWarpSize * kWarpSize;
      for (int i = 0; i < n; ++i) {
        if (runnable((base + i) % n)) return (base + i) % n;
      }
      return -1;
    }
    case Schedule::kReverse: {
      const int base = last_ < 0 ? n - 1 : last_ / kWarpSize * kWarpSize + kWarpSize - 1;
      for (int i = 0; i < n; ++i) {
        const int j = ((base - i) % n + n) % n;
        if (runnable(j)) return j;
      }
      return -1;
    }
    case Schedule::kRoundRobin: {
      for (int i = 1; i <= n; ++i) {
        const int j = (last_ + i + n) % n;
        if (runnable(j)) return j;
      }
      return -1;
    }
    case Schedule::kRandom: {
      int count = 0;
      for (int i = 0; i < n; ++i) count += runnable(i);
      if (count == 0) return -1;
      int k = static_cast<int>(rng_() % static_cast<uint64_t>(count));
      for (int i = 0; i < n; ++i) {
        if (runnable(i) && k-- == 0) return i;
      }
      return -1;
    }
  }
  return -1;
}

void Worker::prepare(unsigned n_threads, size_t smem_bytes, size_t stack_bytes) {
  if (threads_.size() != n_threads || stack_bytes_ != stack_bytes) {
    threads_ = std::vector<Thread>(n_threads);
    for (auto& t : threads_) t.stack = std::make_unique<FiberStack>(stack_bytes);
    stack_bytes_ = stack_bytes;
    warps_ = std::vector<Warp>(n_threads / kWarpSize);
  }
  if (smem_capacity_ < smem_bytes + kSmemAlign) {
    smem_capacity_ = smem_bytes + kSmemAlign;
    smem_storage_.reset(new unsigned char[smem_capacity_]);
  }
  const auto raw = reinterpret_cast<uintptr_t>(smem_storage_.get());
  smem_ = reinterpret_cast<unsigned char*>((raw + kSmemAlign - 1) / kSmemAlign * kSmemAlign);
  smem_bytes_ = smem_bytes;
}

void Worker::run_block(uint64_t linear_block) {
  block_index_ = Dim3(static_cast<unsigned>(linear_block % grid_.x),
                      static_cast<unsigned>(linear_block / grid_.x % grid_.y),
                      static_cast<unsigned>(linear_block / (static_cast<uint64_t>(grid_.x) * grid_.y)));
  memset(smem_, kPoisonByte, smem_bytes_);
  barrier_arrived_ = 0;
  epoch_ = 0;
  if (opts_.racecheck) chunks_.assign(smem_bytes_ / 16, ChunkState{});
  done_ = 0;
  last_ = -1;
  for (auto& w : warps_) w.arrived = 0;
  for (auto& t : threads_) {
    if (!t.stack->canary_intact()) t.stack->write_canary();
    context_init(t.ctx, *t.stack, fiber_entry);
    t.state = State::kRunnable;
    t.open_group.clear();
    t.committed.clear();
  }
  local.blocks++;
  while (true) {
    const int next = pick();
    if (next < 0) {
      if (done_ == threads_.size()) return;
      throw Error("simt emulator: deadlock in " + block_name() + ": " + describe_waits());
    }
    current_ = static_cast<unsigned>(next);
    last_ = next;
    local.switches++;
    context_switch(scheduler_, threads_[current_].ctx);
    if (!threads_[current_].stack->canary_intact()) {
      std::ostringstream s;
      s << "simt emulator: fiber stack overflow in " << block_name() << ", thread " << current_ << " (stack of "
        << threads_[current_].stack->usable_bytes() << " bytes); raise simt::Options::stack_bytes";
      throw Error(s.str());
    }
    if (!error_.empty()) throw Error(error_);
  }
}

void Worker::run(Dim3 grid, Dim3 block, size_t smem_bytes, const std::function<void()>* body, const Options& opts,
                 std::atomic<uint64_t>& next_block, uint64_t n_blocks) {
  grid_ = grid;
  block_ = block;
  body_ = body;
  opts_ = opts;
  rng_.seed(opts.seed);
  error_.clear();
  local = Stats{};
  prepare(block.x * block.y * block.z, smem_bytes, opts.stack_bytes);
  enable_overflow_reports();
  t_worker = this;
  struct Reset {
    ~Reset() { t_worker = nullptr; }
  } reset;
  for (uint64_t b = next_block++; b < n_blocks; b = next_block++) run_block(b);
}

Worker& this_thread_worker() {
  if (!t_worker_storage) t_worker_storage = std::make_unique<Worker>();
  return *t_worker_storage;
}

void add_stats(const Stats& s) {
  g_stats.blocks += s.blocks;
  g_stats.mma += s.mma;
  g_stats.ldmatrix += s.ldmatrix;
  g_stats.shuffles += s.shuffles;
  g_stats.block_barriers += s.block_barriers;
  g_stats.switches += s.switches;
  g_stats.cp_async_bytes += s.cp_async_bytes;
}

}  // namespace

Dim3 thread_idx() {
  Worker& w = worker();
  const Dim3 d = w.block_dim();
  const unsigned i = w.current_index();
  return Dim3(i % d.x, i / d.x % d.y, i / (d.x * d.y));
}
Dim3 block_idx() { return worker().block_index(); }
Dim3 block_dim() { return worker().block_dim(); }
Dim3 grid_dim() { return worker().grid_dim(); }
unsigned char* dynamic_smem_base() { return worker().smem(); }

void sync_block(Site site) { worker().sync_block(site); }

void sync_warp(Site site) {
  Worker& w = worker();
  w.enter_collective(Op::kSyncWarp, 0, kFullMask, site);
  w.finish_collective();
}

uint32_t shuffle(Shuffle kind, unsigned mask, uint32_t value, int arg, Site site) {
  Worker& w = worker();
  LaneSlot& slot = w.enter_collective(Op::kShuffle, static_cast<int>(kind), mask, site);
  slot.a[0] = value;
  slot.arg = arg;
  w.finish_collective();
  return slot.out[0];
}

void mma_m16n8k16(MmaType type, float* d, const uint32_t* a, const uint32_t* b, const float* c, Site site) {
  Worker& w = worker();
  LaneSlot& slot = w.enter_collective(Op::kMma, static_cast<int>(type), kFullMask, site);
  memcpy(slot.a, a, sizeof(slot.a));
  memcpy(slot.b, b, sizeof(slot.b));
  memcpy(slot.c, c, sizeof(slot.c));
  w.finish_collective();
  memcpy(d, slot.d, sizeof(slot.d));
}

void ldmatrix(int matrices, bool trans, uint32_t* r, const void* row, Site site) {
  Worker& w = worker();
  if (static_cast<int>(w.current_index() % kWarpSize) < 8 * matrices) {
    w.check_smem_range(row, "ldmatrix row address", site);
  }
  LaneSlot& slot = w.enter_collective(Op::kLdmatrix, matrices * 2 + (trans ? 1 : 0), kFullMask, site);
  slot.addr = row;
  w.finish_collective();
  memcpy(r, slot.out, sizeof(uint32_t) * matrices);
}

void cp_async_16(void* smem_dst, const void* gmem_src, bool valid, Site site) {
  worker().cp_async(smem_dst, gmem_src, valid, site);
}

void cp_async_commit() {
  Thread& self = worker().current();
  self.committed.push_back(std::move(self.open_group));
  self.open_group.clear();
}

void cp_async_wait(int pending) { worker().land_groups(static_cast<size_t>(pending)); }

void launch(Dim3 grid, Dim3 block, size_t smem_bytes, const std::function<void()>& body) {
  const uint64_t n_threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (n_threads == 0 || n_threads > kMaxThreadsPerBlock || n_threads % kWarpSize != 0) {
    throw Error("simt emulator: block of " + std::to_string(n_threads) +
                " threads; the emulator needs a multiple of 32, at most 1024");
  }
  if (smem_bytes > kMaxSmemBytes) {
    throw Error("simt emulator: " + std::to_string(smem_bytes) + " bytes of dynamic shared memory requested; " +
                "a block may use at most " + std::to_string(kMaxSmemBytes));
  }
  const uint64_t n_blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  if (n_blocks == 0) return;
  const Options opts = g_options;
  std::atomic<uint64_t> next_block{0};
  const int n_os = static_cast<int>(std::min<uint64_t>(std::max(opts.os_threads, 1), n_blocks));
  if (n_os == 1) {
    Worker& w = this_thread_worker();
    try {
      w.run(grid, block, smem_bytes, &body, opts, next_block, n_blocks);
    } catch (...) {
      add_stats(w.local);
      throw;
    }
    add_stats(w.local);
    return;
  }
  std::mutex error_lock;
  std::string first_error;
  std::vector<std::thread> pool;
  for (int i = 0; i < n_os; ++i) {
    pool.emplace_back([&] {
      Worker w;
      try {
        w.run(grid, block, smem_bytes, &body, opts, next_block, n_blocks);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> hold(error_lock);
        if (first_error.empty()) first_error = e.what();
        next_block = n_blocks;  // the others stop after their current block
      }
      add_stats(w.local);
    });
  }
  for (auto& t : pool) t.join();
  if (!first_error.empty()) throw Error(first_error);
}

}  // namespace emu
}  // namespace simt
