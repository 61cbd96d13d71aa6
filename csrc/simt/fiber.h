// fiber.h — stacks and context switches for the emulator's cooperative threads.
//
// On x86-64 a switch saves the six callee-saved registers and the stack pointer (about 15x
// cheaper than glibc's swapcontext, which makes a signal-mask syscall); elsewhere it falls back
// to <ucontext.h>. Each stack has a PROT_NONE guard page at its low end (an overflow that reaches
// it is reported by a SIGSEGV handler) and a canary zone above it, checked after every switch.
#pragma once

#include <cstddef>
#include <cstdint>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace simt {
namespace emu {

class FiberStack {
 public:
  explicit FiberStack(size_t usable_bytes);
  ~FiberStack();
  FiberStack(const FiberStack&) = delete;
  FiberStack& operator=(const FiberStack&) = delete;

  unsigned char* top() const { return base_ + mapped_; }
  size_t usable_bytes() const { return usable_; }
  void write_canary();
  bool canary_intact() const;

 private:
  unsigned char* base_;  // the guard page
  size_t mapped_;
  size_t usable_;
};

struct Context {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

// Prepares `ctx` so that switching to it calls entry() on `stack`; entry must never return.
void context_init(Context& ctx, FiberStack& stack, void (*entry)());
// Saves the running context into `from` and resumes `to`.
void context_switch(Context& from, Context& to);
// Reports stack overflows that hit a guard page on this OS thread (installs an alternate
// signal stack for the calling thread; the handler itself is installed once per process).
void enable_overflow_reports();

}  // namespace emu
}  // namespace simt
