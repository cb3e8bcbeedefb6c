// The x86 kernels, written once and compiled once per level: dot_avx2.cpp and dot_avx512.cpp
// define HEARTH_X86_NS (the namespace, so the two copies never collide) and HEARTH_X86_VNNI
// (1: integer dot products with vpdpbusd instead of maddubs + madd), then include this file.
// Include it nowhere else. Contracts: kernels/cpu/x86/dot_x86.h.
//
// Every block field is read through memcpy / unaligned loads at byte offsets, never through a
// (possibly misaligned) block pointer. Integer products are exact; the float reduction order
// differs from the scalar reference (per-lane accumulation across blocks, FMA), which is why
// tests compare dots with a tolerance and quantizers byte for byte.
#include <immintrin.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/quant_blocks.h"
#include "kernels/cpu/x86/dot_x86.h"

#if !defined(HEARTH_X86_NS) || !defined(HEARTH_X86_VNNI)
#error "define HEARTH_X86_NS and HEARTH_X86_VNNI before including dot_x86_impl.h"
#endif

namespace hearth::kernels::x86::HEARTH_X86_NS {
namespace {

// --- loads ---------------------------------------------------------------------------------

inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return _cvtsh_ss(h);  // exact, subnormals included
}
inline float load_f32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, sizeof(f));
  return f;
}
inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// 16 bytes of packed nibbles -> 32 bytes: low nibbles (elements 0..15), then high (16..31).
inline __m256i nibbles_32(const uint8_t* qs) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}

// 32 bits (little-endian) -> 32 bytes, 0xFF where bit j is set, else 0.
inline __m256i bits_32(const uint8_t* qh) {
  uint32_t bits;
  std::memcpy(&bits, qh, sizeof(bits));
  const __m256i shuffle = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), shuffle);
  bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));  // all bits but bit j % 8
  return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

// --- integer products ----------------------------------------------------------------------

// Sums of u8 * s8 over groups of four bytes -> 8 x int32. Exact for u <= 128, |s| <= 127:
// maddubs' int16 pair sums stay below 2 * 128 * 127 < 32767.
inline __m256i dot_us8(__m256i u, __m256i s) {
#if HEARTH_X86_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// u8 * s8 pair sums (int16, exact for u <= 63) times a per-16-lane int16 scale -> 8 x int32.
inline __m256i dot_us8_scaled(__m256i u, __m256i s, __m256i scale16) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale16);
}

inline __m256i scales_16(int lo, int hi) {
  return _mm256_set_m128i(_mm_set1_epi16(static_cast<int16_t>(hi)), _mm_set1_epi16(static_cast<int16_t>(lo)));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline int hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}
inline double hsum(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

// --- 32-element blocks ---------------------------------------------------------------------
// One weight block is decoded once and dotted with the matching block of NR activation rows.

constexpr size_t kQ8_0Bytes = sizeof(BlockQ8_0);
constexpr size_t kQ8_1Bytes = sizeof(BlockQ8_1);

// Signed weights (q - offset as int8) against Q8_0 activations.
template <class Block, int NR, class Decode>
void dot_signed_q8_0(int64_t n, const void* w, const void* x, size_t x_stride, float* out, Decode decode) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  const int64_t nb = n / kQK8_0;
  __m256 acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, wb += sizeof(Block)) {
    const __m256i qx = decode(wb);
    const __m256i ax = _mm256_sign_epi8(qx, qx);  // |q| as u8 (-128 -> 128)
    const float dw = load_f16(wb + offsetof(Block, d));
    for (int r = 0; r < NR; ++r) {
      const uint8_t* y = xb + r * x_stride + static_cast<size_t>(b) * kQ8_0Bytes;
      const __m256i sy = _mm256_sign_epi8(load32(y + offsetof(BlockQ8_0, qs)), qx);  // y * sign(q)
      const __m256 p = _mm256_cvtepi32_ps(dot_us8(ax, sy));
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * load_f16(y + offsetof(BlockQ8_0, d))), p, acc[r]);
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = hsum(acc[r]);
}

// Unsigned weights (x = d q + m) against Q8_1 activations, whose s = d_y sum(q_y) applies m.
template <class Block, int NR, class Decode>
void dot_unsigned_q8_1(int64_t n, const void* w, const void* x, size_t x_stride, float* out, Decode decode) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  const int64_t nb = n / kQK8_0;
  __m256 acc[NR];
  float summ[NR];
  for (int r = 0; r < NR; ++r) {
    acc[r] = _mm256_setzero_ps();
    summ[r] = 0.0f;
  }
  for (int64_t b = 0; b < nb; ++b, wb += sizeof(Block)) {
    const __m256i qx = decode(wb);  // 0..31
    const float dw = load_f16(wb + offsetof(Block, d));
    const float mw = load_f16(wb + offsetof(Block, m));
    for (int r = 0; r < NR; ++r) {
      const uint8_t* y = xb + r * x_stride + static_cast<size_t>(b) * kQ8_1Bytes;
      const __m256 p = _mm256_cvtepi32_ps(dot_us8(qx, load32(y + offsetof(BlockQ8_1, qs))));
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * load_f16(y + offsetof(BlockQ8_1, d))), p, acc[r]);
      summ[r] += mw * load_f16(y + offsetof(BlockQ8_1, s));
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = hsum(acc[r]) + summ[r];
}

template <int NR>
void dot_q8_0(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_signed_q8_0<BlockQ8_0, NR>(n, w, x, x_stride, out,
                                 [](const uint8_t* b) { return load32(b + offsetof(BlockQ8_0, qs)); });
}

template <int NR>
void dot_q4_0(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_signed_q8_0<BlockQ4_0, NR>(n, w, x, x_stride, out, [](const uint8_t* b) {
    return _mm256_sub_epi8(nibbles_32(b + offsetof(BlockQ4_0, qs)), _mm256_set1_epi8(8));
  });
}

template <int NR>
void dot_q5_0(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_signed_q8_0<BlockQ5_0, NR>(n, w, x, x_stride, out, [](const uint8_t* b) {
    // q - 16 as int8: where the fifth bit is clear, set the top four bits (nibble - 16).
    const __m256i high = _mm256_andnot_si256(bits_32(b + offsetof(BlockQ5_0, qh)), _mm256_set1_epi8(static_cast<char>(0xF0)));
    return _mm256_or_si256(nibbles_32(b + offsetof(BlockQ5_0, qs)), high);
  });
}

template <int NR>
void dot_q4_1(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_unsigned_q8_1<BlockQ4_1, NR>(n, w, x, x_stride, out,
                                   [](const uint8_t* b) { return nibbles_32(b + offsetof(BlockQ4_1, qs)); });
}

template <int NR>
void dot_q5_1(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_unsigned_q8_1<BlockQ5_1, NR>(n, w, x, x_stride, out, [](const uint8_t* b) {
    const __m256i high = _mm256_and_si256(bits_32(b + offsetof(BlockQ5_1, qh)), _mm256_set1_epi8(0x10));
    return _mm256_or_si256(nibbles_32(b + offsetof(BlockQ5_1, qs)), high);
  });
}

// The same four-row products with the activations' block scales already widened to float, block
// major (xd[4 b + r], and for Q8_1 xs[4 b + r]): the four dw * dy products take one vector
// multiply and the four m * s sums one multiply and one add, instead of two scalar f16
// conversions and their arithmetic per row and block. The values and the order of every
// rounding are those of the one-row kernel, so the results are bit-identical to it.
template <class Block, class Decode>
void dot_signed_q8_0_scaled(int64_t n, const void* w, const void* x, size_t x_stride, const float* xd, float* out,
                            Decode decode) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  const int64_t nb = n / kQK8_0;
  __m256 acc[4];
  __m256i lane[4];
  for (int r = 0; r < 4; ++r) {
    acc[r] = _mm256_setzero_ps();
    lane[r] = _mm256_set1_epi32(r);
  }
  for (int64_t b = 0; b < nb; ++b, wb += sizeof(Block)) {
    const __m256i qx = decode(wb);
    const __m256i ax = _mm256_sign_epi8(qx, qx);
    const __m256 scales = _mm256_castps128_ps256(_mm_mul_ps(_mm_set1_ps(load_f16(wb + offsetof(Block, d))), _mm_loadu_ps(xd + 4 * b)));
    // Called with constant r, four times: keeps acc[] in registers (a loop over r was compiled
    // with acc[] in memory, a store-to-load chain per row).
    const auto row = [&](int r) {
      const uint8_t* y = xb + r * x_stride + static_cast<size_t>(b) * kQ8_0Bytes;
      const __m256i sy = _mm256_sign_epi8(load32(y + offsetof(BlockQ8_0, qs)), qx);
      const __m256 p = _mm256_cvtepi32_ps(dot_us8(ax, sy));
      acc[r] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(scales, lane[r]), p, acc[r]);
    };
    row(0);
    row(1);
    row(2);
    row(3);
  }
  for (int r = 0; r < 4; ++r) out[r] = hsum(acc[r]);
}

template <class Block, class Decode>
void dot_unsigned_q8_1_scaled(int64_t n, const void* w, const void* x, size_t x_stride, const float* xd, const float* xs,
                              float* out, Decode decode) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  const int64_t nb = n / kQK8_0;
  __m256 acc[4];
  __m256i lane[4];
  for (int r = 0; r < 4; ++r) {
    acc[r] = _mm256_setzero_ps();
    lane[r] = _mm256_set1_epi32(r);
  }
  __m128 summ = _mm_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, wb += sizeof(Block)) {
    const __m256i qx = decode(wb);
    const __m256 scales = _mm256_castps128_ps256(_mm_mul_ps(_mm_set1_ps(load_f16(wb + offsetof(Block, d))), _mm_loadu_ps(xd + 4 * b)));
    summ = _mm_add_ps(summ, _mm_mul_ps(_mm_set1_ps(load_f16(wb + offsetof(Block, m))), _mm_loadu_ps(xs + 4 * b)));
    const auto row = [&](int r) {  // constant r: see dot_signed_q8_0_scaled
      const uint8_t* y = xb + r * x_stride + static_cast<size_t>(b) * kQ8_1Bytes;
      const __m256 p = _mm256_cvtepi32_ps(dot_us8(qx, load32(y + offsetof(BlockQ8_1, qs))));
      acc[r] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(scales, lane[r]), p, acc[r]);
    };
    row(0);
    row(1);
    row(2);
    row(3);
  }
  float sm[4];
  _mm_storeu_ps(sm, summ);
  for (int r = 0; r < 4; ++r) out[r] = hsum(acc[r]) + sm[r];
}

inline __m256i decode_q8_0(const uint8_t* b) { return load32(b + offsetof(BlockQ8_0, qs)); }
inline __m256i decode_q4_0(const uint8_t* b) {
  return _mm256_sub_epi8(nibbles_32(b + offsetof(BlockQ4_0, qs)), _mm256_set1_epi8(8));
}
inline __m256i decode_q5_0(const uint8_t* b) {
  const __m256i high = _mm256_andnot_si256(bits_32(b + offsetof(BlockQ5_0, qh)), _mm256_set1_epi8(static_cast<char>(0xF0)));
  return _mm256_or_si256(nibbles_32(b + offsetof(BlockQ5_0, qs)), high);
}
inline __m256i decode_q4_1(const uint8_t* b) { return nibbles_32(b + offsetof(BlockQ4_1, qs)); }
inline __m256i decode_q5_1(const uint8_t* b) {
  const __m256i high = _mm256_and_si256(bits_32(b + offsetof(BlockQ5_1, qh)), _mm256_set1_epi8(0x10));
  return _mm256_or_si256(nibbles_32(b + offsetof(BlockQ5_1, qs)), high);
}

// --- k-quants against Q8_K -----------------------------------------------------------------

constexpr size_t kQ8_KBytes = sizeof(BlockQ8_K);

inline void load_bsums(const uint8_t* y, int16_t* bsums) {
  std::memcpy(bsums, y + offsetof(BlockQ8_K, bsums), sizeof(int16_t) * (kQK_K / 16));
}

// Q4_K and Q5_K: 8 sub-blocks of 32, x = d sc q - dmin m. `decode(p, lo, hi)` gives the
// unsigned quants of sub-blocks 2p and 2p+1 of the block.
template <class Block, int NR, class Decode>
void dot_k4(int64_t n, const void* w, const void* x, size_t x_stride, float* out, Decode decode) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  const int64_t nb = n / kQK_K;
  __m256 acc[NR];
  float accm[NR];
  for (int r = 0; r < NR; ++r) {
    acc[r] = _mm256_setzero_ps();
    accm[r] = 0.0f;
  }
  for (int64_t b = 0; b < nb; ++b, wb += sizeof(Block)) {
    int sc[8], mn[8];
    unpack_scales_mins_k4(wb + offsetof(Block, scales), sc, mn);
    __m256i sumi[NR];
    for (int r = 0; r < NR; ++r) sumi[r] = _mm256_setzero_si256();
    for (int p = 0; p < 4; ++p) {
      __m256i lo, hi;
      decode(wb, p, lo, hi);
      const __m256i s0 = _mm256_set1_epi16(static_cast<int16_t>(sc[2 * p]));
      const __m256i s1 = _mm256_set1_epi16(static_cast<int16_t>(sc[2 * p + 1]));
      for (int r = 0; r < NR; ++r) {
        const uint8_t* yq = xb + r * x_stride + static_cast<size_t>(b) * kQ8_KBytes + offsetof(BlockQ8_K, qs) + 64 * p;
        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(dot_us8_scaled(lo, load32(yq), s0),
                                                             dot_us8_scaled(hi, load32(yq + 32), s1)));
      }
    }
    const float dw = load_f16(wb + offsetof(Block, d));
    const float dminw = load_f16(wb + offsetof(Block, dmin));
    for (int r = 0; r < NR; ++r) {
      const uint8_t* y = xb + r * x_stride + static_cast<size_t>(b) * kQ8_KBytes;
      const float dy = load_f32(y + offsetof(BlockQ8_K, d));
      int16_t bs[16];
      load_bsums(y, bs);
      int summs = 0;
      for (int j = 0; j < 8; ++j) summs += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dy * dw), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
      accm[r] += dy * dminw * static_cast<float>(summs);
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = hsum(acc[r]) - accm[r];
}

template <int NR>
void dot_q4_K(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_k4<BlockQ4_K, NR>(n, w, x, x_stride, out, [](const uint8_t* b, int p, __m256i& lo, __m256i& hi) {
    const __m256i q = load32(b + offsetof(BlockQ4_K, qs) + 32 * p);
    lo = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
    hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), _mm256_set1_epi8(0x0F));
  });
}

template <int NR>
void dot_q5_K(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  dot_k4<BlockQ5_K, NR>(n, w, x, x_stride, out, [](const uint8_t* b, int p, __m256i& lo, __m256i& hi) {
    const __m256i q = load32(b + offsetof(BlockQ5_K, qs) + 32 * p);
    // Fifth bits: bit 2p of qh[l] for sub-block 2p, bit 2p + 1 for 2p + 1. A variable shift
    // count is fine here (vpsrlw takes it in a register).
    const __m256i qh = _mm256_srl_epi16(load32(b + offsetof(BlockQ5_K, qh)), _mm_cvtsi32_si128(2 * p));
    const __m256i one = _mm256_set1_epi8(1);
    lo = _mm256_or_si256(_mm256_and_si256(q, _mm256_set1_epi8(0x0F)), _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
    hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), _mm256_set1_epi8(0x0F)),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 1), one), 4));
  });
}

// Q6_K: 16 sub-blocks of 16, x = d sc (q - 32), q in 0..63. The products use q unsigned and
// the -32 is applied once per block through the activations' bsums.
template <int NR>
void dot_q6_K(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  const int64_t nb = n / kQK_K;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i m2 = _mm256_set1_epi8(0x03);
  __m256 acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, wb += sizeof(BlockQ6_K)) {
    int8_t sc[16];
    std::memcpy(sc, wb + offsetof(BlockQ6_K, scales), sizeof(sc));
    __m256i sumi[NR];
    for (int r = 0; r < NR; ++r) sumi[r] = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = load32(wb + offsetof(BlockQ6_K, ql) + 64 * h);
      const __m256i ql1 = load32(wb + offsetof(BlockQ6_K, ql) + 64 * h + 32);
      const __m256i qh = load32(wb + offsetof(BlockQ6_K, qh) + 32 * h);
      // Element l of each quarter: low 4 bits from ql, high 2 bits from qh[l] (2 bits each).
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4)),
          _mm256_or_si256(_mm256_and_si256(ql1, m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4)),
      };
      __m256i s[4];
      for (int k = 0; k < 4; ++k) s[k] = scales_16(sc[8 * h + 2 * k], sc[8 * h + 2 * k + 1]);
      for (int r = 0; r < NR; ++r) {
        const uint8_t* yq = xb + r * x_stride + static_cast<size_t>(b) * kQ8_KBytes + offsetof(BlockQ8_K, qs) + 128 * h;
        for (int k = 0; k < 4; ++k) sumi[r] = _mm256_add_epi32(sumi[r], dot_us8_scaled(q[k], load32(yq + 32 * k), s[k]));
      }
    }
    const float dw = load_f16(wb + offsetof(BlockQ6_K, d));
    for (int r = 0; r < NR; ++r) {
      const uint8_t* y = xb + r * x_stride + static_cast<size_t>(b) * kQ8_KBytes;
      int16_t bs[16];
      load_bsums(y, bs);
      int offset = 0;  // sum over sub-blocks of sc * 32 * sum(q_y)
      for (int k = 0; k < 16; ++k) offset += sc[k] * bs[k];
      const __m256i total = _mm256_sub_epi32(sumi[r], _mm256_setr_epi32(32 * offset, 0, 0, 0, 0, 0, 0, 0));
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * load_f32(y + offsetof(BlockQ8_K, d))), _mm256_cvtepi32_ps(total), acc[r]);
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = hsum(acc[r]);
}

// --- plain types ---------------------------------------------------------------------------
// Accumulated in double like the reference (which follows ggml's wide accumulation), so these
// agree with it to the last bits: f16 x f16 products are exact in float, bf16 and f32 values
// are widened to double before multiplying (their products can overflow float).

inline void widen(__m256 v, __m256d& lo, __m256d& hi) {
  lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
}

inline __m256 bf16x8(const uint16_t* p) {
  const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

// --- activation quantizers -----------------------------------------------------------------
// Same arithmetic as the scalar references, element for element: a float product rounded once
// (no FMA), rounding half to even, the f16 scale rounded to nearest even.

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// max |x[i]| over `count` floats (a multiple of 8).
inline float abs_max(const float* x, int count) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (int i = 0; i < count; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
  return hmax(m);
}

// round_half_even(x[i] * scale) for 8 floats.
inline __m256i scale_round(const float* x, __m256 scale) {
  return _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x), scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// Four vectors of 8 int32 (each within int8) -> 32 int8 in element order.
inline __m256i pack_32(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_packs_epi32(a, b);  // per 128-bit lane: a0-3 b0-3 | a4-7 b4-7
  const __m256i cd = _mm256_packs_epi32(c, d);
  const __m256i all = _mm256_packs_epi16(ab, cd);  // a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7
  return _mm256_permutevar8x32_epi32(all, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// F16C's conversion rounds to nearest even like core/fp16.h's fp32_to_fp16, which must not be
// called from here: an inline function compiled with these flags could be the copy the linker
// keeps for the baseline code too.
inline void store_f16(uint8_t* p, float v) {
  const auto h = static_cast<uint16_t>(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT));
  std::memcpy(p, &h, sizeof(h));
}

// Q8_0 / Q8_1 body: returns the block's sum of quants (for Q8_1's s).
inline int quantize_block_32(const float* x, uint8_t* qs, float* d_out) {
  const float amax = abs_max(x, kQK8_0);
  *d_out = amax / 127.0f;
  const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
  const __m256i q0 = scale_round(x, id), q1 = scale_round(x + 8, id);
  const __m256i q2 = scale_round(x + 16, id), q3 = scale_round(x + 24, id);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs), pack_32(q0, q1, q2, q3));
  return hsum(_mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3)));
}

}  // namespace

// --- entry points ----------------------------------------------------------------------------

#define HEARTH_X86_DEFINE_DOT(t)                                                                   \
  float vec_dot_##t(int64_t n, const void* w, const void* x) {                                      \
    float out;                                                                                     \
    dot_##t<1>(n, w, x, 0, &out);                                                                   \
    return out;                                                                                    \
  }                                                                                                \
  void vec_dot_##t##_4(int64_t n, const void* w, const void* x, size_t x_stride, float* out) {      \
    dot_##t<4>(n, w, x, x_stride, out);                                                             \
  }
HEARTH_X86_BLOCK_DOTS(HEARTH_X86_DEFINE_DOT)
#undef HEARTH_X86_DEFINE_DOT

#define HEARTH_X86_DEFINE_DOT4S_SIGNED(t, Block)                                                          \
  void vec_dot_##t##_4s(int64_t n, const void* w, const void* x, size_t x_stride, const float* xd, const float*, \
                        float* out) {                                                                    \
    dot_signed_q8_0_scaled<Block>(n, w, x, x_stride, xd, out, decode_##t);                               \
  }
#define HEARTH_X86_DEFINE_DOT4S_UNSIGNED(t, Block)                                                        \
  void vec_dot_##t##_4s(int64_t n, const void* w, const void* x, size_t x_stride, const float* xd,        \
                        const float* xs, float* out) {                                                   \
    dot_unsigned_q8_1_scaled<Block>(n, w, x, x_stride, xd, xs, out, decode_##t);                         \
  }
HEARTH_X86_DEFINE_DOT4S_SIGNED(q8_0, BlockQ8_0)
HEARTH_X86_DEFINE_DOT4S_SIGNED(q4_0, BlockQ4_0)
HEARTH_X86_DEFINE_DOT4S_SIGNED(q5_0, BlockQ5_0)
HEARTH_X86_DEFINE_DOT4S_UNSIGNED(q4_1, BlockQ4_1)
HEARTH_X86_DEFINE_DOT4S_UNSIGNED(q5_1, BlockQ5_1)
#undef HEARTH_X86_DEFINE_DOT4S_SIGNED
#undef HEARTH_X86_DEFINE_DOT4S_UNSIGNED

float vec_dot_f16(int64_t n, const void* w, const void* x) {
  const auto* a = static_cast<const uint16_t*>(w);
  const auto* b = static_cast<const uint16_t*>(x);
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 p = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i))),
                                   _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i))));
    __m256d lo, hi;
    widen(p, lo, hi);
    acc0 = _mm256_add_pd(acc0, lo);
    acc1 = _mm256_add_pd(acc1, hi);
  }
  double sum = hsum(_mm256_add_pd(acc0, acc1));
  for (; i < n; ++i) {
    uint16_t ha, hb;
    std::memcpy(&ha, a + i, 2);
    std::memcpy(&hb, b + i, 2);
    sum += static_cast<double>(_cvtsh_ss(ha)) * static_cast<double>(_cvtsh_ss(hb));
  }
  return static_cast<float>(sum);
}

float vec_dot_bf16(int64_t n, const void* w, const void* x) {
  const auto* a = static_cast<const uint16_t*>(w);
  const auto* b = static_cast<const uint16_t*>(x);
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256d w0, w1, x0, x1;
    widen(bf16x8(a + i), w0, w1);
    widen(bf16x8(b + i), x0, x1);
    acc0 = _mm256_fmadd_pd(w0, x0, acc0);
    acc1 = _mm256_fmadd_pd(w1, x1, acc1);
  }
  double sum = hsum(_mm256_add_pd(acc0, acc1));
  for (; i < n; ++i) {
    uint16_t ha, hb;
    std::memcpy(&ha, a + i, 2);
    std::memcpy(&hb, b + i, 2);
    sum += static_cast<double>(std::bit_cast<float>(static_cast<uint32_t>(ha) << 16)) *
           static_cast<double>(std::bit_cast<float>(static_cast<uint32_t>(hb) << 16));
  }
  return static_cast<float>(sum);
}

float vec_dot_f32(int64_t n, const void* w, const void* x) {
  const auto* a = static_cast<const float*>(w);
  const auto* b = static_cast<const float*>(x);
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256d w0, w1, x0, x1;
    widen(_mm256_loadu_ps(a + i), w0, w1);
    widen(_mm256_loadu_ps(b + i), x0, x1);
    acc0 = _mm256_fmadd_pd(w0, x0, acc0);
    acc1 = _mm256_fmadd_pd(w1, x1, acc1);
  }
  double sum = hsum(_mm256_add_pd(acc0, acc1));
  for (; i < n; ++i) {
    float fa, fb;
    std::memcpy(&fa, a + i, 4);
    std::memcpy(&fb, b + i, 4);
    sum += static_cast<double>(fa) * static_cast<double>(fb);
  }
  return static_cast<float>(sum);
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
    store_f16(out + offsetof(BlockQ8_1, s), d * static_cast<float>(sum));
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
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 target = _mm256_set1_ps(amax);
    for (int i = 0; i < kQK_K; i += 8) {
      const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i));
      const int mask = _mm256_movemask_ps(_mm256_cmp_ps(a, target, _CMP_EQ_OQ));
      if (mask != 0) {
        max = x[i + __builtin_ctz(static_cast<unsigned>(mask))];
        break;
      }
    }
    const float iscale = -127.0f / max;
    const __m256 scale = _mm256_set1_ps(iscale);
    const __m256i limit = _mm256_set1_epi32(127);
    int16_t bsums[kQK_K / 16];
    for (int i = 0; i < kQK_K; i += 32) {
      __m256i q[4];
      for (int k = 0; k < 4; ++k) q[k] = _mm256_min_epi32(scale_round(x + i + 8 * k, scale), limit);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + offsetof(BlockQ8_K, qs) + i), pack_32(q[0], q[1], q[2], q[3]));
      bsums[i / 16] = static_cast<int16_t>(hsum(_mm256_add_epi32(q[0], q[1])));
      bsums[i / 16 + 1] = static_cast<int16_t>(hsum(_mm256_add_epi32(q[2], q[3])));
    }
    std::memcpy(out + offsetof(BlockQ8_K, bsums), bsums, sizeof(bsums));
    const float d = 1.0f / iscale;
    std::memcpy(out + offsetof(BlockQ8_K, d), &d, sizeof(d));
  }
}

}  // namespace hearth::kernels::x86::HEARTH_X86_NS
