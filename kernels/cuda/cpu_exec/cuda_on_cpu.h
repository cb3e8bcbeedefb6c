// CUDA's execution model on the CPU — TEST INFRASTRUCTURE, not a GPU and not a backend.
//
// What it is. A header that lets CUDA kernel source (`__global__` functions in the CUDA dialect
// hearth's kernels use) compile with g++ and run on the CPU under CUDA's execution model, so CI
// can run every CUDA kernel against the scalar reference on machines without a GPU. Kernel
// sources include `kernels/cuda/dialect.cuh`, which includes the real CUDA headers under nvcc
// and this header otherwise; the same text compiles both ways.
//
// What it checks: that a kernel computes the right answer when its threads run as CUDA runs
// them. What it says nothing about: speed (a CUDA thread here is a fiber; a launch costs
// microseconds per thread), occupancy, coalescing, bank conflicts, register pressure. A kernel
// that passes here has never touched a GPU; never report it as verified on hardware.
//
// The model, as executed:
//  - A launch (`hearth::cuda_cpu::launch`, or `HEARTH_LAUNCH` in code shared with nvcc builds)
//    runs every block of the grid, in order (x fastest), on the calling thread; or, with
//    `LaunchOptions::os_threads` > 1, spread over that many OS threads, one block per OS thread
//    at a time. It returns when every block is done.
//  - The threads of a block are cooperative fibers (a small context switch of our own on x86-64
//    and aarch64, ucontext elsewhere) on one OS thread, each with its own
//    stack (`LaunchOptions::stack_bytes`, default 64 KiB, 512 KiB under AddressSanitizer; a guard
//    page below it). A fiber runs until it reaches a synchronization point — `__syncthreads*`
//    or a warp-synchronous intrinsic — or returns. The scheduler runs the ready fibers in
//    thread-index order, then releases every barrier and warp rendezvous whose participants
//    have all arrived, and repeats. The schedule is deterministic: a kernel missing a
//    `__syncthreads` reads shared memory its neighbours have not written yet, every run.
//  - `__syncthreads()` (and `_count` / `_and` / `_or`) waits for every thread of the block. If
//    threads wait at a barrier that others can never reach (they exited, or wait at a warp
//    rendezvous that cannot complete) the launch aborts through HEARTH_CHECK with a message
//    naming the threads ("deadlock"): undefined in CUDA, a bug to report here, never a hang.
//  - Warps are 32 consecutive linear thread indices (x fastest, then y, z); a block whose size is
//    not a multiple of 32 has a partial last warp whose missing lanes do not exist. Warp
//    intrinsics (`__shfl*_sync`, `__ballot_sync`, `__any_sync`, `__all_sync`, `__syncwarp`) are
//    rendezvous in lock-step: every non-exited lane named in the mask deposits its value, all
//    switch, then each reads the lane it asked for. Lanes named in the mask that have exited (or
//    do not exist in a partial warp) are not waited for, as CUDA specifies; a named lane that
//    waits at a different kind of warp intrinsic or with a different mask aborts the launch
//    (undefined in CUDA), and one that waits at `__syncthreads` instead is a deadlock. Partial
//    masks are honoured: the lanes of a mask meet each other only. A shuffle that reads a lane
//    outside the mask, exited or beyond a partial warp gets a poison value (bytes 0xFFC0DEAD…:
//    a NaN as float) — undefined in CUDA, visible here. Such lanes count as false in votes.
//    `__activemask()` returns the lanes of the warp that have not exited (there is no
//    divergence to observe between rendezvous). The calling lane must be named in its mask.
//  - `__shared__` is `static thread_local`: one copy per OS thread, so shared by the fibers of a
//    block and distinct between blocks running at once. It is not cleared between blocks (as on
//    a GPU, a block may find what the previous block on the same OS thread left, also from an
//    earlier launch; a new OS thread starts with it zeroed). Dynamic shared
//    memory (`HEARTH_EXTERN_SHARED(type, name)`, which is `extern __shared__ type name[]` under
//    nvcc) is sized by the launch, aligned to 128 bytes and filled with 0xFF bytes (a NaN as
//    float, -1 as an integer) before each block. Every `__shared__` array of every kernel lives
//    in every OS thread's TLS: fine for test binaries, the reason this is not for production.
//  - Atomics are `std::atomic_ref` operations (sequentially consistent), correct across OS
//    threads; `__threadfence*` are fences.
//  - `__half` / `__nv_bfloat16` convert with core/fp16.h (round to nearest even, the
//    reference's bits); half arithmetic operators compute in float and round once, as correctly
//    rounded f16 hardware does. `__dp4a`, integer intrinsics and the fast math functions
//    (`__expf` = expf, ...) are exact C++ equivalents (the fast math ones are *more* accurate
//    than the GPU's approximations; kernel tolerances must come from the GPU's, not from here).
//
// What it cannot execute or observe (keep these behind small wrappers with a CPU model of their
// own, run for real only on a GPU): inline PTX (`asm(...)`: `mma.sync`, `ldmatrix`,
// `cp.async`, ...), tensor-core intrinsics (wmma), `__CUDA_ARCH__`-specific paths (it is not
// defined: kernels take their generic path), clocks and timing, cooperative groups and grid-wide
// sync, concurrency between streams (a launch is synchronous; a recording stream only keeps
// launches to replay them in order), textures and surfaces, `__constant__` /
// `__device__` variables as separate memory spaces (they are plain globals), memory-model races
// beyond what the fiber schedule exposes (only synchronization points interleave threads, so a
// race between two plain accesses with no sync point between them is never observed), and
// divergence inside a warp between rendezvous.
//
// Kernels must not throw (as in CUDA; an exception leaving a kernel terminates the process).
// Limits checked at launch: block ≤ 1024 threads (z ≤ 64), grid y and z ≤ 65535, dynamic shared
// memory ≤ 227 KiB, no launch from inside a kernel.
#pragma once

#ifdef __CUDACC__
#error "cuda_on_cpu.h is the CPU stand-in for CUDA; nvcc builds include the real CUDA headers (kernels/cuda/dialect.cuh)"
#endif

#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"

#define HEARTH_CUDA_ON_CPU 1

// ---------------------------------------------------------------------------------------------
// Execution space and memory space qualifiers: nothing on the CPU.
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __shared__ static thread_local
// (__restrict__ is a g++ keyword already. __noinline__ is left undefined: libstdc++ spells
// __attribute__((__noinline__)) and a macro would break it.)

// ---------------------------------------------------------------------------------------------
// Vector types (CUDA's names, sizes and alignments).
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}  // NOLINT: implicit, as in CUDA
  constexpr operator uint3() const { return {x, y, z}; }
};
struct alignas(2) char2 { signed char x, y; };
struct alignas(4) char4 { signed char x, y, z, w; };
struct alignas(2) uchar2 { unsigned char x, y; };
struct alignas(4) uchar4 { unsigned char x, y, z, w; };
struct alignas(4) short2 { short x, y; };
struct alignas(4) ushort2 { unsigned short x, y; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
inline char4 make_char4(signed char x, signed char y, signed char z, signed char w) { return {x, y, z, w}; }
inline uchar4 make_uchar4(unsigned char x, unsigned char y, unsigned char z, unsigned char w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// A stream. Launches on a null stream, or on a stream that is not recording, run at once (every
// launch is synchronous here). A recording stream (what `cudaStreamBeginCapture` makes in CUDA)
// keeps each launch, with its arguments converted to the kernel's parameter types, instead of
// running it; `hearth::cuda_cpu::replay` runs what was kept, in order (a CUDA graph's launch).
struct CUstream_st {
  std::vector<std::function<void()>>* recording = nullptr;
};
using cudaStream_t = CUstream_st*;

inline constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// The runtime's per-OS-thread state that the index variables read (kernels/cuda/cpu_exec/
// cuda_on_cpu.cpp writes it when it switches fibers and blocks).
namespace hearth::cuda_cpu {

struct LaunchOptions {
  unsigned os_threads = 1;  // blocks spread over this many OS threads (1: all on the caller's)
  size_t stack_bytes = 0;   // stack of each CUDA thread; 0: 64 KiB (512 KiB under ASan)
};

namespace detail {

inline constinit thread_local const uint3* tl_thread_idx = nullptr;  // the running fiber's
inline constinit thread_local uint3 tl_block_idx{0, 0, 0};
inline constinit thread_local dim3 tl_block_dim{0, 0, 0};
inline constinit thread_local dim3 tl_grid_dim{0, 0, 0};
inline constinit thread_local std::byte* tl_dynamic_shared = nullptr;

inline const uint3& thread_idx() {
  HEARTH_CHECK(tl_thread_idx != nullptr, "threadIdx read outside a kernel run by hearth::cuda_cpu::launch");
  return *tl_thread_idx;
}

// Warp rendezvous. Shuffles deposit a value and the absolute lane to read; votes a predicate.
enum class WarpOp : uint8_t { SyncWarp, Shuffle, Vote };
// Shuffle: the value of lane `src` (or the poison when it is outside the group). Vote: the
// ballot of the group in the low 32 bits and the group's lanes in the high 32 bits.
uint64_t warp_rendezvous(WarpOp op, uint32_t mask, uint64_t value, unsigned src);
unsigned lane_id();
uint32_t active_mask();
int block_barrier(int predicate);  // returns how many threads passed a non-zero predicate

inline constexpr uint64_t kShufflePoison = 0xFFC0DEADFFC0DEADull;

struct KernelCall {
  void (*run)(const void* context);
  const void* context;
};
void run_grid(dim3 grid, dim3 block, size_t shared_bytes, const LaunchOptions& options, KernelCall call);

template <class T>
inline uint64_t to_bits(const T& v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <class T>
inline T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}
inline void check_width(int width) {
  HEARTH_CHECK(width >= 1 && width <= 32 && (width & (width - 1)) == 0,
               "shuffle width {} is not a power of two in [1, 32]", width);
}

}  // namespace detail

// Runs kernel<<<grid, block, shared_bytes>>>(args...) to completion. Arguments are converted to
// the kernel's parameter types once and each CUDA thread gets its own copy, as in CUDA.
template <class... Params, class... Args>
void launch(const LaunchOptions& options, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
            Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch: wrong number of kernel arguments");
  struct Call {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  };
  const Call call{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  detail::run_grid(grid, block, shared_bytes, options,
                   {+[](const void* context) {
                      const auto* c = static_cast<const Call*>(context);
                      std::apply([c](const auto&... a) { c->kernel(a...); }, c->params);
                    },
                    &call});
}
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Args&&... args) {
  launch(LaunchOptions{}, kernel, grid, block, shared_bytes, std::forward<Args>(args)...);
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...): runs now, or is kept by a recording
// stream (see CUstream_st) to run on each replay with the arguments it was given.
template <class... Params, class... Args>
void launch_on(cudaStream_t stream, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
               Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch: wrong number of kernel arguments");
  if (stream == nullptr || stream->recording == nullptr) {
    launch(kernel, grid, block, shared_bytes, std::forward<Args>(args)...);
    return;
  }
  stream->recording->push_back(
      [kernel, grid, block, shared_bytes, params = std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)] {
        std::apply([&](const auto&... a) { launch(kernel, grid, block, shared_bytes, a...); }, params);
      });
}

// The block's dynamic shared memory (what `extern __shared__ T name[]` names in CUDA).
template <class T>
inline T* dynamic_shared() {
  HEARTH_CHECK(detail::tl_dynamic_shared != nullptr, "dynamic shared memory used outside a kernel launch");
  return reinterpret_cast<T*>(detail::tl_dynamic_shared);
}

}  // namespace hearth::cuda_cpu

#define threadIdx (::hearth::cuda_cpu::detail::thread_idx())
#define blockIdx (std::as_const(::hearth::cuda_cpu::detail::tl_block_idx))
#define blockDim (std::as_const(::hearth::cuda_cpu::detail::tl_block_dim))
#define gridDim (std::as_const(::hearth::cuda_cpu::detail::tl_grid_dim))

// `extern __shared__ type name[]` in CUDA (see kernels/cuda/dialect.cuh).
#define HEARTH_EXTERN_SHARED(type, name) type* const name = ::hearth::cuda_cpu::dynamic_shared<type>()
// kernel<<<grid, block, shared_bytes, stream>>>(args...) in CUDA; here synchronous, or kept by a
// recording stream (launch_on).
#define HEARTH_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  ::hearth::cuda_cpu::launch_on(stream, kernel, grid, block, shared_bytes __VA_OPT__(, ) __VA_ARGS__)

// ---------------------------------------------------------------------------------------------
// Block synchronization.
inline void __syncthreads() { (void)::hearth::cuda_cpu::detail::block_barrier(0); }
inline int __syncthreads_count(int predicate) { return ::hearth::cuda_cpu::detail::block_barrier(predicate != 0); }
inline int __syncthreads_and(int predicate) {
  // Every thread passes its predicate; the count equals the block size when all are true.
  const auto& d = ::hearth::cuda_cpu::detail::tl_block_dim;
  return ::hearth::cuda_cpu::detail::block_barrier(predicate != 0) == static_cast<int>(d.x * d.y * d.z);
}
inline int __syncthreads_or(int predicate) { return ::hearth::cuda_cpu::detail::block_barrier(predicate != 0) != 0; }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---------------------------------------------------------------------------------------------
// Warp-synchronous intrinsics.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  (void)::hearth::cuda_cpu::detail::warp_rendezvous(::hearth::cuda_cpu::detail::WarpOp::SyncWarp, mask, 0, 0);
}
inline unsigned __activemask() { return ::hearth::cuda_cpu::detail::active_mask(); }

template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  namespace d = ::hearth::cuda_cpu::detail;
  d::check_width(width);
  const unsigned lane = d::lane_id();
  const unsigned w = static_cast<unsigned>(width);
  const unsigned src = (lane & ~(w - 1)) | (static_cast<unsigned>(src_lane) & (w - 1));
  return d::from_bits<T>(d::warp_rendezvous(d::WarpOp::Shuffle, mask, d::to_bits(var), src));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  namespace d = ::hearth::cuda_cpu::detail;
  d::check_width(width);
  const unsigned lane = d::lane_id();
  const unsigned local = lane & (static_cast<unsigned>(width) - 1);
  const unsigned src = local >= delta ? lane - delta : lane;  // below the segment: unchanged
  return d::from_bits<T>(d::warp_rendezvous(d::WarpOp::Shuffle, mask, d::to_bits(var), src));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  namespace d = ::hearth::cuda_cpu::detail;
  d::check_width(width);
  const unsigned lane = d::lane_id();
  const unsigned local = lane & (static_cast<unsigned>(width) - 1);
  const unsigned src = local + delta < static_cast<unsigned>(width) ? lane + delta : lane;  // past it: unchanged
  return d::from_bits<T>(d::warp_rendezvous(d::WarpOp::Shuffle, mask, d::to_bits(var), src));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  namespace d = ::hearth::cuda_cpu::detail;
  d::check_width(width);
  const unsigned lane = d::lane_id();
  const unsigned j = lane ^ (static_cast<unsigned>(lane_mask) & 31u);
  // A later segment is out of reach (own value); earlier ones are readable, as in CUDA.
  const unsigned src = j > (lane | (static_cast<unsigned>(width) - 1)) ? lane : j;
  return d::from_bits<T>(d::warp_rendezvous(d::WarpOp::Shuffle, mask, d::to_bits(var), src));
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  namespace d = ::hearth::cuda_cpu::detail;
  return static_cast<uint32_t>(d::warp_rendezvous(d::WarpOp::Vote, mask, predicate != 0, 0));
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
  namespace d = ::hearth::cuda_cpu::detail;
  const uint64_t r = d::warp_rendezvous(d::WarpOp::Vote, mask, predicate != 0, 0);
  return static_cast<uint32_t>(r) == static_cast<uint32_t>(r >> 32);
}

// ---------------------------------------------------------------------------------------------
// Atomics (std::atomic_ref: valid on global and shared memory, across OS threads).
namespace hearth::cuda_cpu::detail {
template <class T, class F>
inline T atomic_update(T* address, F f) {
  std::atomic_ref<T> a(*address);
  T old = a.load();
  while (!a.compare_exchange_weak(old, f(old))) {
  }
  return old;
}
template <class T>
inline T atomic_cas(T* address, T compare, T val) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, val);
  return compare;  // the old value, whether or not it was replaced
}
}  // namespace hearth::cuda_cpu::detail

inline int atomicAdd(int* address, int val) { return std::atomic_ref<int>(*address).fetch_add(val); }
inline unsigned atomicAdd(unsigned* address, unsigned val) { return std::atomic_ref<unsigned>(*address).fetch_add(val); }
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long val) {
  return std::atomic_ref<unsigned long long>(*address).fetch_add(val);
}
inline float atomicAdd(float* address, float val) { return std::atomic_ref<float>(*address).fetch_add(val); }
inline double atomicAdd(double* address, double val) { return std::atomic_ref<double>(*address).fetch_add(val); }
inline int atomicSub(int* address, int val) { return std::atomic_ref<int>(*address).fetch_sub(val); }
inline unsigned atomicSub(unsigned* address, unsigned val) { return std::atomic_ref<unsigned>(*address).fetch_sub(val); }
inline int atomicExch(int* address, int val) { return std::atomic_ref<int>(*address).exchange(val); }
inline unsigned atomicExch(unsigned* address, unsigned val) { return std::atomic_ref<unsigned>(*address).exchange(val); }
inline float atomicExch(float* address, float val) { return std::atomic_ref<float>(*address).exchange(val); }
inline int atomicMax(int* address, int val) {
  return ::hearth::cuda_cpu::detail::atomic_update(address, [val](int old) { return old > val ? old : val; });
}
inline unsigned atomicMax(unsigned* address, unsigned val) {
  return ::hearth::cuda_cpu::detail::atomic_update(address, [val](unsigned old) { return old > val ? old : val; });
}
inline int atomicMin(int* address, int val) {
  return ::hearth::cuda_cpu::detail::atomic_update(address, [val](int old) { return old < val ? old : val; });
}
inline unsigned atomicMin(unsigned* address, unsigned val) {
  return ::hearth::cuda_cpu::detail::atomic_update(address, [val](unsigned old) { return old < val ? old : val; });
}
inline int atomicAnd(int* address, int val) { return std::atomic_ref<int>(*address).fetch_and(val); }
inline unsigned atomicAnd(unsigned* address, unsigned val) { return std::atomic_ref<unsigned>(*address).fetch_and(val); }
inline int atomicOr(int* address, int val) { return std::atomic_ref<int>(*address).fetch_or(val); }
inline unsigned atomicOr(unsigned* address, unsigned val) { return std::atomic_ref<unsigned>(*address).fetch_or(val); }
inline int atomicXor(int* address, int val) { return std::atomic_ref<int>(*address).fetch_xor(val); }
inline unsigned atomicXor(unsigned* address, unsigned val) { return std::atomic_ref<unsigned>(*address).fetch_xor(val); }
inline int atomicCAS(int* address, int compare, int val) {
  return ::hearth::cuda_cpu::detail::atomic_cas(address, compare, val);
}
inline unsigned atomicCAS(unsigned* address, unsigned compare, unsigned val) {
  return ::hearth::cuda_cpu::detail::atomic_cas(address, compare, val);
}
inline unsigned long long atomicCAS(unsigned long long* address, unsigned long long compare, unsigned long long val) {
  return ::hearth::cuda_cpu::detail::atomic_cas(address, compare, val);
}

// ---------------------------------------------------------------------------------------------
// Integer and bit intrinsics.
inline int __dp4a(int a, int b, int c) {  // four signed byte products + c, wrapping like the GPU
  int64_t sum = c;
  for (int i = 0; i < 4; ++i) {
    const auto ai = static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * i));
    const auto bi = static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * i));
    sum += ai * bi;
  }
  return static_cast<int>(static_cast<uint32_t>(static_cast<uint64_t>(sum)));
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {  // four unsigned byte products + c
  uint32_t sum = c;
  for (int i = 0; i < 4; ++i) sum += ((a >> (8 * i)) & 0xffu) * ((b >> (8 * i)) & 0xffu);
  return sum;
}
inline int __dp4a(char4 a, char4 b, int c) { return __dp4a(std::bit_cast<int>(a), std::bit_cast<int>(b), c); }
inline unsigned __dp4a(uchar4 a, uchar4 b, unsigned c) {
  return __dp4a(std::bit_cast<unsigned>(a), std::bit_cast<unsigned>(b), c);
}
inline unsigned __vsub4(unsigned a, unsigned b) {  // per-byte a - b, each byte wrapping
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= (((a >> (8 * i)) - (b >> (8 * i))) & 0xffu) << (8 * i);
  return r;
}
inline unsigned __vadd4(unsigned a, unsigned b) {  // per-byte a + b, each byte wrapping
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= (((a >> (8 * i)) + (b >> (8 * i))) & 0xffu) << (8 * i);
  return r;
}
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<uint32_t>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<uint64_t>(x)); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(static_cast<uint32_t>(x)) + 1; }
inline int __ffsll(long long x) { return x == 0 ? 0 : std::countr_zero(static_cast<uint64_t>(x)) + 1; }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t bytes = (static_cast<uint64_t>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((bytes >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return r;
}
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}

// CUDA's global min / max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(int a, unsigned b) { return min(static_cast<unsigned>(a), b); }
inline unsigned max(int a, unsigned b) { return max(static_cast<unsigned>(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, static_cast<unsigned>(b)); }
inline unsigned max(unsigned a, int b) { return max(a, static_cast<unsigned>(b)); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// ---------------------------------------------------------------------------------------------
// Float math. expf, tanhf, fmaxf, sqrtf, ... come from <cmath>; the rest are exact stand-ins.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fmaf_rn(float x, float y, float z) { return std::fma(x, y, z); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }

// ---------------------------------------------------------------------------------------------
// 16-bit floats: the bits of core/fp16.h (round to nearest even).
struct __half {
  __half() = default;
  __half(float f) : x_(::hearth::fp32_to_fp16(f)) {}  // NOLINT: implicit, as in CUDA
  operator float() const { return ::hearth::fp16_to_fp32(x_); }
  uint16_t x_;
};
struct __nv_bfloat16 {
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : x_(::hearth::fp32_to_bf16(f)) {}  // NOLINT: implicit, as in CUDA
  operator float() const { return ::hearth::bf16_to_fp32(x_); }
  uint16_t x_;
};
struct alignas(4) __half2 {
  __half x, y;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
using half = __half;
using half2 = __half2;
using nv_bfloat16 = __nv_bfloat16;
using nv_bfloat162 = __nv_bfloat162;

inline __half __ushort_as_half(unsigned short bits) {
  __half h;
  h.x_ = bits;
  return h;
}
inline unsigned short __half_as_ushort(__half h) { return h.x_; }
inline __half __float2half(float f) { return __ushort_as_half(::hearth::fp32_to_fp16(f)); }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline float __half2float(__half h) { return ::hearth::fp16_to_fp32(h.x_); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) {
  __nv_bfloat16 b;
  b.x_ = bits;
  return b;
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.x_; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __ushort_as_bfloat16(::hearth::fp32_to_bf16(f)); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return ::hearth::bf16_to_fp32(b.x_); }

inline __half2 __halves2half2(__half lo, __half hi) { return {lo, hi}; }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half(lo), __float2half(hi)}; }
inline __half2 __float2half2_rn(float f) { return {__float2half(f), __float2half(f)}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) { return {lo, hi}; }
inline float __low2float(__nv_bfloat162 b) { return __bfloat162float(b.x); }
inline float __high2float(__nv_bfloat162 b) { return __bfloat162float(b.y); }

// Half arithmetic: float, rounded once (f32 holds every exact result of two halves' +, -, *
// to within one rounding that cannot change the f16 result: 24 >= 2 * 11 + 2 bits).
inline __half __hadd(__half a, __half b) { return __float2half(__half2float(a) + __half2float(b)); }
inline __half __hsub(__half a, __half b) { return __float2half(__half2float(a) - __half2float(b)); }
inline __half __hmul(__half a, __half b) { return __float2half(__half2float(a) * __half2float(b)); }
inline __half __hdiv(__half a, __half b) { return __float2half(__half2float(a) / __half2float(b)); }
inline __half __hneg(__half a) { return __ushort_as_half(static_cast<unsigned short>(a.x_ ^ 0x8000u)); }
inline __half operator+(__half a, __half b) { return __hadd(a, b); }
inline __half operator-(__half a, __half b) { return __hsub(a, b); }
inline __half operator*(__half a, __half b) { return __hmul(a, b); }
inline __half operator/(__half a, __half b) { return __hdiv(a, b); }
inline __half operator-(__half a) { return __hneg(a); }
inline __half2 __hadd2(__half2 a, __half2 b) { return {__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return {__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
