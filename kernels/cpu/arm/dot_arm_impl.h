// The aarch64 kernels, written once and compiled once per level: dot_neon.cpp and
// dot_dotprod.cpp define HEARTH_ARM_NS (the namespace, so the two copies never collide) and
// HEARTH_ARM_DOTPROD (1: int8 dot products with sdot instead of vmull_s8 + pairwise adds), then
// include this file. Include it nowhere else. Contracts: kernels/cpu/arm/dot_arm.h.
//
// Every block field is read through memcpy or byte loads at byte offsets, never through a
// (possibly misaligned) block pointer. Integer products are exact; the float reduction order
// differs from the scalar reference (per-lane accumulation across blocks, FMA), which is why
// tests compare dots with a tolerance and quantizers byte for byte.
#include <arm_neon.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/quant_blocks.h"
#include "kernels/cpu/arm/dot_arm.h"

#if !defined(HEARTH_ARM_NS) || !defined(HEARTH_ARM_DOTPROD)
#error "define HEARTH_ARM_NS and HEARTH_ARM_DOTPROD before including dot_arm_impl.h"
#endif

namespace hearth::kernels::arm::HEARTH_ARM_NS {
namespace {

// --- loads and stores ------------------------------------------------------------------------

// f16 <-> f32 through the vector conversions (fcvtl / fcvtn): exact one way, round to nearest
// even the other like core/fp16.h, which must not be called from here: an inline function
// compiled with this file's flags could be the copy the linker keeps for the baseline code.
inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}
inline void store_f16(uint8_t* p, float v) {
  const uint16_t h = vget_lane_u16(vreinterpret_u16_f16(vcvt_f16_f32(vdupq_n_f32(v))), 0);
  std::memcpy(p, &h, sizeof(h));
}
inline float load_f32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, sizeof(f));
  return f;
}
inline int8x16_t load_s8(const uint8_t* p) { return vreinterpretq_s8_u8(vld1q_u8(p)); }
// Four f16 / bf16 / f32 values at any address (byte loads), widened to f32.
inline float32x4_t f16x4(const uint8_t* p) { return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p))); }
inline float32x4_t bf16x4(const uint8_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vreinterpret_u16_u8(vld1_u8(p)), 16)); }
inline float32x4_t f32x4(const uint8_t* p) { return vreinterpretq_f32_u8(vld1q_u8(p)); }

// 16 bytes of packed nibbles -> low nibbles (elements 0..15) and high nibbles (16..31).
inline void nibbles_32(const uint8_t* qs, uint8x16_t& lo, uint8x16_t& hi) {
  const uint8x16_t v = vld1q_u8(qs);
  lo = vandq_u8(v, vdupq_n_u8(0x0F));
  hi = vshrq_n_u8(v, 4);
}

// 32 bits (little-endian) -> two 16-byte masks, 0xFF where bit j is set: bits 0..15 in m0,
// bits 16..31 in m1.
inline void bits_32(const uint8_t* qh, uint8x16_t& m0, uint8x16_t& m1) {
  uint32_t bits;
  std::memcpy(&bits, qh, sizeof(bits));
  const uint8x8_t bytes = vcreate_u8(bits);
  const uint8x16_t bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040201008040201ULL));  // 1, 2, 4, ... 128 twice
  m0 = vtstq_u8(vcombine_u8(vdup_lane_u8(bytes, 0), vdup_lane_u8(bytes, 1)), bit);
  m1 = vtstq_u8(vcombine_u8(vdup_lane_u8(bytes, 2), vdup_lane_u8(bytes, 3)), bit);
}

// --- integer products --------------------------------------------------------------------------

// acc + sums of a * b over groups of four int8 lanes (which lanes form a group differs between
// the two paths; only the total of the four results is meaningful). Exact for any int8 values.
inline int32x4_t dot_s8(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if HEARTH_ARM_DOTPROD
  return vdotq_s32(acc, a, b);
#else
  // |a b| <= 128 * 128 fits int16; the pairwise adds widen to int32 before summing.
  return vpadalq_s16(vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b))), vmull_high_s8(a, b));
#endif
}

// 32 int8 pairs -> 4 x int32 partial sums.
inline int32x4_t dot_32(int8x16_t a0, int8x16_t a1, const uint8_t* y) {
  return dot_s8(dot_s8(vdupq_n_s32(0), a0, load_s8(y)), a1, load_s8(y + 16));
}

// --- 32-element blocks -----------------------------------------------------------------------
// One weight block is decoded once and dotted with the matching block of NR activation rows.

// Signed weights (q - offset as int8) against Q8_0 activations.
template <class Block, int NR, class Decode>
void dot_signed_q8_0(int64_t n, const void* w, const void* x, size_t x_stride, float* out, Decode decode) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  const int64_t nb = n / kQK8_0;
  float32x4_t acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = vdupq_n_f32(0.0f);
  for (int64_t b = 0; b < nb; ++b, wb += sizeof(Block)) {
    int8x16_t q0, q1;
    decode(wb, q0, q1);
    const float dw = load_f16(wb + offsetof(Block, d));
    for (int r = 0; r < NR; ++r) {
      const uint8_t* y = xb + r * x_stride + static_cast<size_t>(b) * sizeof(BlockQ8_0);
      const int32x4_t p = dot_32(q0, q1, y + offsetof(BlockQ8_0, qs));
      acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(p), dw * load_f16(y + offsetof(BlockQ8_0, d)));
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = vaddvq_f32(acc[r]);
}

// Unsigned weights (x = d q + m, q < 32) against Q8_1 activations, whose s = d_y sum(q_y)
// applies m.
template <class Block, int NR, class Decode>
void dot_unsigned_q8_1(int64_t n, const void* w, const void* x, size_t x_stride, float* out, Decode decode) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  const int64_t nb = n / kQK8_0;
  float32x4_t acc[NR];
  float summ[NR];
  for (int r = 0; r < NR; ++r) {
    acc[r] = vdupq_n_f32(0.0f);
    summ[r] = 0.0f;
  }
  for (int64_t b = 0; b < nb; ++b, wb += sizeof(Block)) {
    int8x16_t q0, q1;
    decode(wb, q0, q1);
    const float dw = load_f16(wb + offsetof(Block, d));
    const float mw = load_f16(wb + offsetof(Block, m));
    for (int r = 0; r < NR; ++r) {
      const uint8_t* y = xb + r * x_stride + static_cast<size_t>(b) * sizeof(BlockQ8_1);
      const int32x4_t p = dot_32(q0, q1, y + offsetof(BlockQ8_1, qs));
      acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(p), dw * load_f16(y + offsetof(BlockQ8_1, d)));
      summ[r] += mw * load_f16(y + offsetof(BlockQ8_1, s));
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = vaddvq_f32(acc[r]) + summ[r];
}

template <int NR>
void dot_q8_0(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_signed_q8_0<BlockQ8_0, NR>(n, w, x, x_stride, out, [](const uint8_t* b, int8x16_t& q0, int8x16_t& q1) {
    q0 = load_s8(b + offsetof(BlockQ8_0, qs));
    q1 = load_s8(b + offsetof(BlockQ8_0, qs) + 16);
  });
}

template <int NR>
void dot_q4_0(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_signed_q8_0<BlockQ4_0, NR>(n, w, x, x_stride, out, [](const uint8_t* b, int8x16_t& q0, int8x16_t& q1) {
    uint8x16_t lo, hi;
    nibbles_32(b + offsetof(BlockQ4_0, qs), lo, hi);
    q0 = vsubq_s8(vreinterpretq_s8_u8(lo), vdupq_n_s8(8));
    q1 = vsubq_s8(vreinterpretq_s8_u8(hi), vdupq_n_s8(8));
  });
}

template <int NR>
void dot_q5_0(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_signed_q8_0<BlockQ5_0, NR>(n, w, x, x_stride, out, [](const uint8_t* b, int8x16_t& q0, int8x16_t& q1) {
    uint8x16_t lo, hi, m0, m1;
    nibbles_32(b + offsetof(BlockQ5_0, qs), lo, hi);
    bits_32(b + offsetof(BlockQ5_0, qh), m0, m1);
    // q - 16 as int8: where the fifth bit is clear, set the top four bits (nibble - 16).
    const uint8x16_t top = vdupq_n_u8(0xF0);
    q0 = vreinterpretq_s8_u8(vorrq_u8(lo, vbicq_u8(top, m0)));
    q1 = vreinterpretq_s8_u8(vorrq_u8(hi, vbicq_u8(top, m1)));
  });
}

template <int NR>
void dot_q4_1(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_unsigned_q8_1<BlockQ4_1, NR>(n, w, x, x_stride, out, [](const uint8_t* b, int8x16_t& q0, int8x16_t& q1) {
    uint8x16_t lo, hi;
    nibbles_32(b + offsetof(BlockQ4_1, qs), lo, hi);
    q0 = vreinterpretq_s8_u8(lo);
    q1 = vreinterpretq_s8_u8(hi);
  });
}

template <int NR>
void dot_q5_1(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_unsigned_q8_1<BlockQ5_1, NR>(n, w, x, x_stride, out, [](const uint8_t* b, int8x16_t& q0, int8x16_t& q1) {
    uint8x16_t lo, hi, m0, m1;
    nibbles_32(b + offsetof(BlockQ5_1, qs), lo, hi);
    bits_32(b + offsetof(BlockQ5_1, qh), m0, m1);
    const uint8x16_t fifth = vdupq_n_u8(0x10);
    q0 = vreinterpretq_s8_u8(vorrq_u8(lo, vandq_u8(m0, fifth)));
    q1 = vreinterpretq_s8_u8(vorrq_u8(hi, vandq_u8(m1, fifth)));
  });
}

// --- k-quants against Q8_K -----------------------------------------------------------------

// sum_j min[j] * (bsums[2j] + bsums[2j + 1]): the minimums' term of Q4_K / Q5_K.
inline int mins_term(const uint8_t* y, const int mn[8]) {
  int16_t bs[kQK_K / 16];
  std::memcpy(bs, y + offsetof(BlockQ8_K, bsums), sizeof(bs));
  int summs = 0;
  for (int j = 0; j < 8; ++j) summs += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
  return summs;
}

// Q4_K and Q5_K: 8 sub-blocks of 32, x = d sc q - dmin m. `decode(b, p, lo, hi)` gives the
// unsigned quants (< 32, so valid int8) of sub-blocks 2p (lo) and 2p + 1 (hi), 16 per vector.
template <class Block, int NR, class Decode>
void dot_k4(int64_t n, const void* w, const void* x, size_t x_stride, float* out, Decode decode) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  const int64_t nb = n / kQK_K;
  float32x4_t acc[NR];
  float accm[NR];
  for (int r = 0; r < NR; ++r) {
    acc[r] = vdupq_n_f32(0.0f);
    accm[r] = 0.0f;
  }
  for (int64_t b = 0; b < nb; ++b, wb += sizeof(Block)) {
    int sc[8], mn[8];
    unpack_scales_mins_k4(wb + offsetof(Block, scales), sc, mn);
    int32x4_t sumi[NR];
    for (int r = 0; r < NR; ++r) sumi[r] = vdupq_n_s32(0);
    for (int p = 0; p < 4; ++p) {
      int8x16_t lo[2], hi[2];
      decode(wb, p, lo, hi);
      for (int r = 0; r < NR; ++r) {
        const uint8_t* yq = xb + r * x_stride + static_cast<size_t>(b) * sizeof(BlockQ8_K) + offsetof(BlockQ8_K, qs) + 64 * p;
        sumi[r] = vmlaq_n_s32(sumi[r], dot_32(lo[0], lo[1], yq), sc[2 * p]);
        sumi[r] = vmlaq_n_s32(sumi[r], dot_32(hi[0], hi[1], yq + 32), sc[2 * p + 1]);
      }
    }
    const float dw = load_f16(wb + offsetof(Block, d));
    const float dminw = load_f16(wb + offsetof(Block, dmin));
    for (int r = 0; r < NR; ++r) {
      const uint8_t* y = xb + r * x_stride + static_cast<size_t>(b) * sizeof(BlockQ8_K);
      const float dy = load_f32(y + offsetof(BlockQ8_K, d));
      acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(sumi[r]), dy * dw);
      accm[r] += dy * dminw * static_cast<float>(mins_term(y, mn));
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = vaddvq_f32(acc[r]) - accm[r];
}

template <int NR>
void dot_q4_K(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_k4<BlockQ4_K, NR>(n, w, x, x_stride, out, [](const uint8_t* b, int p, int8x16_t lo[2], int8x16_t hi[2]) {
    const uint8_t* q = b + offsetof(BlockQ4_K, qs) + 32 * p;
    for (int i = 0; i < 2; ++i) {
      const uint8x16_t v = vld1q_u8(q + 16 * i);
      lo[i] = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
      hi[i] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
    }
  });
}

template <int NR>
void dot_q5_K(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_k4<BlockQ5_K, NR>(n, w, x, x_stride, out, [](const uint8_t* b, int p, int8x16_t lo[2], int8x16_t hi[2]) {
    const uint8_t* q = b + offsetof(BlockQ5_K, qs) + 32 * p;
    // Fifth bits: bit 2p of qh[l] for sub-block 2p, bit 2p + 1 for 2p + 1 (a negative count
    // shifts right).
    const int8x16_t shift = vdupq_n_s8(static_cast<int8_t>(-2 * p));
    for (int i = 0; i < 2; ++i) {
      const uint8x16_t v = vld1q_u8(q + 16 * i);
      const uint8x16_t h = vshlq_u8(vld1q_u8(b + offsetof(BlockQ5_K, qh) + 16 * i), shift);
      lo[i] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), vshlq_n_u8(vandq_u8(h, vdupq_n_u8(1)), 4)));
      hi[i] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(v, 4), vshlq_n_u8(vandq_u8(h, vdupq_n_u8(2)), 3)));
    }
  });
}

// Q6_K: 16 sub-blocks of 16, x = d sc (q - 32), q in 0..63: q - 32 is a valid int8, and each
// 16-byte vector below is exactly one sub-block, whose activations are the next 16 of Q8_K.
template <int NR>
void dot_q6_K(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  const int64_t nb = n / kQK_K;
  float32x4_t acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = vdupq_n_f32(0.0f);
  const uint8x16_t low4 = vdupq_n_u8(0x0F), two = vdupq_n_u8(0x30);
  const int8x16_t offset = vdupq_n_s8(32);
  for (int64_t b = 0; b < nb; ++b, wb += sizeof(BlockQ6_K)) {
    int8_t sc[kQK_K / 16];
    std::memcpy(sc, wb + offsetof(BlockQ6_K, scales), sizeof(sc));
    int32x4_t sumi[NR];
    for (int r = 0; r < NR; ++r) sumi[r] = vdupq_n_s32(0);
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = wb + offsetof(BlockQ6_K, ql) + 64 * half;
      const uint8_t* qh = wb + offsetof(BlockQ6_K, qh) + 32 * half;
      int8x16_t q[8];  // sub-blocks 8 half + i
      for (int i = 0; i < 2; ++i) {
        const uint8x16_t l0 = vld1q_u8(ql + 16 * i), l1 = vld1q_u8(ql + 32 + 16 * i);
        const uint8x16_t h = vld1q_u8(qh + 16 * i);
        // Bits 2g, 2g + 1 of qh are the top two bits of group g (g = 0..3), moved to bits 4, 5.
        const uint8x16_t v0 = vorrq_u8(vandq_u8(l0, low4), vandq_u8(vshlq_n_u8(h, 4), two));
        const uint8x16_t v1 = vorrq_u8(vandq_u8(l1, low4), vandq_u8(vshlq_n_u8(h, 2), two));
        const uint8x16_t v2 = vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(h, two));
        const uint8x16_t v3 = vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(vshrq_n_u8(h, 2), two));
        q[0 + i] = vsubq_s8(vreinterpretq_s8_u8(v0), offset);
        q[2 + i] = vsubq_s8(vreinterpretq_s8_u8(v1), offset);
        q[4 + i] = vsubq_s8(vreinterpretq_s8_u8(v2), offset);
        q[6 + i] = vsubq_s8(vreinterpretq_s8_u8(v3), offset);
      }
      for (int r = 0; r < NR; ++r) {
        const uint8_t* yq = xb + r * x_stride + static_cast<size_t>(b) * sizeof(BlockQ8_K) + offsetof(BlockQ8_K, qs) + 128 * half;
        for (int i = 0; i < 8; ++i) {
          sumi[r] = vmlaq_n_s32(sumi[r], dot_s8(vdupq_n_s32(0), q[i], load_s8(yq + 16 * i)), sc[8 * half + i]);
        }
      }
    }
    const float dw = load_f16(wb + offsetof(BlockQ6_K, d));
    for (int r = 0; r < NR; ++r) {
      const uint8_t* y = xb + r * x_stride + static_cast<size_t>(b) * sizeof(BlockQ8_K);
      acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(sumi[r]), dw * load_f32(y + offsetof(BlockQ8_K, d)));
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = vaddvq_f32(acc[r]);
}

// Q2_K: 16 sub-blocks of 16, x = d (sc & 15) q - dmin (sc >> 4), q in 0..3. The 32 bytes of a
// half hold four 2-bit planes; plane s of bytes 0..15 is sub-block 8 half + 2 s, of bytes
// 16..31 sub-block 8 half + 2 s + 1, against the next 16 activations each.
template <int NR>
void dot_q2_K(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  const int64_t nb = n / kQK_K;
  float32x4_t acc[NR];
  float accm[NR];
  for (int r = 0; r < NR; ++r) {
    acc[r] = vdupq_n_f32(0.0f);
    accm[r] = 0.0f;
  }
  const uint8x16_t three = vdupq_n_u8(3);
  for (int64_t b = 0; b < nb; ++b, wb += sizeof(BlockQ2_K)) {
    uint8_t sc[16];
    std::memcpy(sc, wb + offsetof(BlockQ2_K, scales), sizeof(sc));
    // The minimums (high nibbles) as int16, for the sums of 16 of each row's activations.
    const uint8x16_t scv = vld1q_u8(sc);
    const int16x8_t mn0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(vshrq_n_u8(scv, 4))));
    const int16x8_t mn1 = vreinterpretq_s16_u16(vmovl_high_u8(vshrq_n_u8(scv, 4)));
    int32x4_t sumi[NR];
    for (int r = 0; r < NR; ++r) sumi[r] = vdupq_n_s32(0);
    for (int half = 0; half < 2; ++half) {
      const uint8x16_t v0 = vld1q_u8(wb + offsetof(BlockQ2_K, qs) + 32 * half);
      const uint8x16_t v1 = vld1q_u8(wb + offsetof(BlockQ2_K, qs) + 32 * half + 16);
      for (int s = 0; s < 4; ++s) {
        const int8x16_t shift = vdupq_n_s8(static_cast<int8_t>(-2 * s));
        const int8x16_t q0 = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(v0, shift), three));
        const int8x16_t q1 = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(v1, shift), three));
        const int is = 8 * half + 2 * s;
        for (int r = 0; r < NR; ++r) {
          const uint8_t* yq = xb + r * x_stride + static_cast<size_t>(b) * sizeof(BlockQ8_K) + offsetof(BlockQ8_K, qs) +
                              128 * half + 32 * s;
          sumi[r] = vmlaq_n_s32(sumi[r], dot_s8(vdupq_n_s32(0), q0, load_s8(yq)), sc[is] & 0xF);
          sumi[r] = vmlaq_n_s32(sumi[r], dot_s8(vdupq_n_s32(0), q1, load_s8(yq + 16)), sc[is + 1] & 0xF);
        }
      }
    }
    const float dw = load_f16(wb + offsetof(BlockQ2_K, d));
    const float dminw = load_f16(wb + offsetof(BlockQ2_K, dmin));
    for (int r = 0; r < NR; ++r) {
      const uint8_t* y = xb + r * x_stride + static_cast<size_t>(b) * sizeof(BlockQ8_K);
      const int16x8_t bs0 = vreinterpretq_s16_u8(vld1q_u8(y + offsetof(BlockQ8_K, bsums)));
      const int16x8_t bs1 = vreinterpretq_s16_u8(vld1q_u8(y + offsetof(BlockQ8_K, bsums) + 16));
      int32x4_t m = vmull_s16(vget_low_s16(mn0), vget_low_s16(bs0));
      m = vmlal_high_s16(m, mn0, bs0);
      m = vmlal_s16(m, vget_low_s16(mn1), vget_low_s16(bs1));
      m = vmlal_high_s16(m, mn1, bs1);
      const float dy = load_f32(y + offsetof(BlockQ8_K, d));
      acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(sumi[r]), dy * dw);
      accm[r] += dy * dminw * static_cast<float>(vaddvq_s32(m));
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = vaddvq_f32(acc[r]) - accm[r];
}

// Q3_K: 16 sub-blocks of 16, x = d (scale - 32) (q - 4 h'), q in 0..3 from two bits of qs and
// h' = 1 where the sub-block's bit of hmask is clear: a value in [-4, 3]. Same planes as Q2_K;
// the high bit of plane s of half `half` is bit 4 half + s of hmask's 32 bytes.
template <int NR>
void dot_q3_K(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  const int64_t nb = n / kQK_K;
  float32x4_t acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = vdupq_n_f32(0.0f);
  const uint8x16_t three = vdupq_n_u8(3), four = vdupq_n_u8(4);
  for (int64_t b = 0; b < nb; ++b, wb += sizeof(BlockQ3_K)) {
    int sc[16];
    unpack_scales_q3_K(wb + offsetof(BlockQ3_K, scales), sc);
    const uint8x16_t hm0 = vld1q_u8(wb + offsetof(BlockQ3_K, hmask));
    const uint8x16_t hm1 = vld1q_u8(wb + offsetof(BlockQ3_K, hmask) + 16);
    int32x4_t sumi[NR];
    for (int r = 0; r < NR; ++r) sumi[r] = vdupq_n_s32(0);
    for (int half = 0; half < 2; ++half) {
      const uint8x16_t v0 = vld1q_u8(wb + offsetof(BlockQ3_K, qs) + 32 * half);
      const uint8x16_t v1 = vld1q_u8(wb + offsetof(BlockQ3_K, qs) + 32 * half + 16);
      for (int s = 0; s < 4; ++s) {
        const int8x16_t shift = vdupq_n_s8(static_cast<int8_t>(-2 * s));
        const uint8x16_t bit = vdupq_n_u8(static_cast<uint8_t>(1u << (4 * half + s)));
        // q - 4 where the high bit is clear
        const int8x16_t q0 = vreinterpretq_s8_u8(
            vsubq_u8(vandq_u8(vshlq_u8(v0, shift), three), vbicq_u8(four, vtstq_u8(hm0, bit))));
        const int8x16_t q1 = vreinterpretq_s8_u8(
            vsubq_u8(vandq_u8(vshlq_u8(v1, shift), three), vbicq_u8(four, vtstq_u8(hm1, bit))));
        const int is = 8 * half + 2 * s;
        for (int r = 0; r < NR; ++r) {
          const uint8_t* yq = xb + r * x_stride + static_cast<size_t>(b) * sizeof(BlockQ8_K) + offsetof(BlockQ8_K, qs) +
                              128 * half + 32 * s;
          sumi[r] = vmlaq_n_s32(sumi[r], dot_s8(vdupq_n_s32(0), q0, load_s8(yq)), sc[is]);
          sumi[r] = vmlaq_n_s32(sumi[r], dot_s8(vdupq_n_s32(0), q1, load_s8(yq + 16)), sc[is + 1]);
        }
      }
    }
    const float dw = load_f16(wb + offsetof(BlockQ3_K, d));
    for (int r = 0; r < NR; ++r) {
      const uint8_t* y = xb + r * x_stride + static_cast<size_t>(b) * sizeof(BlockQ8_K);
      acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(sumi[r]), dw * load_f32(y + offsetof(BlockQ8_K, d)));
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = vaddvq_f32(acc[r]);
}

// --- plain types ---------------------------------------------------------------------------
// Accumulated in double like the reference (which follows ggml's wide accumulation), so these
// agree with it to the last bits: f16 x f16 products are exact in float, bf16 and f32 values
// are widened to double before multiplying (their products can overflow float).

inline float64x2_t widen_lo(float32x4_t v) { return vcvt_f64_f32(vget_low_f32(v)); }
inline float64x2_t widen_hi(float32x4_t v) { return vcvt_high_f64_f32(v); }

// sum_i w[i] x[i] over n values of `bytes` bytes each, `load4` widening four of them to f32.
template <int kBytes, class Load4, class Load1>
float dot_plain(int64_t n, const void* w, const void* x, Load4 load4, Load1 load1) {
  const auto* a = static_cast<const uint8_t*>(w);
  const auto* b = static_cast<const uint8_t*>(x);
  float64x2_t acc0 = vdupq_n_f64(0.0), acc1 = vdupq_n_f64(0.0);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t wa = load4(a + kBytes * i), xb = load4(b + kBytes * i);
    acc0 = vfmaq_f64(acc0, widen_lo(wa), widen_lo(xb));
    acc1 = vfmaq_f64(acc1, widen_hi(wa), widen_hi(xb));
  }
  double sum = vaddvq_f64(vaddq_f64(acc0, acc1));
  for (; i < n; ++i) sum += static_cast<double>(load1(a + kBytes * i)) * static_cast<double>(load1(b + kBytes * i));
  return static_cast<float>(sum);
}

// --- activation quantizers -----------------------------------------------------------------
// Same arithmetic as the scalar references, element for element: a float product rounded once
// (no FMA), rounding half to even (vcvtnq), the f16 scale rounded to nearest even.

// max |x[i]| over `count` floats (a multiple of 4).
inline float abs_max(const float* x, int count) {
  float32x4_t m = vdupq_n_f32(0.0f);
  for (int i = 0; i < count; i += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + i)));
  return vmaxvq_f32(m);
}

// round_half_even(x[i] * scale) for 16 floats, stored as int8 (the values are within int8);
// returns the four int32 lanes for sums.
inline int32x4_t scale_round_16(const float* x, float scale, int32_t limit, int8_t* out) {
  int32x4_t q[4];
  for (int k = 0; k < 4; ++k) q[k] = vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + 4 * k), scale)), vdupq_n_s32(limit));
  const int16x8_t h0 = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
  const int16x8_t h1 = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
  vst1q_s8(out, vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1)));
  return vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3]));
}

// Q8_0 / Q8_1 body: returns the block's sum of quants (for Q8_1's s).
inline int quantize_block_32(const float* x, uint8_t* qs, float* d_out) {
  const float amax = abs_max(x, kQK8_0);
  *d_out = amax / 127.0f;
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  // |x id| <= 127 (rounded), so the limit never applies here.
  int8_t q[kQK8_0];
  const int32x4_t s = vaddq_s32(scale_round_16(x, id, 127, q), scale_round_16(x + 16, id, 127, q + 16));
  std::memcpy(qs, q, sizeof(q));
  return vaddvq_s32(s);
}

}  // namespace

// --- entry points ----------------------------------------------------------------------------

#define HEARTH_ARM_DEFINE_DOT(t)                                                                   \
  float vec_dot_##t(int64_t n, const void* w, const void* x) {                                      \
    float out;                                                                                     \
    dot_##t<1>(n, w, x, 0, &out);                                                                   \
    return out;                                                                                    \
  }                                                                                                \
  void vec_dot_##t##_4(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {      \
    dot_##t<4>(n, w, x, x_stride, out);                                                             \
  }
HEARTH_ARM_BLOCK_DOTS(HEARTH_ARM_DEFINE_DOT)
#undef HEARTH_ARM_DEFINE_DOT

float vec_dot_f16(int64_t n, const void* w, const void* x) {
  return dot_plain<2>(n, w, x, f16x4, load_f16);
}

float vec_dot_bf16(int64_t n, const void* w, const void* x) {
  return dot_plain<2>(n, w, x, bf16x4, [](const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, sizeof(h));
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  });
}

float vec_dot_f32(int64_t n, const void* w, const void* x) {
  return dot_plain<4>(n, w, x, f32x4, load_f32);
}

void quantize_q8_0(const float* x, void* y, int64_t n) {
  auto* out = static_cast<uint8_t*>(y);
  for (int64_t b = 0; b < n / kQK8_0; ++b, x += kQK8_0, out += sizeof(BlockQ8_0)) {
    float d;
    quantize_block_32(x, out + offsetof(BlockQ8_0, qs), &d);
    store_f16(out + offsetof(BlockQ8_0, d), d);
  }
}

void quantize_q8_1(const float* x, void* y, int64_t n) {
  auto* out = static_cast<uint8_t*>(y);
  for (int64_t b = 0; b < n / kQK8_0; ++b, x += kQK8_0, out += sizeof(BlockQ8_1)) {
    float d;
    const int sum = quantize_block_32(x, out + offsetof(BlockQ8_1, qs), &d);
    store_f16(out + offsetof(BlockQ8_1, d), d);
    store_f16(out + offsetof(BlockQ8_1, s), static_cast<float>(sum) * d);
  }
}

void quantize_q8_K(const float* x, void* y, int64_t n) {
  auto* out = static_cast<uint8_t*>(y);
  for (int64_t b = 0; b < n / kQK_K; ++b, x += kQK_K, out += sizeof(BlockQ8_K)) {
    const float amax = abs_max(x, kQK_K);
    if (amax == 0.0f) {
      std::memset(out, 0, sizeof(BlockQ8_K));
      continue;
    }
    // The signed value of the first element of largest magnitude (as the reference's scan).
    float max = 0.0f;
    for (int j = 0; j < kQK_K; ++j) {
      if (std::fabs(x[j]) == amax) {
        max = x[j];
        break;
      }
    }
    const float iscale = -127.0f / max;
    int8_t q[kQK_K];
    int16_t bsums[kQK_K / 16];
    for (int i = 0; i < kQK_K; i += 16) {
      // The largest element maps to -127, others may round up to 128: clamp at 127.
      bsums[i / 16] = static_cast<int16_t>(vaddvq_s32(scale_round_16(x + i, iscale, 127, q + i)));
    }
    std::memcpy(out + offsetof(BlockQ8_K, qs), q, sizeof(q));
    std::memcpy(out + offsetof(BlockQ8_K, bsums), bsums, sizeof(bsums));
    const float d = 1.0f / iscale;
    std::memcpy(out + offsetof(BlockQ8_K, d), &d, sizeof(d));
  }
}

}  // namespace hearth::kernels::arm::HEARTH_ARM_NS
