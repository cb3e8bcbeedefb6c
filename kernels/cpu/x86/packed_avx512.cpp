// The packed-weight matmul on AVX-512 VNNI (layout: kernels/cpu/packed.h). One 16-row group and
// up to kPackTokens tokens at a time: a block's quants are decoded once into eight registers
// (four activation bytes per row and lane each), then for every token eight vpdpbusd with the
// token's four bytes broadcast from memory give the block's 16 integer sums, lane r holding row
// r's; one conversion and one FMA per token and block apply the scales. The arithmetic per lane
// is that of packed_gemm_ref, so a token's result never depends on its company. For the
// 32-element types software prefetches run a fixed distance ahead of the decoding
// (prefetch_stream); the k-quants' one token instead reads its blocks in the order they lie in,
// a few lines at a time in one burst of loads, and leaves the rest to the hardware prefetchers.

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
// super-block. Integer results are exact, so the order of the sums is free. A block is read in
// the order it lies in (packed.h): scales, mins and sub-block mins first, then the quants; one
// token loads each pair of sub-blocks' eight lines in one burst (as Q6_K's units, below), and no
// software prefetches run ahead: kernel_lab DecodeLayers/Q4_K/packed/llama1bx4, Zen 4, one
// thread, four interleaved rounds: 22.6 GB/s with prefetches 8 KiB ahead over the quants-first
// layout, 26.8 without them, 29.0 with the bursts, 30.1 with this order too.
template <int T>
void group_tile_k4(const uint8_t* grp, const PackedRegions& reg, int64_t nb, int64_t k, const uint8_t* xa,
                   size_t act_stride, float* y, int64_t y_stride, __mmask16 rows) {
  const size_t sums_at = static_cast<size_t>(k) + 4 * static_cast<size_t>(nb);
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const auto ub = static_cast<size_t>(b);
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + reg.at(reg.d, 32, ub))));
    const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + reg.at(reg.m, 32, ub))));
    __m512i mn[4];
    for (int q = 0; q < 4; ++q) {
      mn[q] = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + reg.at(reg.mn, 128, ub) + 32 * static_cast<size_t>(q))));
    }
    __m512i total[T];
    for (int t = 0; t < T; ++t) total[t] = _mm512_setzero_si512();
    __m512i line[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const uint8_t* qs = grp + reg.at(reg.qs, reg.qs_block, ub) + 512 * static_cast<size_t>(j / 2);
      if (T == 1 && j % 2 == 0) {  // the asm keeps the loads together, ahead of their uses
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) line[i] = _mm512_loadu_si512(qs + 64 * i);
        asm("" : "+v"(line[0]), "+v"(line[1]), "+v"(line[2]), "+v"(line[3]), "+v"(line[4]), "+v"(line[5]), "+v"(line[6]), "+v"(line[7]));
      }
      __m512i w[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        const __m512i p = T == 1 ? line[i] : _mm512_loadu_si512(qs + 64 * i);
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
// one FMA per token and super-block. Unit by unit (packed.h: a unit's 13 lines hold every bit of
// four sub-blocks), so the lines are read in the order they lie in.
template <int T>
void group_tile_k6(const uint8_t* grp, const PackedRegions& reg, int64_t nb, int64_t k, const uint8_t* xa,
                   size_t act_stride, float* y, int64_t y_stride, __mmask16 rows) {
  const size_t corr_at = static_cast<size_t>(k) + 4 * static_cast<size_t>(nb);
  const __m512i low4 = _mm512_set1_epi8(0x0F), bits45 = _mm512_set1_epi8(0x30);
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const auto ub = static_cast<size_t>(b);
    const uint8_t* units = grp + reg.at(reg.qs, reg.qs_block, ub);
    // Read first: the scales' line leads the block pair's run (packed.h).
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + reg.at(reg.d, 32, ub))));
    __m512i total[T];
    for (int t = 0; t < T; ++t) total[t] = _mm512_setzero_si512();
    // Unrolled: every offset and shift below becomes a constant.
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      const int h = u / 2, half = u % 2;
      const uint8_t* unit = units + q6k_unit(h, half);
      // One token decodes too little per line to hide memory behind its work: the unit's 13
      // lines are loaded in one burst into registers (the asm keeps the compiler from sinking
      // each load to its use or reloading it later), so their misses overlap, and the hardware
      // prefetchers follow the one ascending run. kernel_lab DecodeLayers/Q6_K/packed/llama1bx4,
      // Zen 4, one thread, four interleaved rounds: 23.5 GB/s with software prefetches 8 KiB
      // ahead over the former layout (regions one after the other), 29.2 with this one and
      // bursts through a buffer in L1, 29.9 with the bursts in registers (which also decode from
      // L2 at 55 GB/s, against 46 before); this layout without the bursts 20-23, the former one
      // without prefetches 11.8.
      __m512i line[13];
      if constexpr (T == 1) {
#pragma GCC unroll 13
        for (int l = 0; l < 13; ++l) line[l] = _mm512_loadu_si512(unit + 64 * l);
        asm("" : "+v"(line[0]), "+v"(line[1]), "+v"(line[2]), "+v"(line[3]), "+v"(line[4]), "+v"(line[5]), "+v"(line[6]),
            "+v"(line[7]), "+v"(line[8]), "+v"(line[9]), "+v"(line[10]), "+v"(line[11]), "+v"(line[12]));
      }
      const auto at = [&](size_t offset) __attribute__((always_inline)) {
        if constexpr (T == 1) return line[offset / 64];
        return _mm512_loadu_si512(unit + offset);
      };
#pragma GCC unroll 4
      for (int quarter = 0; quarter < 4; ++quarter) {
        const int j = 8 * h + 2 * quarter + half;
        __m512i w[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          const __m512i lo = at(q6k_ql(16 * h + 8 * (quarter % 2) + 4 * half + i) - q6k_unit(h, half));
          const __m512i hi = at(q6k_qh(8 * h + 4 * half + i) - q6k_unit(h, half));
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
        const size_t sc_at = q6k_sc(j) - q6k_unit(h, half);
        __m128i sc8;
        if constexpr (T == 1) {
          // An immediate lane (a constant once unrolled; the switch keeps unoptimized builds valid).
          static_assert(q6k_sc(2) - q6k_unit(0, 0) == 16, "a unit's first line: its four sub-blocks' scales");
          switch (quarter) {
            case 0: sc8 = _mm512_extracti32x4_epi32(line[0], 0); break;
            case 1: sc8 = _mm512_extracti32x4_epi32(line[0], 1); break;
            case 2: sc8 = _mm512_extracti32x4_epi32(line[0], 2); break;
            default: sc8 = _mm512_extracti32x4_epi32(line[0], 3); break;
          }
        } else {
          sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(unit + sc_at));
        }
        const __m512i sc = _mm512_cvtepi8_epi32(sc8);
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
    }
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
