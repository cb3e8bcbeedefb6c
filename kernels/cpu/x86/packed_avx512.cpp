// The packed-weight matmul on AVX-512 VNNI (layout: kernels/cpu/packed.h). One 16-row group and
// up to kPackTokens tokens at a time: a block's quants are decoded once into eight registers
// (four activation bytes per row and lane each), then for every token eight vpdpbusd with the
// token's four bytes broadcast from memory give the block's 16 integer sums, lane r holding row
// r's; one conversion and one FMA per token and block apply the scales. The arithmetic per lane
// is that of packed_gemm_ref, so a token's result never depends on its company. Software
// prefetches run a fixed distance ahead of the decoding (prefetch_stream).

// GCC 12 reports its own _mm512_undefined_ps() inside _mm512_cvtepi32_ps / _mm512_cvtph_ps as
// "may be used uninitialized" once they are inlined here; the value is never read.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "core/dtype.h"
#include "kernels/cpu/packed.h"
#include "kernels/cpu/x86/packed_x86.h"

namespace hearth::kernels::x86::avx512 {
namespace {

inline int32_t load_i32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline float load_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
// acc + the products of w's bytes with the four bytes at p, broadcast to every lane: vpdpbusd with
// the broadcast folded into its memory operand ({1to16}), which GCC 12 does not do for
// _mm512_set1_epi32 (a separate vpbroadcastd per product).
inline __m512i dpbusd_bcast(__m512i acc, __m512i w, const uint8_t* p) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const int32_t*>(p)));
  return acc;
}

template <DType Type, int T>
void group_tile(const uint8_t* grp, const PackedRegions& reg, int64_t nb, int64_t k, const uint8_t* xa,
                size_t act_stride, float* y, int64_t y_stride, __mmask16 rows) {
  constexpr PackedFormat f = packed_format(Type);
  const size_t corr_at = static_cast<size_t>(k) + 4 * static_cast<size_t>(nb);
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const auto ub = static_cast<size_t>(b);
    const uint8_t* qs = grp + reg.at(reg.qs, reg.qs_block, ub);
    prefetch_stream(grp, reg, ub);
    __m512i w[8];
    if constexpr (f.q8) {
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) w[j] = _mm512_loadu_si512(qs + 64 * j);
    } else {
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const __m512i p = _mm512_loadu_si512(qs + 64 * i);
        w[i] = _mm512_and_si512(p, low4);
        w[i + 4] = _mm512_and_si512(_mm512_srli_epi16(p, 4), low4);
      }
      if constexpr (f.has_qh) {
        const uint8_t* qh = grp + reg.at(reg.qh, 64, ub);
        const __m512i bit4 = _mm512_set1_epi8(0x10);
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) w[j] = _mm512_or_si512(w[j], _mm512_maskz_mov_epi8(load_u64(qh + 8 * j), bit4));
      }
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + reg.at(reg.d, 32, ub))));
    __m512 mw = _mm512_setzero_ps();
    if constexpr (f.has_min) mw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + reg.at(reg.m, 32, ub))));
    // One token: constant t after unrolling, so acc[] stays in registers.
    const auto token = [&]<int t>(std::integral_constant<int, t>) {
      const uint8_t* a = xa + static_cast<size_t>(t) * act_stride;
      const uint8_t* aq = a + 32 * ub;
      // Four chains of two products, summed after: integer sums are exact in any order, and
      // short chains keep a lone token from waiting on vpdpbusd's latency.
      __m512i s[4] = {f.has_min ? _mm512_setzero_si512() : _mm512_set1_epi32(load_i32(a + corr_at + 4 * ub)),
                      _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) s[j % 4] = _mm512_dpbusd_epi32(s[j % 4], w[j], _mm512_set1_epi32(load_i32(aq + 4 * j)));
      const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(s[0], s[1]), _mm512_add_epi32(s[2], s[3]));
      const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(load_f32(a + k + 4 * ub)));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[t]);
      if constexpr (f.has_min) acc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(load_f32(a + corr_at + 4 * ub)), acc[t]);
    };
    [&]<int... I>(std::integer_sequence<int, I...>) { (token(std::integral_constant<int, I>{}), ...); }(
        std::make_integer_sequence<int, T>{});
  }
  for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(y + t * y_stride, rows, acc[t]);
}

// Q4_K: per sub-block of 32 the same eight products, then the sub-block's 6-bit scales
// (vpmulld into an int32 total per super-block); the mins meet the token's sums of 32 through
// four vpdpwssd (pairs of sub-blocks); then one conversion and two FMAs per token and
// super-block. Integer results are exact, so the order of the sums is free.
template <int T>
void group_tile_k4(const uint8_t* grp, const PackedRegions& reg, int64_t nb, int64_t k, const uint8_t* xa,
                   size_t act_stride, float* y, int64_t y_stride, __mmask16 rows) {
  const size_t sums_at = static_cast<size_t>(k) + 4 * static_cast<size_t>(nb);
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const auto ub = static_cast<size_t>(b);
    prefetch_stream(grp, reg, ub);
    __m512i total[T];
    for (int t = 0; t < T; ++t) total[t] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const uint8_t* qs = grp + reg.at(reg.qs, reg.qs_block, ub) + 512 * static_cast<size_t>(j / 2);
      __m512i w[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        const __m512i p = _mm512_loadu_si512(qs + 64 * i);
        w[i] = _mm512_and_si512(j % 2 == 0 ? p : _mm512_srli_epi16(p, 4), low4);
      }
      const __m512i sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(grp + reg.at(reg.sc, 128, ub) + 16 * static_cast<size_t>(j))));
      const auto token = [&]<int t>(std::integral_constant<int, t>) {
        const uint8_t* aq = xa + static_cast<size_t>(t) * act_stride + 256 * ub + 32 * static_cast<size_t>(j);
        __m512i s[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) s[i % 4] = _mm512_dpbusd_epi32(s[i % 4], w[i], _mm512_set1_epi32(load_i32(aq + 4 * i)));
        const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(s[0], s[1]), _mm512_add_epi32(s[2], s[3]));
        total[t] = _mm512_add_epi32(total[t], _mm512_mullo_epi32(sum, sc));
      };
      [&]<int... I>(std::integer_sequence<int, I...>) { (token(std::integral_constant<int, I>{}), ...); }(
          std::make_integer_sequence<int, T>{});
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + reg.at(reg.d, 32, ub))));
    const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + reg.at(reg.m, 32, ub))));
    __m512i mn[4];
    for (int q = 0; q < 4; ++q) {
      mn[q] = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + reg.at(reg.mn, 128, ub) + 32 * static_cast<size_t>(q))));
    }
    const auto finish = [&]<int t>(std::integral_constant<int, t>) {
      const uint8_t* a = xa + static_cast<size_t>(t) * act_stride;
      const uint8_t* sums = a + sums_at + 16 * ub;
      __m512i msum = _mm512_setzero_si512();
      for (int q = 0; q < 4; ++q) msum = _mm512_dpwssd_epi32(msum, mn[q], _mm512_set1_epi32(load_i32(sums + 4 * q)));
      const __m512 dx = _mm512_set1_ps(load_f32(a + k + 4 * ub));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total[t]), _mm512_mul_ps(dw, dx), acc[t]);
      acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(dmin, dx), acc[t]);
    };
    [&]<int... I>(std::integer_sequence<int, I...>) { (finish(std::integral_constant<int, I>{}), ...); }(
        std::make_integer_sequence<int, T>{});
  }
  for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(y + t * y_stride, rows, acc[t]);
}

// Q6_K: per sub-block of 16, four products (each chain starting at the token's -32 x sum of
// the 16 quants), times the sub-block's int8 scales into an int32 total; one conversion and
// one FMA per token and super-block.
template <int T>
void group_tile_k6(const uint8_t* grp, const PackedRegions& reg, int64_t nb, int64_t k, const uint8_t* xa,
                   size_t act_stride, float* y, int64_t y_stride, __mmask16 rows) {
  const size_t corr_at = static_cast<size_t>(k) + 4 * static_cast<size_t>(nb);
  const __m512i low4 = _mm512_set1_epi8(0x0F), bits45 = _mm512_set1_epi8(0x30);
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const auto ub = static_cast<size_t>(b);
    const uint8_t* ql = grp + reg.at(reg.qs, reg.qs_block, ub);
    const uint8_t* qh = grp + reg.at(reg.qh, 1024, ub);
    prefetch_stream(grp, reg, ub);
    __m512i total[T];
    for (int t = 0; t < T; ++t) total[t] = _mm512_setzero_si512();
    // Unrolled: every offset and shift below becomes a constant.
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) {
      const int h = j / 8, quarter = j % 8 / 2, half = j % 2;
      __m512i w[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const __m512i lo = _mm512_loadu_si512(ql + 64 * (16 * h + 8 * (quarter % 2) + 4 * half + i));
        const __m512i hi = _mm512_loadu_si512(qh + 64 * (8 * h + 4 * half + i));
        // The quarter's two high bits (bits 2 quarter and 2 quarter + 1 of each qh byte) shifted
        // by a constant to bits 4-5 and masked, then one vpternlogd merges the nibble.
        const __m512i moved = quarter == 0   ? _mm512_slli_epi16(hi, 4)
                              : quarter == 1 ? _mm512_slli_epi16(hi, 2)
                              : quarter == 2 ? hi
                                             : _mm512_srli_epi16(hi, 2);
        const __m512i high = _mm512_and_si512(moved, bits45);
        // high | (nibble source & 0x0F): high, which dies here, is the operand vpternlogd
        // overwrites (the nibble source may live on for another quarter: no copy to make).
        w[i] = _mm512_ternarylogic_epi32(high, quarter / 2 == 0 ? lo : _mm512_srli_epi16(lo, 4), low4, 0xF8);
      }
      const __m512i sc =
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(grp + reg.at(reg.sc, 256, ub) + 16 * static_cast<size_t>(j))));
      const auto token = [&]<int t>(std::integral_constant<int, t>) {
        const uint8_t* a = xa + static_cast<size_t>(t) * act_stride;
        const uint8_t* aq = a + 256 * ub + 16 * static_cast<size_t>(j);
        __m512i s0 = _mm512_set1_epi32(load_i32(a + corr_at + 64 * ub + 4 * static_cast<size_t>(j)));
        __m512i s1 = _mm512_setzero_si512();
        s0 = dpbusd_bcast(s0, w[0], aq);
        s1 = dpbusd_bcast(s1, w[1], aq + 4);
        s0 = dpbusd_bcast(s0, w[2], aq + 8);
        s1 = dpbusd_bcast(s1, w[3], aq + 12);
        total[t] = _mm512_add_epi32(total[t], _mm512_mullo_epi32(_mm512_add_epi32(s0, s1), sc));
      };
      [&]<int... I>(std::integer_sequence<int, I...>) { (token(std::integral_constant<int, I>{}), ...); }(
          std::make_integer_sequence<int, T>{});
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + reg.at(reg.d, 32, ub))));
    for (int t = 0; t < T; ++t) {
      const __m512 dx = _mm512_set1_ps(load_f32(xa + static_cast<size_t>(t) * act_stride + k + 4 * ub));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total[t]), _mm512_mul_ps(dw, dx), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(y + t * y_stride, rows, acc[t]);
}

template <DType Type, int T>
void group_tiles(const uint8_t* w, const PackedRegions& reg, int64_t nb, int64_t k, int64_t m, int64_t g0, int64_t g1,
                 const uint8_t* xa, size_t act_stride, float* y, int64_t y_stride) {
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t row0 = g * kPackRows;
    const int64_t valid = std::min<int64_t>(kPackRows, m - row0);
    const auto rows = static_cast<__mmask16>((1u << valid) - 1u);
    if constexpr (packed_format(Type).k4) {
      group_tile_k4<T>(w + static_cast<size_t>(g) * reg.total, reg, nb, k, xa, act_stride, y + row0, y_stride, rows);
    } else if constexpr (packed_format(Type).k6) {
      group_tile_k6<T>(w + static_cast<size_t>(g) * reg.total, reg, nb, k, xa, act_stride, y + row0, y_stride, rows);
    } else {
      group_tile<Type, T>(w + static_cast<size_t>(g) * reg.total, reg, nb, k, xa, act_stride, y + row0, y_stride, rows);
    }
  }
}

template <DType Type>
void gemm(const void* w, int64_t k, int64_t m, int64_t g0, int64_t g1, const void* xa, size_t act_stride, int64_t n,
          float* y, int64_t y_stride) {
  constexpr PackedFormat f = packed_format(Type);
  const int64_t nb = k / f.block;
  const PackedRegions reg = packed_regions(f, nb);
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ab = static_cast<const uint8_t*>(xa);
  // Groups in chunks of about 256 KiB, which stay in L2 while every tile of tokens passes over
  // them: each weight byte comes from memory once per call, however many tokens.
  const int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>((256u << 10) / reg.total));
  for (int64_t c0 = g0; c0 < g1; c0 += chunk) {
    const int64_t c1 = std::min(g1, c0 + chunk);
    // Tiles as even as possible (9 tokens: 5 + 4, not 8 + 1): a tile of few tokens pays the
    // block decoding for few.
    const int64_t tiles = (n + kPackTokens - 1) / kPackTokens;
    for (int64_t i = 0, t0 = 0; i < tiles; ++i) {
      const int64_t size = n / tiles + (i < n % tiles ? 1 : 0);
      const uint8_t* a = ab + static_cast<size_t>(t0) * act_stride;
      float* yt = y + t0 * y_stride;
      t0 += size;
      switch (size) {
        case 1: group_tiles<Type, 1>(wb, reg, nb, k, m, c0, c1, a, act_stride, yt, y_stride); break;
        case 2: group_tiles<Type, 2>(wb, reg, nb, k, m, c0, c1, a, act_stride, yt, y_stride); break;
        case 3: group_tiles<Type, 3>(wb, reg, nb, k, m, c0, c1, a, act_stride, yt, y_stride); break;
        case 4: group_tiles<Type, 4>(wb, reg, nb, k, m, c0, c1, a, act_stride, yt, y_stride); break;
        case 5: group_tiles<Type, 5>(wb, reg, nb, k, m, c0, c1, a, act_stride, yt, y_stride); break;
        case 6: group_tiles<Type, 6>(wb, reg, nb, k, m, c0, c1, a, act_stride, yt, y_stride); break;
        case 7: group_tiles<Type, 7>(wb, reg, nb, k, m, c0, c1, a, act_stride, yt, y_stride); break;
        default: group_tiles<Type, 8>(wb, reg, nb, k, m, c0, c1, a, act_stride, yt, y_stride); break;
      }
    }
  }
}

static_assert(kPackTokens == 8, "the switch above covers tiles of 1 to 8 tokens");

}  // namespace

#define HEARTH_X86_DEFINE_PACKED_GEMM(t, T)                                                                      \
  void packed_gemm_##t(const void* w, int64_t k, int64_t m, int64_t g0, int64_t g1, const void* xa, size_t act_stride, \
                       int64_t n, float* y, int64_t y_stride) {                                                  \
    gemm<DType::T>(w, k, m, g0, g1, xa, act_stride, n, y, y_stride);                                             \
  }
HEARTH_X86_DEFINE_PACKED_GEMM(q4_0, Q4_0)
HEARTH_X86_DEFINE_PACKED_GEMM(q4_1, Q4_1)
HEARTH_X86_DEFINE_PACKED_GEMM(q5_0, Q5_0)
HEARTH_X86_DEFINE_PACKED_GEMM(q5_1, Q5_1)
HEARTH_X86_DEFINE_PACKED_GEMM(q8_0, Q8_0)
HEARTH_X86_DEFINE_PACKED_GEMM(q4_K, Q4_K)
HEARTH_X86_DEFINE_PACKED_GEMM(q6_K, Q6_K)
#undef HEARTH_X86_DEFINE_PACKED_GEMM

}  // namespace hearth::kernels::x86::avx512
