// The packed-weight matmul on aarch64 (layout: kernels/cpu/packed.h, shared with x86), written
// once and compiled per level by the file that includes it, which defines
//   HEARTH_ARM_NS       the namespace under hearth::kernels::arm (neon, dotprod, i8mm)
//   HEARTH_ARM_DOTPROD  1: sdot by element (vdotq_laneq_s32); 0: the same sums from vmull_s8
//   HEARTH_ARM_I8MM     1: the 32-element types' tiles of two tokens run on smmla (vmmlaq_s32)
// Include it nowhere else.
//
// The layout's k-step (64 bytes: four bytes of each of 16 rows) is four 16-byte vectors, one
// per quarter of the group (rows 4 q .. 4 q + 3). `sdot v, w, a.4b[l]` multiplies the four
// bytes of each row with the token's four activation bytes of lane l, so one instruction adds
// one k-step to the four rows' int32 sums, each in its own lane: no horizontal reduction, and
// one decoded weight vector serves every token of a tile. With smmla, two k-steps of two rows
// (a zip of two k-steps' vectors) meet two tokens' eight activation bytes: a 2 x 2 block of
// int32 sums per instruction.
//
// The integer sums are exact (int8 activations in [-127, 127], the quantizers' range; Q8_0's
// stored q + 128 is turned back into q, whose sum with the activations is exactly the model's
// sum of q + 128 plus its correction), and each lane's float arithmetic is packed_gemm_ref's:
// acc = fma(float(isum), dw * dx, acc) (then fma(mw, sx, acc) for types with a min), so every
// result is the scalar model's bits, whatever the tile or the level.
#include <arm_neon.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/dtype.h"
#include "kernels/cpu/arm/packed_arm.h"
#include "kernels/cpu/packed.h"

#if !defined(HEARTH_ARM_NS) || !defined(HEARTH_ARM_DOTPROD) || !defined(HEARTH_ARM_I8MM)
#error "define HEARTH_ARM_NS, HEARTH_ARM_DOTPROD and HEARTH_ARM_I8MM before including packed_arm_impl.h"
#endif

namespace hearth::kernels::arm::HEARTH_ARM_NS {
namespace {

constexpr int kTile = 4;  // tokens per register tile

inline float load_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline int32_t load_i32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline int8x16_t load_s8(const uint8_t* p) { return vreinterpretq_s8_u8(vld1q_u8(p)); }
// Four f16 at any address -> four floats (exact).
inline float32x4_t f16x4(const uint8_t* p) { return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p))); }
// Four bytes -> four int32 lanes.
inline int32x4_t u8x4_to_s32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(vcreate_u8(v)))));
}
inline int32x4_t s8x4_to_s32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_u32(vcreate_u32(v)))));
}

// The token's four activation bytes of lane L, in every lane (the neon path's operand).
template <int L>
[[gnu::always_inline]] inline int8x16_t lane_bytes(int8x16_t a) {
  return vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(a), L));
}

// isum + N k-steps w[0..N-1] of a quarter against the token's activation bytes: k-step j in
// lane j % 4 of a0 (j < 4) or a1 (j >= 4). The weights are below 2^kBits in magnitude (unsigned
// quants) or int8 (kBits = 8). Without sdot, the products of up to G k-steps pile up in int16
// lanes (vmlal_s8; each lane a (row, byte) pair) before one pairwise add joins a row's lanes
// two by two and a widening pairwise add the rest into int32, G as large as keeps every int16
// sum exact: |sum| <= 2 G (2^kBits - 1) 127 < 2^15 (4-bit: G = 8; 5-bit: 4; 6-bit: 2; int8:
// one k-step per pairwise add, |2 x 128 x 127| < 2^15).
template <int N, int kBits>
[[gnu::always_inline]] inline int32x4_t dot_steps(int32x4_t isum, const int8x16_t* w, int8x16_t a0, int8x16_t a1) {
#if HEARTH_ARM_DOTPROD
  [&]<int... J>(std::integer_sequence<int, J...>) {
    ((isum = vdotq_laneq_s32(isum, w[J], J < 4 ? a0 : a1, J % 4)), ...);
  }(std::make_integer_sequence<int, N>{});
  return isum;
#else
  constexpr int kMax = kBits >= 8 ? 128 : (1 << kBits) - 1;
  constexpr int G = kBits >= 8 ? 1 : 32767 / (2 * kMax * 127);
  static_assert(G >= 1 && 2 * G * kMax * 127 < 32768);
  int8x16_t b[N];
  [&]<int... J>(std::integer_sequence<int, J...>) {
    ((b[J] = lane_bytes<J % 4>(J < 4 ? a0 : a1)), ...);
  }(std::make_integer_sequence<int, N>{});
  for (int g = 0; g < N; g += G) {
    // rows 4 q, 4 q + 1 from the low halves, 4 q + 2, 4 q + 3 from the high ones
    int16x8_t lo = vmull_s8(vget_low_s8(w[g]), vget_low_s8(b[g]));
    int16x8_t hi = vmull_high_s8(w[g], b[g]);
    for (int j = g + 1; j < g + G && j < N; ++j) {
      lo = vmlal_s8(lo, vget_low_s8(w[j]), vget_low_s8(b[j]));
      hi = vmlal_high_s8(hi, w[j], b[j]);
    }
    isum = vpadalq_s16(isum, vpaddq_s16(lo, hi));
  }
  return isum;
#endif
}

// isum + the eight k-steps w[0..7] of a quarter against the token's 32 activation bytes a0
// (k-steps 0..3) and a1 (4..7).
template <int kBits>
[[gnu::always_inline]] inline int32x4_t dot_8_steps(int32x4_t isum, const int8x16_t w[8], int8x16_t a0, int8x16_t a1) {
  return dot_steps<8, kBits>(isum, w, a0, a1);
}

// Bits 16 q .. 16 q + 15 of a k-step's 64-bit fifth-bit word (bit 4 r + c: row r, byte c) ->
// 0x10 in the quarter's bytes whose bit is set: bytes 2 q and 2 q + 1 of the word spread over
// eight lanes each by one table lookup, then tested against one bit per lane.
inline uint8x16_t fifth_bits_quarter(const uint8_t* word, int q) {
  uint64_t bits;
  std::memcpy(&bits, word, sizeof(bits));
  const uint8x16_t spread = vqtbl1q_u8(vreinterpretq_u8_u64(vdupq_n_u64(bits)),
                                       vcombine_u8(vdup_n_u8(static_cast<uint8_t>(2 * q)), vdup_n_u8(static_cast<uint8_t>(2 * q + 1))));
  const uint8x16_t bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040201008040201ULL));
  return vandq_u8(vtstq_u8(spread, bit), vdupq_n_u8(0x10));
}

// Stores the first `rows` (at most 4; none when <= 0) lanes.
inline void store_rows(float* y, float32x4_t v, int64_t rows) {
  if (rows >= 4) {
    vst1q_f32(y, v);
    return;
  }
  float tmp[4];
  vst1q_f32(tmp, v);
  for (int64_t i = 0; i < rows; ++i) y[i] = tmp[i];
}

// The eight k-steps of quarter q of block `ub` of a 32-element type, as int8 (Q8_0: q; the
// others: the stored unsigned quants, fifth bit included).
template <DType Type>
[[gnu::always_inline]] inline void decode_32(const uint8_t* grp, const PackedRegions& reg, size_t ub, int q, int8x16_t w[8]) {
  constexpr PackedFormat f = packed_format(Type);
  const uint8_t* qs = grp + reg.at(reg.qs, reg.qs_block, ub) + 16 * q;
  if constexpr (f.q8) {
#pragma GCC unroll 16
    for (int j = 0; j < 8; ++j) w[j] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(qs + 64 * j), vdupq_n_u8(0x80)));
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < 4; ++i) {
      const uint8x16_t v = vld1q_u8(qs + 64 * i);
      uint8x16_t lo = vandq_u8(v, vdupq_n_u8(0x0F)), hi = vshrq_n_u8(v, 4);
      if constexpr (f.has_qh) {
        const uint8_t* qh = grp + reg.at(reg.qh, 64, ub);
        lo = vorrq_u8(lo, fifth_bits_quarter(qh + 8 * i, q));
        hi = vorrq_u8(hi, fifth_bits_quarter(qh + 8 * (i + 4), q));
      }
      w[i] = vreinterpretq_s8_u8(lo);
      w[i + 4] = vreinterpretq_s8_u8(hi);
    }
  }
}

// The 32-element types, T tokens, one half-group (quarters 2 h and 2 h + 1) per pass.
template <DType Type, int T>
void tile_32(const uint8_t* grp, const PackedRegions& reg, int64_t nb, int64_t k, const uint8_t* xa, size_t act_stride,
             float* y, int64_t y_stride, int64_t valid) {
  constexpr PackedFormat f = packed_format(Type);
  const size_t corr_at = static_cast<size_t>(k) + 4 * static_cast<size_t>(nb);
  for (int h = 0; h < 2; ++h) {
    float32x4_t acc[T][2];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; ++b) {
      const auto ub = static_cast<size_t>(b);
      if (h == 0) {  // the same block of the next group, one group ahead of its use
        const uint8_t* next = grp + reg.total + reg.at(reg.qs, reg.qs_block, ub);
        for (size_t line = 0; line < reg.qs_block; line += 64) __builtin_prefetch(next + line);
      }
#pragma GCC unroll 16
      for (int qq = 0; qq < 2; ++qq) {
        const int q = 2 * h + qq;
        int8x16_t w[8];
        decode_32<Type>(grp, reg, ub, q, w);
        const float32x4_t dw = f16x4(grp + reg.at(reg.d, 32, ub) + 8 * static_cast<size_t>(q));
        float32x4_t mw = vdupq_n_f32(0.0f);
        if constexpr (f.has_min) mw = f16x4(grp + reg.at(reg.m, 32, ub) + 8 * static_cast<size_t>(q));
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) {
          const uint8_t* a = xa + static_cast<size_t>(t) * act_stride;
          const uint8_t* aq = a + 32 * ub;
          // Q8_0 sums q a directly; the other offset types start at the token's correction.
          int32x4_t isum = vdupq_n_s32(f.q8 || f.has_min ? 0 : load_i32(a + corr_at + 4 * ub));
          isum = dot_8_steps<f.q8 ? 8 : f.has_qh ? 5 : 4>(isum, w, load_s8(aq), load_s8(aq + 16));
          acc[t][qq] = vfmaq_f32(acc[t][qq], vcvtq_f32_s32(isum), vmulq_n_f32(dw, load_f32(a + k + 4 * ub)));
          if constexpr (f.has_min) acc[t][qq] = vfmaq_n_f32(acc[t][qq], mw, load_f32(a + corr_at + 4 * ub));
        }
      }
    }
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
#pragma GCC unroll 16
      for (int qq = 0; qq < 2; ++qq) {
        const int row = 8 * h + 4 * qq;
        store_rows(y + t * y_stride + row, acc[t][qq], valid - row);
      }
    }
  }
}

#if HEARTH_ARM_I8MM
// Tokens t, t + 1 of a tile for smmla: per block, four 16-byte vectors, vector p holding the
// eight activation bytes of k-steps 2 p, 2 p + 1 of token t, then of token t + 1 (smmla's
// 8 x 2 operand). Built once per call, so the kernel loads each with one instruction.
void interleave_pair(const uint8_t* a0, const uint8_t* a1, int64_t nb, uint8_t* out) {
  for (int64_t i = 0; i < 4 * nb; ++i) {
    std::memcpy(out + 16 * i, a0 + 8 * i, 8);
    std::memcpy(out + 16 * i + 8, a1 + 8 * i, 8);
  }
}

// The 32-element types, P pairs of tokens on smmla, Q quarters of the group per pass. Per quarter, the
// zip of k-steps 2 p and 2 p + 1 gives rows (4 q, 4 q + 1) (zip1) and (4 q + 2, 4 q + 3) (zip2),
// eight bytes each: smmla's 2 x 8 operand, decoded once for all pairs. Lanes of a result:
// (row 0, token 0), (row 0, token 1), (row 1, token 0), (row 1, token 1). `pairs` holds the
// tile's pairs as interleave_pair writes them, nb * 64 bytes apart; `xa` the tile's tokens.
template <DType Type, int P, int Q>
void tile_32_mmla(const uint8_t* grp, const PackedRegions& reg, int64_t nb, int64_t k, const uint8_t* xa,
                  size_t act_stride, const uint8_t* pairs, float* y, int64_t y_stride, int64_t valid) {
  constexpr PackedFormat f = packed_format(Type);
  const size_t corr_at = static_cast<size_t>(k) + 4 * static_cast<size_t>(nb);
  const size_t pair_stride = 64 * static_cast<size_t>(nb);
  for (int h = 0; h < 4 / Q; ++h) {
    float32x4_t acc[P][2 * Q];  // per pair: row pairs (4 q, 4 q + 1), (4 q + 2, 4 q + 3) of the pass's quarters
#pragma GCC unroll 16
    for (int i = 0; i < P; ++i) {
#pragma GCC unroll 16
      for (auto& v : acc[i]) v = vdupq_n_f32(0.0f);
    }
    for (int64_t b = 0; b < nb; ++b) {
      const auto ub = static_cast<size_t>(b);
      if (h == 0) {
        const uint8_t* next = grp + reg.total + reg.at(reg.qs, reg.qs_block, ub);
        for (size_t line = 0; line < reg.qs_block; line += 64) __builtin_prefetch(next + line);
      }
      // Per pair: scales and corrections as (token 0, token 1, token 0, token 1).
      float32x4_t dx[P], sx[P];
      int32x4_t start[P];
      int8x16_t x[P][4];  // the pairs' activations of the block, for both quarters
#pragma GCC unroll 16
      for (int i = 0; i < P; ++i) {
#pragma GCC unroll 16
        for (int p = 0; p < 4; ++p) x[i][p] = load_s8(pairs + static_cast<size_t>(i) * pair_stride + 64 * ub + 16 * p);
        const uint8_t* a0 = xa + static_cast<size_t>(2 * i) * act_stride;
        const uint8_t* a1 = a0 + act_stride;
        const float d0 = load_f32(a0 + k + 4 * ub), d1 = load_f32(a1 + k + 4 * ub);
        dx[i] = float32x4_t{d0, d1, d0, d1};
        start[i] = vdupq_n_s32(0);
        sx[i] = vdupq_n_f32(0.0f);
        if constexpr (f.has_min) {
          const float s0 = load_f32(a0 + corr_at + 4 * ub), s1 = load_f32(a1 + corr_at + 4 * ub);
          sx[i] = float32x4_t{s0, s1, s0, s1};
        } else if constexpr (!f.q8) {
          const int32_t c0 = load_i32(a0 + corr_at + 4 * ub), c1 = load_i32(a1 + corr_at + 4 * ub);
          start[i] = int32x4_t{c0, c1, c0, c1};
        }
      }
#pragma GCC unroll 16
      for (int qq = 0; qq < Q; ++qq) {
        const int q = Q * h + qq;
        int8x16_t w[8];
        decode_32<Type>(grp, reg, ub, q, w);
        int8x16_t rows01[4], rows23[4];
#pragma GCC unroll 16
        for (int p = 0; p < 4; ++p) {
          const int32x4_t e = vreinterpretq_s32_s8(w[2 * p]), o = vreinterpretq_s32_s8(w[2 * p + 1]);
          rows01[p] = vreinterpretq_s8_s32(vzip1q_s32(e, o));
          rows23[p] = vreinterpretq_s8_s32(vzip2q_s32(e, o));
        }
        const float32x4_t dw = f16x4(grp + reg.at(reg.d, 32, ub) + 8 * static_cast<size_t>(q));
        const float32x4_t dw01 = vzip1q_f32(dw, dw), dw23 = vzip2q_f32(dw, dw);
        float32x4_t mw01 = vdupq_n_f32(0.0f), mw23 = vdupq_n_f32(0.0f);
        if constexpr (f.has_min) {
          const float32x4_t mw = f16x4(grp + reg.at(reg.m, 32, ub) + 8 * static_cast<size_t>(q));
          mw01 = vzip1q_f32(mw, mw);
          mw23 = vzip2q_f32(mw, mw);
        }
#pragma GCC unroll 16
        for (int i = 0; i < P; ++i) {
          int32x4_t s01 = start[i], s23 = start[i];
#pragma GCC unroll 16
          for (int p = 0; p < 4; ++p) {
            s01 = vmmlaq_s32(s01, rows01[p], x[i][p]);
            s23 = vmmlaq_s32(s23, rows23[p], x[i][p]);
          }
          acc[i][2 * qq] = vfmaq_f32(acc[i][2 * qq], vcvtq_f32_s32(s01), vmulq_f32(dw01, dx[i]));
          acc[i][2 * qq + 1] = vfmaq_f32(acc[i][2 * qq + 1], vcvtq_f32_s32(s23), vmulq_f32(dw23, dx[i]));
          if constexpr (f.has_min) {
            acc[i][2 * qq] = vfmaq_f32(acc[i][2 * qq], mw01, sx[i]);
            acc[i][2 * qq + 1] = vfmaq_f32(acc[i][2 * qq + 1], mw23, sx[i]);
          }
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < P; ++i) {
#pragma GCC unroll 16
      for (int qq = 0; qq < Q; ++qq) {
        const int row = 4 * (Q * h + qq);
        float* yt = y + 2 * i * y_stride + row;
        store_rows(yt, vuzp1q_f32(acc[i][2 * qq], acc[i][2 * qq + 1]), valid - row);
        store_rows(yt + y_stride, vuzp2q_f32(acc[i][2 * qq], acc[i][2 * qq + 1]), valid - row);
      }
    }
  }
}
#endif

// Q4_K and Q5_K: per sub-block j of 32, eight k-steps; the int32 sums meet the sub-block's
// 6-bit scales in a multiply-add, the mins the token's sums of 32, all exact. Q5_K's fifth bits
// come from its qh region, laid out as the quants' k-steps (bit j: sub-block j). One quarter at
// a time.
template <DType Type, int T>
void tile_k4(const uint8_t* grp, const PackedRegions& reg, int64_t nb, int64_t k, const uint8_t* xa, size_t act_stride,
             float* y, int64_t y_stride, int64_t valid) {
  const size_t sums_at = static_cast<size_t>(k) + 4 * static_cast<size_t>(nb);
  for (int q = 0; q < 4; ++q) {
    float32x4_t acc[T];
#pragma GCC unroll 16
    for (auto& v : acc) v = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; ++b) {
      const auto ub = static_cast<size_t>(b);
      if (q == 0) {
        const uint8_t* next = grp + reg.total + reg.at(reg.qs, reg.qs_block, ub);
        for (size_t line = 0; line < reg.qs_block; line += 64) __builtin_prefetch(next + line);
      }
      int32x4_t total[T], msum[T];
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) total[t] = msum[t] = vdupq_n_s32(0);
#pragma GCC unroll 16
      for (int p = 0; p < 4; ++p) {  // sub-blocks 2 p (low nibbles) and 2 p + 1 (high)
        int8x16_t lo[8], hi[8];
        const uint8_t* qs = grp + reg.at(reg.qs, reg.qs_block, ub) + 512 * static_cast<size_t>(p) + 16 * static_cast<size_t>(q);
#pragma GCC unroll 16
        for (int i = 0; i < 8; ++i) {
          const uint8x16_t v = vld1q_u8(qs + 64 * i);
          uint8x16_t l = vandq_u8(v, vdupq_n_u8(0x0F)), h = vshrq_n_u8(v, 4);
          if constexpr (packed_format(Type).has_qh) {
            // bit 2 p (the low nibbles' sub-block) and bit 2 p + 1 (the high ones') to bit 4
            const uint8x16_t bits = vld1q_u8(grp + reg.at(reg.qh, 512, ub) + 64 * static_cast<size_t>(i) + 16 * static_cast<size_t>(q));
            const uint8x16_t fifth = vdupq_n_u8(0x10);
            l = vorrq_u8(l, vandq_u8(vshlq_u8(bits, vdupq_n_s8(static_cast<int8_t>(4 - 2 * p))), fifth));
            h = vorrq_u8(h, vandq_u8(vshlq_u8(bits, vdupq_n_s8(static_cast<int8_t>(3 - 2 * p))), fifth));
          }
          lo[i] = vreinterpretq_s8_u8(l);
          hi[i] = vreinterpretq_s8_u8(h);
        }
        const uint8_t* sc = grp + reg.at(reg.sc, 128, ub) + 4 * static_cast<size_t>(q);
        const int32x4_t sc_lo = u8x4_to_s32(sc + 16 * (2 * p)), sc_hi = u8x4_to_s32(sc + 16 * (2 * p + 1));
        // Mins of sub-blocks 2 p, 2 p + 1 for the quarter's rows: (row, even), (row, odd) pairs.
        const int16x8_t mn = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(grp + reg.at(reg.mn, 128, ub) + 32 * static_cast<size_t>(p) + 8 * static_cast<size_t>(q))));
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) {
          const uint8_t* a = xa + static_cast<size_t>(t) * act_stride;
          const uint8_t* aq = a + 256 * ub + 64 * static_cast<size_t>(p);
          constexpr int kBits = packed_format(Type).has_qh ? 5 : 4;
          const int32x4_t s_lo = dot_8_steps<kBits>(vdupq_n_s32(0), lo, load_s8(aq), load_s8(aq + 16));
          const int32x4_t s_hi = dot_8_steps<kBits>(vdupq_n_s32(0), hi, load_s8(aq + 32), load_s8(aq + 48));
          total[t] = vmlaq_s32(vmlaq_s32(total[t], s_lo, sc_lo), s_hi, sc_hi);
          uint32_t pair;  // the token's int16 sums of sub-blocks 2 p and 2 p + 1
          std::memcpy(&pair, a + sums_at + 16 * ub + 4 * static_cast<size_t>(p), 4);
          const int16x8_t bs = vreinterpretq_s16_u32(vdupq_n_u32(pair));
          msum[t] = vaddq_s32(msum[t], vpaddq_s32(vmull_s16(vget_low_s16(mn), vget_low_s16(bs)), vmull_high_s16(mn, bs)));
        }
      }
      const float32x4_t dw = f16x4(grp + reg.at(reg.d, 32, ub) + 8 * static_cast<size_t>(q));
      const float32x4_t dmin = f16x4(grp + reg.at(reg.m, 32, ub) + 8 * static_cast<size_t>(q));
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        const float dx = load_f32(xa + static_cast<size_t>(t) * act_stride + k + 4 * ub);
        acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(total[t]), vmulq_n_f32(dw, dx));
        acc[t] = vfmsq_f32(acc[t], vcvtq_f32_s32(msum[t]), vmulq_n_f32(dmin, dx));
      }
    }
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) store_rows(y + t * y_stride + 4 * q, acc[t], valid - 4 * q);
  }
}

// Q6_K: sub-blocks of 16 (four k-steps), each sum starting at the token's -32 x the sum of its
// 16 quants, then times the int8 scale. The ql chunk 16 hh + 8 qq + c (c = 0..7) holds, in its
// low nibbles, the k-step of elements 128 hh + 32 qq + 4 c .. + 3 and, in its high nibbles,
// those 64 further; their top two bits are in the qh chunk 8 hh + c, at bits 2 qq (low) and
// 2 qq + 4 (high). One quarter at a time.
template <int T>
void tile_k6(const uint8_t* grp, const PackedRegions& reg, int64_t nb, int64_t k, const uint8_t* xa, size_t act_stride,
             float* y, int64_t y_stride, int64_t valid) {
  const size_t corr_at = static_cast<size_t>(k) + 4 * static_cast<size_t>(nb);
  const uint8x16_t low4 = vdupq_n_u8(0x0F), two = vdupq_n_u8(0x30);
  for (int q = 0; q < 4; ++q) {
    float32x4_t acc[T];
#pragma GCC unroll 16
    for (auto& v : acc) v = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; ++b) {
      const auto ub = static_cast<size_t>(b);
      const uint8_t* units = grp + reg.at(reg.qs, reg.qs_block, ub);
      const uint8_t* lanes = units + 16 * static_cast<size_t>(q);  // this quarter's four rows of each line
      if (q == 0) {
        for (size_t line = 0; line < reg.qs_block; line += 64) __builtin_prefetch(units + reg.total + line);
      }
      int32x4_t total[T];
#pragma GCC unroll 16
      for (auto& v : total) v = vdupq_n_s32(0);
#pragma GCC unroll 16
      for (int hh = 0; hh < 2; ++hh) {
#pragma GCC unroll 16
        for (int qq = 0; qq < 2; ++qq) {
#pragma GCC unroll 16
          for (int c4 = 0; c4 < 2; ++c4) {  // k-steps c = 4 c4 .. 4 c4 + 3: one sub-block each
            int8x16_t lo[4], hi[4];
#pragma GCC unroll 16
            for (int i = 0; i < 4; ++i) {
              const int c = 4 * c4 + i;
              const uint8x16_t l = vld1q_u8(lanes + q6k_ql(16 * hh + 8 * qq + c));
              const uint8x16_t h = vld1q_u8(lanes + q6k_qh(8 * hh + c));
              // bits 2 qq, 2 qq + 1 (low) and 2 qq + 4, 2 qq + 5 (high) of h to bits 4, 5
              const uint8x16_t h_lo = qq == 0 ? vshlq_n_u8(h, 4) : vshlq_n_u8(h, 2);
              const uint8x16_t h_hi = qq == 0 ? h : vshrq_n_u8(h, 2);
              lo[i] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(l, low4), vandq_u8(h_lo, two)));
              hi[i] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(l, 4), vandq_u8(h_hi, two)));
            }
            const int j_lo = 8 * hh + 2 * qq + c4, j_hi = j_lo + 4;  // sub-blocks of 16
            const int32x4_t sc_lo = s8x4_to_s32(units + q6k_sc(j_lo) + 4 * static_cast<size_t>(q));
            const int32x4_t sc_hi = s8x4_to_s32(units + q6k_sc(j_hi) + 4 * static_cast<size_t>(q));
#pragma GCC unroll 16
            for (int t = 0; t < T; ++t) {
              const uint8_t* a = xa + static_cast<size_t>(t) * act_stride;
              const uint8_t* corr = a + corr_at + 64 * ub;
              const int8x16_t x_lo = load_s8(a + 256 * ub + 16 * static_cast<size_t>(j_lo));
              const int8x16_t x_hi = load_s8(a + 256 * ub + 16 * static_cast<size_t>(j_hi));
              int32x4_t s_lo = vdupq_n_s32(load_i32(corr + 4 * j_lo)), s_hi = vdupq_n_s32(load_i32(corr + 4 * j_hi));
              s_lo = dot_steps<4, 6>(s_lo, lo, x_lo, x_lo);
              s_hi = dot_steps<4, 6>(s_hi, hi, x_hi, x_hi);
              total[t] = vmlaq_s32(vmlaq_s32(total[t], s_lo, sc_lo), s_hi, sc_hi);
            }
          }
        }
      }
      const float32x4_t dw = f16x4(grp + reg.at(reg.d, 32, ub) + 8 * static_cast<size_t>(q));
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        const float dx = load_f32(xa + static_cast<size_t>(t) * act_stride + k + 4 * ub);
        acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(total[t]), vmulq_n_f32(dw, dx));
      }
    }
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) store_rows(y + t * y_stride + 4 * q, acc[t], valid - 4 * q);
  }
}

template <DType Type, int T>
void group_tile(const uint8_t* grp, const PackedRegions& reg, int64_t nb, int64_t k, const uint8_t* xa, size_t act_stride,
                float* y, int64_t y_stride, int64_t valid) {
  constexpr PackedFormat f = packed_format(Type);
  if constexpr (f.k4) {
    tile_k4<Type, T>(grp, reg, nb, k, xa, act_stride, y, y_stride, valid);
  } else if constexpr (f.k6) {
    tile_k6<T>(grp, reg, nb, k, xa, act_stride, y, y_stride, valid);
  } else {
    tile_32<Type, T>(grp, reg, nb, k, xa, act_stride, y, y_stride, valid);
  }
}

#if HEARTH_ARM_I8MM
// The 32-element types on smmla: tokens in pairs, tiles of up to kMmlaPairs pairs sharing each
// decoded block; an odd last token goes through the sdot tile.
constexpr int kMmlaPairs = 2;
constexpr int kMmlaQuarters = 2;  // quarters of a group per pass (1: more activation loads, fewer spills; counted worse)

// False (nothing written) when the pairs' buffer cannot be allocated.
template <DType Type>
bool gemm_mmla(const uint8_t* wb, const PackedRegions& reg, int64_t nb, int64_t k, int64_t m, int64_t g0, int64_t g1,
               const uint8_t* ab, size_t act_stride, int64_t n, float* y, int64_t y_stride) {
  const int64_t n_pairs = n / 2;
  const size_t pair_bytes = 64 * static_cast<size_t>(nb);
  // malloc, not a std::vector: a container's members instantiated here would be weak symbols
  // built with +i8mm (see the file comment of packed_i8mm.cpp).
  auto* pairs = static_cast<uint8_t*>(std::malloc(static_cast<size_t>(n_pairs) * pair_bytes));
  if (pairs == nullptr) return false;
  for (int64_t i = 0; i < n_pairs; ++i) {
    interleave_pair(ab + static_cast<size_t>(2 * i) * act_stride, ab + static_cast<size_t>(2 * i + 1) * act_stride, nb,
                    pairs + static_cast<size_t>(i) * pair_bytes);
  }
  const int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>((256u << 10) / reg.total));
  for (int64_t c0 = g0; c0 < g1; c0 += chunk) {
    const int64_t c1 = std::min(g1, c0 + chunk);
    for (int64_t i = 0; i < n_pairs; i += kMmlaPairs) {
      const int64_t t0 = 2 * i;
      const uint8_t* a = ab + static_cast<size_t>(t0) * act_stride;
      const uint8_t* pa = pairs + static_cast<size_t>(i) * pair_bytes;
      for (int64_t g = c0; g < c1; ++g) {
        const int64_t row0 = g * kPackRows;
        const int64_t valid = std::min<int64_t>(kPackRows, m - row0);
        const uint8_t* grp = wb + static_cast<size_t>(g) * reg.total;
        float* yt = y + t0 * y_stride + row0;
        if (n_pairs - i >= 2) {
          tile_32_mmla<Type, 2, kMmlaQuarters>(grp, reg, nb, k, a, act_stride, pa, yt, y_stride, valid);
        } else {
          tile_32_mmla<Type, 1, kMmlaQuarters>(grp, reg, nb, k, a, act_stride, pa, yt, y_stride, valid);
        }
      }
    }
    if (n % 2 != 0) {
      const int64_t t = n - 1;
      for (int64_t g = c0; g < c1; ++g) {
        const int64_t row0 = g * kPackRows;
        tile_32<Type, 1>(wb + static_cast<size_t>(g) * reg.total, reg, nb, k, ab + static_cast<size_t>(t) * act_stride,
                         act_stride, y + t * y_stride + row0, y_stride, std::min<int64_t>(kPackRows, m - row0));
      }
    }
  }
  std::free(pairs);
  return true;
}
static_assert(kMmlaPairs == 2, "gemm_mmla's tiles are of one or two pairs");
#endif

template <DType Type>
void gemm(const void* w, int64_t k, int64_t m, int64_t g0, int64_t g1, const void* xa, size_t act_stride, int64_t n,
          float* y, int64_t y_stride) {
  constexpr PackedFormat f = packed_format(Type);
  const int64_t nb = k / f.block;
  const PackedRegions reg = packed_regions(f, nb);
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(xa);
#if HEARTH_ARM_I8MM
  if constexpr (!f.k4 && !f.k6) {
    if (n >= 2 && gemm_mmla<Type>(wb, reg, nb, k, m, g0, g1, ab, act_stride, n, y, y_stride)) return;
  }
#endif
  // Groups in chunks of about 256 KiB that stay in L2 while every tile of tokens passes.
  const int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>((256u << 10) / reg.total));
  for (int64_t c0 = g0; c0 < g1; c0 += chunk) {
    const int64_t c1 = std::min(g1, c0 + chunk);
    // Tiles as even as possible (5 tokens: 3 + 2, not 4 + 1).
    const int64_t tiles = (n + kTile - 1) / kTile;
    for (int64_t i = 0, t0 = 0; i < tiles; ++i) {
      const int64_t size = n / tiles + (i < n % tiles ? 1 : 0);
      const uint8_t* a = ab + static_cast<size_t>(t0) * act_stride;
      float* yt = y + t0 * y_stride;
      t0 += size;
      for (int64_t g = c0; g < c1; ++g) {
        const int64_t row0 = g * kPackRows;
        const int64_t valid = std::min<int64_t>(kPackRows, m - row0);
        const uint8_t* grp = wb + static_cast<size_t>(g) * reg.total;
        switch (size) {
          case 1: group_tile<Type, 1>(grp, reg, nb, k, a, act_stride, yt + row0, y_stride, valid); break;
          case 2: group_tile<Type, 2>(grp, reg, nb, k, a, act_stride, yt + row0, y_stride, valid); break;
          case 3: group_tile<Type, 3>(grp, reg, nb, k, a, act_stride, yt + row0, y_stride, valid); break;
          default: group_tile<Type, 4>(grp, reg, nb, k, a, act_stride, yt + row0, y_stride, valid); break;
        }
      }
    }
  }
}

static_assert(kTile == 4, "the switch above covers tiles of 1 to 4 tokens");

}  // namespace

#define HEARTH_ARM_DEFINE_PACKED_GEMM(t, T)                                                                      \
  void packed_gemm_##t(const void* w, int64_t k, int64_t m, int64_t g0, int64_t g1, const void* xa, size_t act_stride, \
                       int64_t n, float* y, int64_t y_stride) {                                                  \
    gemm<DType::T>(w, k, m, g0, g1, xa, act_stride, n, y, y_stride);                                             \
  }
HEARTH_ARM_DEFINE_PACKED_GEMM(q4_0, Q4_0)
HEARTH_ARM_DEFINE_PACKED_GEMM(q4_1, Q4_1)
HEARTH_ARM_DEFINE_PACKED_GEMM(q5_0, Q5_0)
HEARTH_ARM_DEFINE_PACKED_GEMM(q5_1, Q5_1)
HEARTH_ARM_DEFINE_PACKED_GEMM(q8_0, Q8_0)
HEARTH_ARM_DEFINE_PACKED_GEMM(q4_K, Q4_K)
HEARTH_ARM_DEFINE_PACKED_GEMM(q6_K, Q6_K)
HEARTH_ARM_DEFINE_PACKED_GEMM(q5_K, Q5_K)
#undef HEARTH_ARM_DEFINE_PACKED_GEMM

}  // namespace hearth::kernels::arm::HEARTH_ARM_NS
