// Small CUDA kernels that test the CPU execution model (test_cuda_on_cpu.cpp runs them through
// kernels/cuda/cpu_exec/cuda_on_cpu.h). This is plain CUDA: `nvcc -x cu` compiles the same text
// against the real headers (kernels/cuda/dialect.cuh picks them). Some kernels carry a
// deliberate bug behind a template parameter, so that the bug is the only difference.
#pragma once

#include "kernels/cuda/dialect.cuh"

namespace cuda_test {

// Sum of each block's blockDim.x inputs (one per thread) through shared memory, for any block
// size (a tree over the next power of two). kBarrierAfterLoad = false removes the barrier between
// the stores to shared memory and the first reads of other threads' elements: the bug.
template <bool kBarrierAfterLoad>
__global__ void block_sum(const float* __restrict__ x, float* __restrict__ out) {
  __shared__ float s[1024];
  const unsigned tid = threadIdx.x;
  s[tid] = x[blockIdx.x * blockDim.x + tid];
  if (kBarrierAfterLoad) __syncthreads();
  unsigned p = 1;
  while (p < blockDim.x) p *= 2;
  for (unsigned stride = p / 2; stride > 0; stride /= 2) {
    if (tid < stride && tid + stride < blockDim.x) s[tid] += s[tid + stride];
    __syncthreads();
  }
  if (tid == 0) out[blockIdx.x] = s[0];
}

// Sum of each warp's 32 values, every lane writing what it holds at the end: with
// __shfl_xor_sync (butterfly: every lane ends with the sum) or __shfl_down_sync (tree: lane 0
// does). kLaneError is added to every shuffle distance or mask: +-1 is the deliberate bug.
template <bool kXor, int kLaneError>
__global__ void warp_sum(const float* __restrict__ x, float* __restrict__ out) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = x[i];
  for (int offset = 16; offset > 0; offset /= 2) {
    if (kXor) {
      v += __shfl_xor_sync(0xffffffffu, v, offset + kLaneError);
    } else {
      v += __shfl_down_sync(0xffffffffu, v, static_cast<unsigned>(offset + kLaneError));
    }
  }
  out[i] = v;
}

// Warp sums in a block whose last warp may be partial: the mask names only the lanes that exist.
// kGuard = true ignores values shuffled from lanes past the warp's end (correct); false adds
// them (undefined in CUDA: the model hands out a NaN poison).
template <bool kGuard>
__global__ void partial_warp_sum(const float* __restrict__ x, float* __restrict__ out) {
  const unsigned tid = threadIdx.x;
  const unsigned lane = tid % 32;
  const unsigned width = min(32u, blockDim.x - (tid - lane));
  const unsigned mask = width == 32 ? 0xffffffffu : (1u << width) - 1;
  float v = x[blockIdx.x * blockDim.x + tid];
  for (unsigned offset = 16; offset > 0; offset /= 2) {
    const float other = __shfl_down_sync(mask, v, offset);
    if (!kGuard || lane + offset < width) v += other;
  }
  if (lane == 0) out[blockIdx.x * ((blockDim.x + 31) / 32) + tid / 32] = v;
}

// Inclusive prefix sums within segments of `width` lanes (__shfl_up_sync), and each segment's
// total broadcast from its last lane (__shfl_sync with a width).
__global__ void segment_scan(const int* __restrict__ x, int* __restrict__ scan, int* __restrict__ total, int width) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned local = (threadIdx.x % 32) % static_cast<unsigned>(width);
  int v = x[i];
  for (unsigned d = 1; d < static_cast<unsigned>(width); d *= 2) {
    const int other = __shfl_up_sync(0xffffffffu, v, d, width);
    if (local >= d) v += other;
  }
  scan[i] = v;
  total[i] = __shfl_sync(0xffffffffu, v, width - 1, width);
}

// Warp votes and block counts of a predicate; every thread writes what it saw. The half
// ballots split each warp into its even and odd lanes (two disjoint partial masks at once).
__global__ void votes(const int* __restrict__ x, unsigned* __restrict__ ballot, int* __restrict__ any,
                      int* __restrict__ all, unsigned* __restrict__ half_ballot, int* __restrict__ count) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const int predicate = x[i] > 0;
  ballot[i] = __ballot_sync(0xffffffffu, predicate);
  any[i] = __any_sync(0xffffffffu, predicate);
  all[i] = __all_sync(0xffffffffu, predicate);
  if (threadIdx.x % 2 == 0) {
    half_ballot[i] = __ballot_sync(0x55555555u, predicate);
  } else {
    half_ballot[i] = __ballot_sync(0xaaaaaaaau, predicate);
  }
  count[i] = __syncthreads_count(predicate);
}

// Each lane writes its warp neighbour's value through shared memory. kSyncWarp = false drops the
// __syncwarp between the write and the read: the bug.
template <bool kSyncWarp>
__global__ void warp_rotate(const float* __restrict__ x, float* __restrict__ y) {
  __shared__ float s[1024];
  const unsigned t = threadIdx.x;
  s[t] = x[blockIdx.x * blockDim.x + t];
  if (kSyncWarp) __syncwarp();
  y[blockIdx.x * blockDim.x + t] = s[(t & ~31u) | ((t + 1) & 31u)];
}

// Each half warp meets on its own, the lower half once and the upper half three times (so the
// lower half reaches the whole-warp shuffle while the upper half is still among itself), then
// the whole warp meets: valid under independent thread scheduling.
__global__ void half_warps_then_whole(const int* __restrict__ x, int* __restrict__ y) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned lane = threadIdx.x % 32;
  const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  const int rounds = lane < 16 ? 1 : 3;
  int v = x[i];
  for (int r = 0; r < rounds; ++r) v += __shfl_xor_sync(half, v, 1);
  y[i] = v + __shfl_xor_sync(0xffffffffu, v, 16);
}

// Threads past n return at once; the others pair up across a butterfly whose partner may have
// exited (its value is undefined in CUDA, the poison here), which must not deadlock.
__global__ void early_exit_pairs(const float* __restrict__ x, float* __restrict__ y, unsigned n) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float v = x[i];
  y[i] = v + __shfl_xor_sync(0xffffffffu, v, 1);
}

// Where each thread finds itself: thread, block, dimensions, and its warp's first thread.
__global__ void coordinates(unsigned* out) {
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  unsigned* o = out + 8 * (b * (blockDim.x * blockDim.y * blockDim.z) + t);
  o[0] = threadIdx.x;
  o[1] = threadIdx.y;
  o[2] = threadIdx.z;
  o[3] = blockIdx.x;
  o[4] = blockIdx.y;
  o[5] = blockIdx.z;
  o[6] = __shfl_sync(__activemask(), t, 0);  // the linear index of lane 0 of this thread's warp
  o[7] = blockDim.x * blockDim.y * blockDim.z * gridDim.x * gridDim.y * gridDim.z;
}

// __dp4a, both variants CUDA offers: four signed or four unsigned byte products plus c.
__global__ void dp4a(const int* __restrict__ a, const int* __restrict__ b, const int* __restrict__ c,
                     int* __restrict__ out_signed, unsigned* __restrict__ out_unsigned, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n) return;
  out_signed[i] = __dp4a(a[i], b[i], c[i]);
  out_unsigned[i] = __dp4a(static_cast<unsigned>(a[i]), static_cast<unsigned>(b[i]), static_cast<unsigned>(c[i]));
}

// f16 / bf16 conversions of every 16-bit pattern and of floats, and half2 packing.
__global__ void conversions(const unsigned short* __restrict__ bits, const float* __restrict__ f, float* __restrict__ h2f,
                            unsigned short* __restrict__ f2h, float* __restrict__ b2f, unsigned short* __restrict__ f2b,
                            float* __restrict__ lo, float* __restrict__ hi, int n_bits, int n_floats) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n_bits) {
    h2f[i] = __half2float(__ushort_as_half(bits[i]));
    b2f[i] = __bfloat162float(__ushort_as_bfloat16(bits[i]));
    const __half2 pair = __halves2half2(__ushort_as_half(bits[i]), __ushort_as_half(bits[n_bits - 1 - i]));
    lo[i] = __low2float(pair);
    hi[i] = __high2float(pair);
  }
  if (i < n_floats) {
    f2h[i] = __half_as_ushort(__float2half(f[i]));
    f2b[i] = __bfloat16_as_ushort(__float2bfloat16(f[i]));
  }
}

// Global atomics from every thread of the grid.
__global__ void atomics(int* isum, unsigned* usum, float* fsum, int* imax, int* imin, unsigned long long* cas_sum) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  atomicAdd(isum, i % 7 - 3);
  atomicAdd(usum, 1u);
  atomicAdd(fsum, 0.5f);
  atomicMax(imax, i * 37 % 1001);
  atomicMin(imin, -(i * 37 % 1001));
  unsigned long long old = atomicCAS(cas_sum, 0ull, 0ull);  // an atomic read
  unsigned long long assumed;
  do {
    assumed = old;
    old = atomicCAS(cas_sum, assumed, assumed + static_cast<unsigned long long>(i));
  } while (old != assumed);
}

// A histogram in dynamic shared memory (n_bins ints, sized by the launch), merged into global.
__global__ void shared_histogram(const int* __restrict__ x, int* hist, int n_bins) {
  HEARTH_EXTERN_SHARED(int, bins);
  for (int b = static_cast<int>(threadIdx.x); b < n_bins; b += static_cast<int>(blockDim.x)) bins[b] = 0;
  __syncthreads();
  atomicAdd(&bins[x[blockIdx.x * blockDim.x + threadIdx.x] % n_bins], 1);
  __syncthreads();
  for (int b = static_cast<int>(threadIdx.x); b < n_bins; b += static_cast<int>(blockDim.x)) atomicAdd(&hist[b], bins[b]);
}

// Each block reverses its elements through dynamic shared memory; kWrite = false reads it
// without writing it first (uninitialized: the model's fill, NaN).
template <bool kWrite>
__global__ void reverse_block(const float* __restrict__ x, float* __restrict__ y) {
  HEARTH_EXTERN_SHARED(float, s);
  const unsigned t = threadIdx.x;
  const unsigned base = blockIdx.x * blockDim.x;
  if (kWrite) s[t] = x[base + t];
  __syncthreads();
  y[base + t] = s[blockDim.x - 1 - t];
}

// Deadlocks (undefined in CUDA; the model must report them, not hang).
__global__ void barrier_in_branch(float* y) {  // half the block never reaches the barrier
  if (threadIdx.x < 16) __syncthreads();
  y[threadIdx.x] = 1.0f;
}
__global__ void shuffle_against_barrier(float* y) {  // lanes 0-15 shuffle, 16-31 wait at a barrier
  float v = y[threadIdx.x];
  if (threadIdx.x < 16) {
    v = __shfl_sync(0xffffffffu, v, 0);
  } else {
    __syncthreads();
  }
  y[threadIdx.x] = v;
}
__global__ void mismatched_intrinsics(float* y) {  // half the warp shuffles, half votes
  float v = y[threadIdx.x];
  if (threadIdx.x < 16) {
    v = __shfl_sync(0xffffffffu, v, 0);
  } else {
    v = static_cast<float>(__ballot_sync(0xffffffffu, v > 0.0f));
  }
  y[threadIdx.x] = v;
}

}  // namespace cuda_test
