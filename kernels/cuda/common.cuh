// Device helpers shared by hearth's CUDA kernels: warp reductions, loads that respect the 2-byte
// alignment of GGUF blocks, f16 / bf16 bits, and the one decoder of every quantized weight type.
//
// The decoder. Every block-quantized type hearth runs on CUDA is read the same way: a row is a
// run of 32-value sub-blocks (a whole block of Q4_0..Q8_0, an eighth of a K-quant super-block),
// and each sub-block is four chunks of 8 consecutive values. `decode8<T>(row, j, part)` returns
// chunk `part` of sub-block `j` as 8 signed 8-bit integers q (two packed words) with one scale d
// and one offset m: value_i = d * q_i + m. That form holds for all of them (m = 0 for the
// symmetric types, m = -dmin * min for the K-quants with minimums, a chunk never straddles two of
// Q6_K's / Q2_K's / Q3_K's 16-value scales), so one matrix-vector kernel (dp4a against 8-bit
// activations) and one dequantizer serve every type. Dequantized values are computed as
// d * q + m with explicit round-to-nearest multiply and add, so they equal the scalar reference's
// (kernels/cpu/quants_ref.cpp) bit for bit on the GPU too (nvcc would otherwise fuse an FMA).
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "kernels/cuda/dialect.cuh"

namespace hearth::kernels::cuda::dev {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
__device__ __forceinline__ int warp_sum_int(int v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// Sum over a block of whole warps (blockDim.x a multiple of 32, at most 1024); every thread gets
// the total. `scratch` is 32 floats of shared memory, reusable after the call.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < n_warps ? scratch[lane] : 0.0f;
  total = warp_sum(total);
  __syncthreads();  // scratch may be reused
  return total;
}

__device__ __forceinline__ float f16_bits(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float bf16_bits(uint16_t h) { return __bfloat162float(__ushort_as_bfloat16(h)); }
__device__ __forceinline__ uint16_t load_u16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }
// Four bytes at a 2-byte aligned address (GGUF blocks of 18, 22, 34, 110, 210 bytes are only
// that aligned), as two 16-bit loads.
__device__ __forceinline__ uint32_t load_u32_a2(const uint8_t* p) {
  const auto* h = reinterpret_cast<const uint16_t*>(p);
  return static_cast<uint32_t>(h[0]) | (static_cast<uint32_t>(h[1]) << 16);
}
__device__ __forceinline__ float f16_at(const uint8_t* p) { return f16_bits(load_u16(p)); }

// d * q + m exactly as the reference computes it (no fused multiply-add).
__device__ __forceinline__ float dq(float d, int q, float m) { return __fadd_rn(__fmul_rn(d, static_cast<float>(q)), m); }

struct Chunk8 {
  uint32_t q[2];  // 8 signed bytes, value i in byte i % 4 of q[i / 4]
  float d;
  float m;
};

__device__ __forceinline__ int8_t chunk_q(const Chunk8& c, int i) {
  return static_cast<int8_t>((c.q[i / 4] >> (8 * (i % 4))) & 0xffu);
}

// Bits [bit, bit + 4) of a 32-bit mask, spread to bit 4 of four bytes (0 or 16 each).
__device__ __forceinline__ uint32_t high_bits4(uint32_t mask, int bit) {
  uint32_t out = 0;
  for (int i = 0; i < 4; ++i) out |= ((mask >> (bit + i)) & 1u) << (8 * i + 4);
  return out;
}

// Bytes of a KV cache row of d values (F32, F16 or Q8_0).
template <DType T>
__device__ __forceinline__ size_t cache_row_bytes(int64_t d) {
  if constexpr (T == DType::F32) return static_cast<size_t>(d) * 4;
  if constexpr (T == DType::F16) return static_cast<size_t>(d) * 2;
  return static_cast<size_t>(d / 32) * 34;
}

template <DType T>
struct Blocks;  // bytes per block and 32-value sub-blocks per block, per type
template <> struct Blocks<DType::Q4_0> { static constexpr int kBytes = 18, kSubs = 1; };
template <> struct Blocks<DType::Q4_1> { static constexpr int kBytes = 20, kSubs = 1; };
template <> struct Blocks<DType::Q5_0> { static constexpr int kBytes = 22, kSubs = 1; };
template <> struct Blocks<DType::Q5_1> { static constexpr int kBytes = 24, kSubs = 1; };
template <> struct Blocks<DType::Q8_0> { static constexpr int kBytes = 34, kSubs = 1; };
template <> struct Blocks<DType::Q2_K> { static constexpr int kBytes = 84, kSubs = 8; };
template <> struct Blocks<DType::Q3_K> { static constexpr int kBytes = 110, kSubs = 8; };
template <> struct Blocks<DType::Q4_K> { static constexpr int kBytes = 144, kSubs = 8; };
template <> struct Blocks<DType::Q5_K> { static constexpr int kBytes = 176, kSubs = 8; };
template <> struct Blocks<DType::Q6_K> { static constexpr int kBytes = 210, kSubs = 8; };

// Scale and minimum of sub-block j of a Q4_K / Q5_K super-block (6-bit fields packed in 12 bytes).
__device__ __forceinline__ void k4_scale_min(const uint8_t* s, int j, int& sc, int& mn) {
  if (j < 4) {
    sc = s[j] & 63;
    mn = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Chunk `part` (values 8 * part .. 8 * part + 7) of sub-block `j` of the row at `row`.
template <DType T>
__device__ __forceinline__ Chunk8 decode8(const uint8_t* row, int64_t j, int part) {
  Chunk8 c{};
  if constexpr (T == DType::Q4_0 || T == DType::Q4_1 || T == DType::Q5_0 || T == DType::Q5_1) {
    constexpr bool kMin = T == DType::Q4_1 || T == DType::Q5_1;
    constexpr bool kHigh = T == DType::Q5_0 || T == DType::Q5_1;
    const uint8_t* b = row + j * Blocks<T>::kBytes;
    c.d = f16_at(b);
    c.m = kMin ? f16_at(b + 2) : 0.0f;
    const uint8_t* qs = b + 2 + (kMin ? 2 : 0) + (kHigh ? 4 : 0);
    const int byte0 = 8 * (part % 2), shift = part < 2 ? 0 : 4;  // values 0..15: low nibbles
    uint32_t qh = 0;
    if constexpr (kHigh) qh = load_u32_a2(b + 2 + (kMin ? 2 : 0));
    constexpr int kBias = T == DType::Q4_0 ? 8 : T == DType::Q5_0 ? 16 : 0;
    for (int w = 0; w < 2; ++w) {
      uint32_t v = (load_u32_a2(qs + byte0 + 4 * w) >> shift) & 0x0f0f0f0fu;
      if constexpr (kHigh) v |= high_bits4(qh, 8 * part + 4 * w);
      c.q[w] = kBias == 0 ? v : __vsub4(v, static_cast<uint32_t>(kBias) * 0x01010101u);
    }
  } else if constexpr (T == DType::Q8_0) {
    const uint8_t* b = row + j * Blocks<T>::kBytes;
    c.d = f16_at(b);
    c.m = 0.0f;
    c.q[0] = load_u32_a2(b + 2 + 8 * part);
    c.q[1] = load_u32_a2(b + 2 + 8 * part + 4);
  } else if constexpr (T == DType::Q4_K || T == DType::Q5_K) {
    const uint8_t* b = row + (j / 8) * Blocks<T>::kBytes;
    const int s = static_cast<int>(j % 8);
    int sc, mn;
    k4_scale_min(b + 4, s, sc, mn);
    c.d = __fmul_rn(f16_at(b), static_cast<float>(sc));
    c.m = -__fmul_rn(f16_at(b + 2), static_cast<float>(mn));
    const uint8_t* qs = b + (T == DType::Q4_K ? 16 : 48) + 32 * (s / 2) + 8 * part;
    const int shift = s % 2 == 0 ? 0 : 4;
    for (int w = 0; w < 2; ++w) {
      uint32_t v = (load_u32_a2(qs + 4 * w) >> shift) & 0x0f0f0f0fu;
      if constexpr (T == DType::Q5_K) {
        const uint32_t h = load_u32_a2(b + 16 + 8 * part + 4 * w);  // qh[l] for the 4 values
        v |= ((h >> s) & 0x01010101u) << 4;
      }
      c.q[w] = v;
    }
  } else if constexpr (T == DType::Q6_K) {
    const uint8_t* b = row + (j / 8) * Blocks<T>::kBytes;
    const int s = static_cast<int>(j % 8), h = s / 4, k = s % 4;
    const int l0 = 8 * part;
    const uint8_t* ql = b + 64 * h + 32 * (k & 1) + l0;
    const uint8_t* qh = b + 128 + 32 * h + l0;
    const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
    c.d = __fmul_rn(f16_at(b + 208), static_cast<float>(scales[8 * h + l0 / 16 + 2 * k]));
    c.m = 0.0f;
    for (int w = 0; w < 2; ++w) {
      const uint32_t lo = (load_u32_a2(ql + 4 * w) >> (k >= 2 ? 4 : 0)) & 0x0f0f0f0fu;
      const uint32_t hi = ((load_u32_a2(qh + 4 * w) >> (2 * k)) & 0x03030303u) << 4;
      c.q[w] = __vsub4(lo | hi, 0x20202020u);
    }
  } else if constexpr (T == DType::Q2_K) {
    const uint8_t* b = row + (j / 8) * Blocks<T>::kBytes;
    const int s = static_cast<int>(j % 8), half = s / 4, shift = 2 * (s % 4);
    const uint8_t sc = b[8 * half + 2 * (s % 4) + part / 2];
    c.d = __fmul_rn(f16_at(b + 80), static_cast<float>(sc & 0xF));
    c.m = -__fmul_rn(f16_at(b + 82), static_cast<float>(sc >> 4));
    const uint8_t* qs = b + 16 + 32 * half + 8 * part;
    for (int w = 0; w < 2; ++w) c.q[w] = (load_u32_a2(qs + 4 * w) >> shift) & 0x03030303u;
  } else if constexpr (T == DType::Q3_K) {
    const uint8_t* b = row + (j / 8) * Blocks<T>::kBytes;
    const int s = static_cast<int>(j % 8), half = s / 4, shift = 2 * (s % 4);
    const int is = 2 * s + part / 2;  // the 16-value group's 6-bit scale, as unpack_scales_q3_K
    const uint8_t* sb = b + 96;
    const int low = (sb[is % 8] >> (4 * (is / 8))) & 0xF;
    const int high = (sb[8 + is % 4] >> (2 * (is / 4))) & 3;
    c.d = __fmul_rn(f16_at(b + 108), static_cast<float>((low | (high << 4)) - 32));
    c.m = 0.0f;
    const uint8_t* qs = b + 32 + 32 * half + 8 * part;
    const uint8_t* hm = b + 8 * part;
    for (int w = 0; w < 2; ++w) {
      const uint32_t q2 = (load_u32_a2(qs + 4 * w) >> shift) & 0x03030303u;
      const uint32_t hbit = (load_u32_a2(hm + 4 * w) >> s) & 0x01010101u;  // set: no -4
      c.q[w] = __vsub4(q2, (hbit ^ 0x01010101u) * 4u);
    }
  }
  return c;
}

}  // namespace hearth::kernels::cuda::dev
