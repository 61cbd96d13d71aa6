// fiber.cpp — see fiber.h.
#include "fiber.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

namespace simt {
namespace emu {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kCanaryBytes = 4096;  // below the usable stack, above the guard page
constexpr uint64_t kCanary = 0x5ca1ab1edeadbeefULL;
constexpr size_t kCanaryStride = 256;  // bytes between checked canary words

// Guard pages of live stacks, for the SIGSEGV handler (which may not lock).
constexpr int kMaxGuards = 1 << 14;
std::atomic<uintptr_t> g_guards[kMaxGuards];
struct sigaction g_previous_segv;

void register_guard(uintptr_t page) {
  for (auto& slot : g_guards) {
    uintptr_t empty = 0;
    if (slot.compare_exchange_strong(empty, page)) return;
  }
}

void unregister_guard(uintptr_t page) {
  for (auto& slot : g_guards) {
    uintptr_t expected = page;
    if (slot.compare_exchange_strong(expected, 0)) return;
  }
}

void on_segv(int sig, siginfo_t* info, void* uctx) {
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (auto& slot : g_guards) {
    const uintptr_t page = slot.load(std::memory_order_relaxed);
    if (page != 0 && addr >= page && addr < page + kPage) {
      static const char kMessage[] =
          "simt emulator: fiber stack overflow (a thread's stack ran into its guard page); "
          "raise simt::Options::stack_bytes or shrink the kernel's local arrays\n";
      ssize_t ignored = write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
      (void)ignored;
      signal(SIGSEGV, SIG_DFL);
      return;  // the faulting access repeats and the process dies with SIGSEGV
    }
  }
  // Not ours: hand the fault to whoever handled SIGSEGV before us.
  sigaction(SIGSEGV, &g_previous_segv, nullptr);
  (void)sig;
  (void)uctx;
}

}  // namespace

FiberStack::FiberStack(size_t usable_bytes) {
  usable_ = (usable_bytes + kPage - 1) / kPage * kPage;
  mapped_ = kPage + kCanaryBytes + usable_;
  void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  base_ = static_cast<unsigned char*>(p);
  mprotect(base_, kPage, PROT_NONE);
  register_guard(reinterpret_cast<uintptr_t>(base_));
  write_canary();
}

FiberStack::~FiberStack() {
  unregister_guard(reinterpret_cast<uintptr_t>(base_));
  munmap(base_, mapped_);
}

void FiberStack::write_canary() {
  for (size_t off = 0; off < kCanaryBytes; off += kCanaryStride) {
    memcpy(base_ + kPage + off, &kCanary, sizeof(kCanary));
  }
}

bool FiberStack::canary_intact() const {
  for (size_t off = 0; off < kCanaryBytes; off += kCanaryStride) {
    uint64_t word;
    memcpy(&word, base_ + kPage + off, sizeof(word));
    if (word != kCanary) return false;
  }
  return true;
}

void enable_overflow_reports() {
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &g_previous_segv);
  });
  // The handler cannot run on the overflowed stack: give this OS thread an alternate one,
  // unless it has one already (Python's faulthandler installs its own).
  struct AltStack {
    void* memory = nullptr;
    ~AltStack() {
      if (memory == nullptr) return;
      stack_t off;
      memset(&off, 0, sizeof(off));
      off.ss_flags = SS_DISABLE;
      sigaltstack(&off, nullptr);
      free(memory);
    }
  };
  thread_local AltStack alt_stack;
  stack_t current;
  if (alt_stack.memory != nullptr || sigaltstack(nullptr, &current) != 0 || !(current.ss_flags & SS_DISABLE)) return;
  constexpr size_t kAltStackBytes = 64 * 1024;
  stack_t alt;
  memset(&alt, 0, sizeof(alt));
  alt.ss_sp = malloc(kAltStackBytes);
  alt.ss_size = kAltStackBytes;
  if (alt.ss_sp != nullptr && sigaltstack(&alt, nullptr) == 0) {
    alt_stack.memory = alt.ss_sp;
  } else {
    free(alt.ss_sp);
  }
}

#if defined(__x86_64__)

// simt_context_switch(void** save_sp, void** load_sp): pushes the callee-saved registers, stores
// the stack pointer into *save_sp, loads *load_sp and pops the other context's registers.
asm(R"(
  .text
  .p2align 4
  .hidden simt_context_switch
  .globl simt_context_switch
  .type simt_context_switch,@function
simt_context_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq (%rsi), %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size simt_context_switch, .-simt_context_switch
)");

extern "C" void simt_context_switch(void** save_sp, void** load_sp);

void context_init(Context& ctx, FiberStack& stack, void (*entry)()) {
  auto* sp = reinterpret_cast<uintptr_t*>(stack.top());  // 16-byte aligned
  *--sp = 0;                                     // entry's return address: never used
  *--sp = reinterpret_cast<uintptr_t>(entry);    // popped by `ret`, leaving rsp % 16 == 8
  for (int i = 0; i < 6; ++i) *--sp = 0;         // rbp rbx r12 r13 r14 r15
  ctx.sp = sp;
}

void context_switch(Context& from, Context& to) { simt_context_switch(&from.sp, &to.sp); }

#else

void context_init(Context& ctx, FiberStack& stack, void (*entry)()) {
  getcontext(&ctx.uc);
  ctx.uc.uc_stack.ss_sp = stack.top() - stack.usable_bytes();
  ctx.uc.uc_stack.ss_size = stack.usable_bytes();
  ctx.uc.uc_link = nullptr;
  makecontext(&ctx.uc, entry, 0);
}

void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

#endif

}  // namespace emu
}  // namespace simt
