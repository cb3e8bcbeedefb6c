// The runtime of the CUDA-on-CPU execution model (cuda_on_cpu.h, TEST INFRASTRUCTURE): fibers,
// the block scheduler with its barrier and warp rendezvous, deadlock reports, the grid loop.
#include "kernels/cuda/cpu_exec/cuda_on_cpu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#if defined(__SANITIZE_ADDRESS__)
#define HEARTH_CUDA_CPU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HEARTH_CUDA_CPU_ASAN 1
#endif
#endif
#ifdef HEARTH_CUDA_CPU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// Context switches. On x86-64 and aarch64 ELF: a dozen instructions that save the callee-saved
// registers on the old stack, swap stack pointers and restore them from the new one (no system
// call, unlike swapcontext's signal mask; no AddressSanitizer interceptor clearing a whole stack
// per switch). Elsewhere, or with -DHEARTH_CUDA_CPU_FORCE_UCONTEXT: ucontext. Floating-point
// control registers are not switched: kernels do not change rounding modes.
#if defined(__ELF__) && (defined(__x86_64__) || defined(__aarch64__)) && !defined(HEARTH_CUDA_CPU_FORCE_UCONTEXT)
#define HEARTH_CUDA_CPU_ASM_SWITCH 1
extern "C" void hearth_cuda_cpu_switch(void** save_sp, void* load_sp);
#if defined(__x86_64__)
asm(R"(
  .text
  .p2align 4
  .globl hearth_cuda_cpu_switch
  .hidden hearth_cuda_cpu_switch
  .type hearth_cuda_cpu_switch, @function
hearth_cuda_cpu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size hearth_cuda_cpu_switch, .-hearth_cuda_cpu_switch
)");
#else
asm(R"(
  .text
  .p2align 4
  .globl hearth_cuda_cpu_switch
  .hidden hearth_cuda_cpu_switch
  .type hearth_cuda_cpu_switch, %function
hearth_cuda_cpu_switch:
  sub sp, sp, #160
  stp x19, x20, [sp, #0]
  stp x21, x22, [sp, #16]
  stp x23, x24, [sp, #32]
  stp x25, x26, [sp, #48]
  stp x27, x28, [sp, #64]
  stp x29, x30, [sp, #80]
  stp d8, d9, [sp, #96]
  stp d10, d11, [sp, #112]
  stp d12, d13, [sp, #128]
  stp d14, d15, [sp, #144]
  mov x2, sp
  str x2, [x0]
  mov sp, x1
  ldp x19, x20, [sp, #0]
  ldp x21, x22, [sp, #16]
  ldp x23, x24, [sp, #32]
  ldp x25, x26, [sp, #48]
  ldp x27, x28, [sp, #64]
  ldp x29, x30, [sp, #80]
  ldp d8, d9, [sp, #96]
  ldp d10, d11, [sp, #112]
  ldp d12, d13, [sp, #128]
  ldp d14, d15, [sp, #144]
  add sp, sp, #160
  ret
  .size hearth_cuda_cpu_switch, .-hearth_cuda_cpu_switch
)");
#endif
#else
#include <ucontext.h>
#endif

namespace hearth::cuda_cpu::detail {
namespace {

struct Context {
#ifdef HEARTH_CUDA_CPU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc{};
#endif
};

// Makes `c` start `entry` (which never returns) on the stack [bottom, bottom + size).
void make_context(Context& c, void* bottom, size_t size, void (*entry)()) {
#ifdef HEARTH_CUDA_CPU_ASM_SWITCH
  auto* top = reinterpret_cast<uintptr_t*>((reinterpret_cast<uintptr_t>(bottom) + size) & ~uintptr_t{15});
#if defined(__x86_64__)
  // Popped by the switch: r15 r14 r13 r12 rbx rbp, then `ret` to entry, which then sees the
  // stack as after a call (rsp = 8 mod 16) with a zero return address (unwinders stop there).
  uintptr_t* frame = top - 8;
  std::memset(frame, 0, 8 * sizeof(uintptr_t));
  frame[6] = reinterpret_cast<uintptr_t>(entry);
#else
  // Popped by the switch: x19-x28, x29 = 0 (the end of the frame chain), x30 = entry, d8-d15.
  uintptr_t* frame = top - 20;
  std::memset(frame, 0, 20 * sizeof(uintptr_t));
  frame[11] = reinterpret_cast<uintptr_t>(entry);
#endif
  c.sp = frame;
#else
  HEARTH_CHECK(getcontext(&c.uc) == 0, "getcontext failed");
  c.uc.uc_stack.ss_sp = bottom;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
#endif
}

// Saves the running context into `from` and continues `to`. Out of line, so that nothing of a
// caller's lives across it in a way the compiler did not see (getcontext returns twice).
__attribute__((noinline)) void switch_context(Context& from, Context& to) {
#ifdef HEARTH_CUDA_CPU_ASM_SWITCH
  hearth_cuda_cpu_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

#ifdef HEARTH_CUDA_CPU_ASAN
constexpr size_t kDefaultStackBytes = size_t{512} << 10;  // instrumented frames are large
#else
constexpr size_t kDefaultStackBytes = size_t{64} << 10;
#endif
constexpr size_t kMaxDynamicShared = size_t{227} << 10;  // sm_90's opt-in maximum per block
constexpr size_t kSharedAlignment = 128;

// AddressSanitizer must be told when the stack changes under it (fake stacks, stack bounds).
inline void asan_start_switch([[maybe_unused]] void** fake_stack, [[maybe_unused]] const void* bottom,
                              [[maybe_unused]] size_t size) {
#ifdef HEARTH_CUDA_CPU_ASAN
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#endif
}
inline void asan_finish_switch([[maybe_unused]] void* fake_stack, [[maybe_unused]] const void** bottom_old,
                               [[maybe_unused]] size_t* size_old) {
#ifdef HEARTH_CUDA_CPU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, bottom_old, size_old);
#endif
}

// A stack reused by a new fiber may keep the poisoned redzones of the frames its last fiber
// never returned from (the entry frames at its top: every deeper frame returned and unpoisoned
// its own). The instrumented switch of ucontext clears whole stacks; ours clears what is needed.
inline void asan_unpoison([[maybe_unused]] const void* bottom, [[maybe_unused]] size_t size) {
#ifdef HEARTH_CUDA_CPU_ASAN
  __asan_unpoison_memory_region(bottom, size);
#endif
}

// A fiber's stack: mapped memory with an inaccessible guard page below it, so an overflow
// faults instead of writing over a neighbour.
class Stack {
 public:
  explicit Stack(size_t bytes) {
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    size_ = (bytes + page_ - 1) / page_ * page_;
    base_ = mmap(nullptr, size_ + page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                 -1, 0);
    HEARTH_CHECK(base_ != MAP_FAILED, "cannot map a {}-byte fiber stack", size_ + page_);
    HEARTH_CHECK(mprotect(base_, page_, PROT_NONE) == 0, "cannot protect a fiber stack's guard page");
    asan_unpoison(bottom(), size_);
  }
  ~Stack() { munmap(base_, size_ + page_); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;

  void* bottom() const { return static_cast<char*>(base_) + page_; }
  size_t size() const { return size_; }

 private:
  void* base_ = nullptr;
  size_t page_ = 0;
  size_t size_ = 0;
};

enum class State : uint8_t { Ready, Barrier, Warp, Done };

struct Fiber {
  Context context;
  std::unique_ptr<Stack> stack;
  void* asan_fake_stack = nullptr;
  uint3 tid{0, 0, 0};
  unsigned linear = 0, warp = 0, lane = 0;
  State state = State::Done;
  int predicate = 0;  // at a barrier: its predicate; after it: the block's count
  WarpOp op = WarpOp::SyncWarp;
  uint32_t mask = 0;
  uint64_t value = 0;
  unsigned src = 0;
  uint64_t result = 0;
};

std::string idx(uint3 v) { return fmt::format("({},{},{})", v.x, v.y, v.z); }
std::string idx(dim3 v) { return fmt::format("({},{},{})", v.x, v.y, v.z); }

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::SyncWarp: return "__syncwarp";
    case WarpOp::Shuffle: return "__shfl*_sync";
    case WarpOp::Vote: return "__ballot/__any/__all_sync";
  }
  return "?";
}

void fiber_entry();

// Runs blocks on one OS thread: one fiber per CUDA thread of the block, switched only at
// synchronization points.
class Runner {
 public:
  Runner() = default;
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;
  ~Runner() {
    if (shared_ != nullptr) ::operator delete(shared_, std::align_val_t{kSharedAlignment});
  }

  void begin_launch(dim3 grid, dim3 block, size_t shared_bytes, size_t stack_bytes, KernelCall call) {
    grid_ = grid;
    block_ = block;
    call_ = call;
    n_ = block.x * block.y * block.z;
    while (fibers_.size() < n_) fibers_.push_back(std::make_unique<Fiber>());
    for (unsigned i = 0; i < n_; ++i) {
      Fiber& f = *fibers_[i];
      if (f.stack == nullptr || f.stack->size() < stack_bytes) f.stack = std::make_unique<Stack>(stack_bytes);
      f.tid = {i % block.x, i / block.x % block.y, i / (block.x * block.y)};
      f.linear = i;
      f.warp = i / 32;
      f.lane = i % 32;
    }
    if (shared_ != nullptr) ::operator delete(shared_, std::align_val_t{kSharedAlignment});
    shared_bytes_ = shared_bytes;
    shared_ = static_cast<std::byte*>(::operator new(shared_bytes, std::align_val_t{kSharedAlignment}));
    tl_block_dim = block;
    tl_grid_dim = grid;
    tl_dynamic_shared = shared_;
    tl_runner_ = this;
  }

  void end_launch() {
    tl_runner_ = nullptr;
    tl_thread_idx = nullptr;
    tl_dynamic_shared = nullptr;
    tl_block_idx = {0, 0, 0};
    tl_block_dim = dim3(0, 0, 0);
    tl_grid_dim = dim3(0, 0, 0);
  }

  void run_block(uint64_t linear_block) {
    block_idx_ = {static_cast<unsigned>(linear_block % grid_.x), static_cast<unsigned>(linear_block / grid_.x % grid_.y),
                  static_cast<unsigned>(linear_block / (uint64_t{grid_.x} * grid_.y))};
    tl_block_idx = block_idx_;
    std::memset(shared_, 0xFF, shared_bytes_);  // uninitialized shared memory reads as NaN / -1
    for (unsigned i = 0; i < n_; ++i) start_fiber(*fibers_[i]);
    n_done_ = 0;
    while (n_done_ < n_) {
      for (unsigned i = 0; i < n_; ++i) {
        Fiber& f = *fibers_[i];
        if (f.state != State::Ready) continue;
        resume(f);
        if (f.state == State::Done) ++n_done_;
      }
      if (n_done_ == n_) break;
      if (!release()) report_deadlock();
    }
  }

  // On a fiber's stack: park it until the scheduler releases it.
  void park(Fiber& f) {
    asan_start_switch(&f.asan_fake_stack, main_stack_bottom_, main_stack_size_);
    switch_context(f.context, main_context_);
    asan_finish_switch(f.asan_fake_stack, nullptr, nullptr);
  }

  // On a fiber's stack, first thing: learn the scheduler's stack (for ASan), run the kernel.
  [[noreturn]] void fiber_main() {
    asan_finish_switch(nullptr, &main_stack_bottom_, &main_stack_size_);
    call_.run(call_.context);
    current_->state = State::Done;
    asan_start_switch(nullptr, main_stack_bottom_, main_stack_size_);  // this stack's frames are gone
    switch_context(current_->context, main_context_);
    std::abort();  // never resumed
  }

  Fiber& current() {
    HEARTH_CHECK(current_ != nullptr, "a CUDA intrinsic was called outside a kernel run by hearth::cuda_cpu::launch");
    return *current_;
  }

  uint32_t live_lanes(unsigned warp) const {
    uint32_t mask = 0;
    for (unsigned i = warp * 32; i < std::min(n_, warp * 32 + 32); ++i) {
      if (fibers_[i]->state != State::Done) mask |= 1u << (i % 32);
    }
    return mask;
  }

  std::string where() const { return fmt::format("block {} of grid {} (block {})", idx(block_idx_), idx(grid_), idx(block_)); }

  static thread_local Runner* tl_runner_;

 private:
  static void start_fiber(Fiber& f) {
    constexpr size_t kEntryFrames = 16 << 10;  // generous: fiber_entry's and fiber_main's frames
    const size_t top = std::min(kEntryFrames, f.stack->size());
    asan_unpoison(static_cast<char*>(f.stack->bottom()) + (f.stack->size() - top), top);
    make_context(f.context, f.stack->bottom(), f.stack->size(), &fiber_entry);
    f.state = State::Ready;
    f.asan_fake_stack = nullptr;
  }

  void resume(Fiber& f) {
    current_ = &f;
    tl_thread_idx = &f.tid;
    void* fake_stack = nullptr;
    asan_start_switch(&fake_stack, f.stack->bottom(), f.stack->size());
    switch_context(main_context_, f.context);
    asan_finish_switch(fake_stack, nullptr, nullptr);
    tl_thread_idx = nullptr;
    current_ = nullptr;
  }

  // Releases every warp rendezvous and the block barrier whose participants have all arrived.
  bool release() {
    bool released = false;
    for (unsigned first = 0; first < n_; first += 32) {
      const unsigned count = std::min(32u, n_ - first);
      const uint32_t exists = count == 32 ? 0xffffffffu : (1u << count) - 1;
      // Lanes that exited (or never existed: a partial last warp) are not waited for, as CUDA's
      // "every non-exited thread named in the mask" says.
      uint32_t live = 0;
      for (unsigned m = 0; m < count; ++m) {
        if (fibers_[first + m]->state != State::Done) live |= 1u << m;
      }
      for (unsigned l = 0; l < count; ++l) {
        const Fiber& f = *fibers_[first + l];
        if (f.state != State::Warp) continue;
        const uint32_t group = f.mask & exists & live;
        bool complete = true;
        for (unsigned m = 0; m < count; ++m) {
          if (((group >> m) & 1u) == 0) continue;
          const Fiber& g = *fibers_[first + m];
          if (g.state != State::Warp) {
            complete = false;  // at the barrier: it may never come (then a deadlock is reported)
            continue;
          }
          if (g.op == f.op && g.mask == f.mask) continue;
          // A lane busy in a rendezvous that does not name f may come later; one that names f
          // waits for f at another intrinsic while f waits for it here.
          HEARTH_CHECK(((g.mask >> f.lane) & 1u) == 0,
                       "{}: warp {}: lane {} waits at {} with mask {:#010x} and lane {} at {} with mask {:#010x}: "
                       "lanes of one warp meeting at different intrinsics or masks is undefined in CUDA",
                       where(), f.warp, f.lane, op_name(f.op), f.mask, g.lane, op_name(g.op), g.mask);
          complete = false;
        }
        if (!complete) continue;
        uint32_t ballot = 0;
        for (unsigned m = 0; m < count; ++m) {
          if (((group >> m) & 1u) != 0 && fibers_[first + m]->value != 0) ballot |= 1u << m;
        }
        for (unsigned m = 0; m < count; ++m) {
          if (((group >> m) & 1u) == 0) continue;
          Fiber& g = *fibers_[first + m];
          switch (g.op) {
            case WarpOp::Shuffle:
              g.result = g.src < 32 && ((group >> g.src) & 1u) != 0 ? fibers_[first + g.src]->value : kShufflePoison;
              break;
            case WarpOp::Vote: g.result = ballot | (uint64_t{group} << 32); break;
            case WarpOp::SyncWarp: g.result = 0; break;
          }
          g.state = State::Ready;
        }
        released = true;
      }
    }
    unsigned at_barrier = 0;
    int passed = 0;
    for (unsigned i = 0; i < n_; ++i) {
      if (fibers_[i]->state == State::Barrier) {
        ++at_barrier;
        passed += fibers_[i]->predicate != 0;
      }
    }
    if (at_barrier > 0 && at_barrier == n_ - n_done_ && n_done_ == 0) {
      for (unsigned i = 0; i < n_; ++i) {
        fibers_[i]->predicate = passed;
        fibers_[i]->state = State::Ready;
      }
      released = true;
    }
    return released;
  }

  [[noreturn]] void report_deadlock() const {
    unsigned counts[4] = {0, 0, 0, 0};
    const Fiber* first[4] = {nullptr, nullptr, nullptr, nullptr};
    for (unsigned i = 0; i < n_; ++i) {
      const auto s = static_cast<unsigned>(fibers_[i]->state);
      if (counts[s]++ == 0) first[s] = fibers_[i].get();
    }
    std::string what;
    const auto at_barrier = static_cast<unsigned>(State::Barrier);
    const auto at_warp = static_cast<unsigned>(State::Warp);
    const auto done = static_cast<unsigned>(State::Done);
    if (counts[at_barrier] > 0) {
      what += fmt::format("; {} thread(s) wait at __syncthreads (first: thread {})", counts[at_barrier],
                          idx(first[at_barrier]->tid));
    }
    if (counts[at_warp] > 0) {
      what += fmt::format("; {} thread(s) wait at warp intrinsics (first: thread {}, warp {} lane {}, {} with mask {:#010x})",
                          counts[at_warp], idx(first[at_warp]->tid), first[at_warp]->warp, first[at_warp]->lane,
                          op_name(first[at_warp]->op), first[at_warp]->mask);
    }
    if (counts[done] > 0) {
      what += fmt::format("; {} thread(s) have exited (first: thread {})", counts[done], idx(first[done]->tid));
    }
    const bool deadlocked = true;
    HEARTH_CHECK(!deadlocked,
                 "{}: deadlock: no thread can proceed{}. A __syncthreads that not every thread of the block "
                 "reaches, or a warp intrinsic whose mask names a lane that does not reach it, is undefined in "
                 "CUDA",
                 where(), what);
    std::abort();
  }

  dim3 grid_, block_;
  uint3 block_idx_{0, 0, 0};
  KernelCall call_{};
  unsigned n_ = 0, n_done_ = 0;
  std::vector<std::unique_ptr<Fiber>> fibers_;
  Fiber* current_ = nullptr;
  Context main_context_;
  const void* main_stack_bottom_ = nullptr;
  size_t main_stack_size_ = 0;
  std::byte* shared_ = nullptr;
  size_t shared_bytes_ = 0;
};

thread_local Runner* Runner::tl_runner_ = nullptr;

void fiber_entry() { Runner::tl_runner_->fiber_main(); }

Runner& runner() {
  Runner* r = Runner::tl_runner_;
  HEARTH_CHECK(r != nullptr, "a CUDA intrinsic was called outside a kernel run by hearth::cuda_cpu::launch");
  return *r;
}

void run_blocks(dim3 grid, dim3 block, size_t shared_bytes, size_t stack_bytes, KernelCall call,
                std::atomic<uint64_t>& next, uint64_t n_blocks) {
  static thread_local Runner thread_runner;  // fibers and stacks kept for the next launch here
  thread_runner.begin_launch(grid, block, shared_bytes, stack_bytes, call);
  for (uint64_t b = next.fetch_add(1); b < n_blocks; b = next.fetch_add(1)) thread_runner.run_block(b);
  thread_runner.end_launch();
}

}  // namespace

unsigned lane_id() { return runner().current().lane; }

uint32_t active_mask() {
  Runner& r = runner();
  return r.live_lanes(r.current().warp);
}

int block_barrier(int predicate) {
  Runner& r = runner();
  Fiber& f = r.current();
  f.state = State::Barrier;
  f.predicate = predicate;
  r.park(f);
  return f.predicate;  // the scheduler left the block's count there
}

uint64_t warp_rendezvous(WarpOp op, uint32_t mask, uint64_t value, unsigned src) {
  Runner& r = runner();
  Fiber& f = r.current();
  HEARTH_CHECK(((mask >> f.lane) & 1u) != 0, "{}: thread {} (lane {}) calls {} with mask {:#010x}, which does not name it",
               r.where(), idx(f.tid), f.lane, op_name(op), mask);
  f.state = State::Warp;
  f.op = op;
  f.mask = mask;
  f.value = value;
  f.src = src;
  r.park(f);
  return f.result;
}

void run_grid(dim3 grid, dim3 block, size_t shared_bytes, const LaunchOptions& options, KernelCall call) {
  HEARTH_CHECK(Runner::tl_runner_ == nullptr, "a launch from inside a kernel (dynamic parallelism) is not modelled");
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  HEARTH_CHECK(threads >= 1 && threads <= 1024 && block.z <= 64, "block {} is not a valid CUDA block (1..1024 threads, z <= 64)",
               idx(block));
  HEARTH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7fffffffu && grid.y <= 65535 && grid.z <= 65535,
               "grid {} is not a valid CUDA grid", idx(grid));
  HEARTH_CHECK(shared_bytes <= kMaxDynamicShared, "{} bytes of dynamic shared memory: more than any GPU's {}", shared_bytes,
               kMaxDynamicShared);
  HEARTH_CHECK(options.os_threads >= 1, "LaunchOptions::os_threads must be at least 1");
  const size_t stack_bytes = options.stack_bytes != 0 ? options.stack_bytes : kDefaultStackBytes;
  const uint64_t n_blocks = uint64_t{grid.x} * grid.y * grid.z;
  std::atomic<uint64_t> next{0};
  const auto workers = static_cast<unsigned>(std::min<uint64_t>(options.os_threads, n_blocks));
  std::vector<std::thread> helpers;
  for (unsigned t = 1; t < workers; ++t) {
    helpers.emplace_back([&] { run_blocks(grid, block, shared_bytes, stack_bytes, call, next, n_blocks); });
  }
  run_blocks(grid, block, shared_bytes, stack_bytes, call, next, n_blocks);
  for (auto& h : helpers) h.join();
}

}  // namespace hearth::cuda_cpu::detail
