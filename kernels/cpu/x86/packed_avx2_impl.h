// The packed-weight matmul with 256-bit vectors (layout: kernels/cpu/packed.h), written once and
// compiled per instruction set by the file that includes it, which defines
//   HEARTH_PACKED_NS      the namespace under hearth::kernels::x86 (avx2, avxvnni, avx2_evex)
//   HEARTH_PACKED_DPBUSD  0: AVX2 integer dots (vpmaddubsw + vpmaddwd); 1: AVX-VNNI's VEX
//                         vpdpbusd; 2: the EVEX vpdpbusd of AVX-512 VNNI + VL on ymm (the same
//                         arithmetic as 1, so that it can be tested on a machine without AVX-VNNI)
//
// A 16-row group is two halves of eight rows: the 64 bytes of a k-step hold four bytes of each
// row, so its first 32 bytes are rows 0-7 and the next 32 rows 8-15, one ymm each, lane r
// holding row r's partial sum. Per block and half, the quants are decoded once into registers;
// then every token of a tile (up to kAvx2Tile) runs its products against them with its four
// activation bytes broadcast. The integer sums are exact (bounds below), so the per-lane
// arithmetic is packed_gemm_ref's and a token's result never depends on its company.
//
// Bounds of the AVX2 path (vpmaddubsw saturates each pair sum at int16; activation quants are in
// [-127, 127], the quantizers' range): a pair of 4-bit products is at most 2 x 15 x 127 = 3810,
// so eight k-steps add up in int16 (30480); 5-bit: 7874, four k-steps (31496); 6-bit (Q6_K):
// 16002, two; Q8_0's u8 q + 128 would overflow, so its products are |q| x sign(a, q) (at most
// 2 x 128 x 127 = 32512 each, widened to int32 at once). The sub-block scales of the k-quants
// enter through vpmaddwd against (scale, scale) pairs, which sums and scales in one instruction.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "core/dtype.h"
#include "kernels/cpu/packed.h"
#include "kernels/cpu/x86/packed_x86.h"

#if !defined(HEARTH_PACKED_NS) || !defined(HEARTH_PACKED_DPBUSD)
#error "define HEARTH_PACKED_NS and HEARTH_PACKED_DPBUSD before including packed_avx2_impl.h"
#endif

namespace hearth::kernels::x86::HEARTH_PACKED_NS {
namespace {

constexpr bool kDpbusd = HEARTH_PACKED_DPBUSD != 0;
// How far ahead the ymm kernels prefetch (prefetch_stream; the 32-element types' one token
// decodes each block twice, a half of eight rows at a time; several tokens, every type). Zen 4
// EPYC, one thread, HEARTH_CPU_LEVEL=avx2, kernel_lab DecodeLayers/*/packed/llama1bx4 (one token,
// Q4_K then half by half), GB/s against the layout of regions one after the other with the next
// group's prefetches, three interleaved rounds: Q4_K 23.5 -> 29.9 at 8192; Q4_0 32.4 -> 32.8 and
// Q8_0 30.5 -> 31.4 at 16384 (within the noise). Q6_K's one token prefetches nothing: it reads
// each unit in a burst (group_tile_k6).
constexpr size_t kAheadBlocks = 16384, kAheadK4 = 8192;
// Q4_K's one token (both halves of a block at once, group_tile_k4) prefetches a quarter of each
// block before each pair of sub-blocks, 24 KiB ahead. Zen 4 EPYC, one thread, the avx2 level,
// k 2048 x m 8192 and k 8192 x m 2048 from memory, the kernel's rate against a plain read of as
// many bytes right after each call, variants compiled apart and alternated in one process, three
// runs: the whole block 8 KiB ahead at its start 0.82-0.87 of the read; spread 16 KiB ahead
// 0.89-0.91, 24 KiB 0.91-0.92, 32 KiB 0.90-0.92, 48 KiB 0.89-0.92; one line per k-step 0.69-0.80.
constexpr size_t kAheadK4Token = 24576;
// Tokens per register tile: a half-group's eight decoded registers and the tile's accumulators
// (and int32 totals) share sixteen ymm registers.
constexpr int kAvx2Tile = 4;

[[gnu::always_inline]] inline __m256i dpbusd(__m256i acc, __m256i u8, __m256i s8) {
#if HEARTH_PACKED_DPBUSD == 1
  return _mm256_dpbusd_avx_epi32(acc, u8, s8);
#elif HEARTH_PACKED_DPBUSD == 2
  return _mm256_dpbusd_epi32(acc, u8, s8);
#else
  (void)u8;
  (void)s8;
  return acc;  // never called without vpdpbusd
#endif
}

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
inline __m256i load256(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m128i load128(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline __m128i load64(const uint8_t* p) { return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)); }
inline __m256i bcast32(const uint8_t* p) { return _mm256_set1_epi32(load_i32(p)); }
// Eight f16 -> eight floats.
inline __m256 load_f16x8(const uint8_t* p) { return _mm256_cvtph_ps(load128(p)); }
// Eight bytes -> lanes of (v, v) int16 pairs, unsigned or signed: vpmaddwd's operand that scales
// both int16 halves of a lane by the lane's byte.
inline __m256i pairs_u8(const uint8_t* p) {
  const __m128i b = load64(p);
  return _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(b, b));
}
inline __m256i pairs_i8(const uint8_t* p) {
  const __m128i b = load64(p);
  return _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(b, b));
}
// 32 bits (bit 4 r + c: row r, column c of a k-step) -> 0x10 in the bytes whose bit is set.
inline __m256i fifth_bits(uint32_t bits) {
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int32_t>(bits)),
      _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
}
// Stores the first `rows` (0..8) lanes.
inline void store_rows(float* y, __m256 v, int64_t rows) {
  if (rows >= 8) {
    _mm256_storeu_ps(y, v);
  } else if (rows > 0) {
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rows)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(y, mask, v);
  }
}

template <int T, typename F>
[[gnu::always_inline]] inline void each_token(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) { (f(std::integral_constant<int, I>{}), ...); }(
      std::make_integer_sequence<int, T>{});
}

// Runs block(h, b, acc) over both halves (eight rows each) of a group and every block, then
// stores the tile. Several tokens: one half over all blocks, then the other, so that the
// accumulators of one half and a block's decoded registers fit the sixteen ymm registers (the
// second half reads the group again, from L1 / L2). One token: both halves of a block before
// the next block, so the weights stream from memory once and in order; a half's pass over all
// blocks and then the other's read a group twice, which for one token costs more than the
// registers it saves (kernel_lab DecodeLayers, Zen 4 at the avx2 level: Q8_0 14 -> 24 GB/s).
template <int T, typename Block>
[[gnu::always_inline]] inline void each_half(int64_t nb, float* y, int64_t y_stride, int64_t valid, Block&& block) {
  if constexpr (T == 1) {
    __m256 acc[2][1] = {};
    for (int64_t b = 0; b < nb; ++b) {
      block(0, static_cast<size_t>(b), acc[0]);
      block(1, static_cast<size_t>(b), acc[1]);
    }
    for (int h = 0; h < 2; ++h) store_rows(y + 8 * h, acc[h][0], valid - 8 * h);
  } else {
    for (int h = 0; h < 2; ++h) {
      __m256 acc[T] = {};
      for (int64_t b = 0; b < nb; ++b) block(h, static_cast<size_t>(b), acc);
      for (int t = 0; t < T; ++t) store_rows(y + t * y_stride + 8 * h, acc[t], valid - 8 * h);
    }
  }
}

// The 32-element types.
template <DType Type, int T>
void group_tile(const uint8_t* grp, const PackedRegions& reg, int64_t nb, int64_t k, const uint8_t* xa,
                size_t act_stride, float* y, int64_t y_stride, int64_t valid) {
  constexpr PackedFormat f = packed_format(Type);
  const size_t corr_at = static_cast<size_t>(k) + 4 * static_cast<size_t>(nb);
  const __m256i low4 = _mm256_set1_epi8(0x0F), ones16 = _mm256_set1_epi16(1), flip = _mm256_set1_epi8(static_cast<char>(0x80));
  // One block of one half (eight rows) into acc: the block's eight decoded registers and the
  // tile's accumulators of one half fit the sixteen ymm registers. Inlined into each_half's
  // loop, except for one token of Q8_0 (below).
  const auto block = [&](int h, size_t ub, __m256 (&acc)[T]) __attribute__((always_inline)) {
    const uint8_t* qs = grp + reg.at(reg.qs, reg.qs_block, ub);
    if (h == 0) prefetch_stream<kAheadBlocks>(grp, reg, ub);
    __m256i w[8];
    if constexpr (f.q8) {
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        w[j] = load256(qs + 64 * j + 32 * h);  // q + 128
        if constexpr (!kDpbusd) w[j] = _mm256_xor_si256(w[j], flip);  // q
      }
    } else {
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const __m256i p = load256(qs + 64 * i + 32 * h);
        w[i] = _mm256_and_si256(p, low4);
        w[i + 4] = _mm256_and_si256(_mm256_srli_epi16(p, 4), low4);
      }
      if constexpr (f.has_qh) {
        const uint8_t* qh = grp + reg.at(reg.qh, 64, ub);
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) {
          w[j] = _mm256_or_si256(w[j], fifth_bits(static_cast<uint32_t>(load_u64(qh + 8 * j) >> (32 * h))));
        }
      }
    }
    const __m256 dw = load_f16x8(grp + reg.at(reg.d, 32, ub) + 16 * static_cast<size_t>(h));
    __m256 mw = _mm256_setzero_ps();
    if constexpr (f.has_min) mw = load_f16x8(grp + reg.at(reg.m, 32, ub) + 16 * static_cast<size_t>(h));
    each_token<T>([&]<int t>(std::integral_constant<int, t>) {
      const uint8_t* a = xa + static_cast<size_t>(t) * act_stride;
      const uint8_t* aq = a + 32 * ub;
      __m256i isum;
      if constexpr (kDpbusd) {
        // The stored quants are unsigned (Q8_0 as q + 128); the token's correction starts the
        // first chain, as in the AVX-512 kernel.
        __m256i s0 = f.has_min ? _mm256_setzero_si256() : _mm256_set1_epi32(load_i32(a + corr_at + 4 * ub));
        __m256i s1 = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int j = 0; j < 8; j += 2) {
          s0 = dpbusd(s0, w[j], bcast32(aq + 4 * j));
          s1 = dpbusd(s1, w[j + 1], bcast32(aq + 4 * j + 4));
        }
        isum = _mm256_add_epi32(s0, s1);
      } else if constexpr (f.q8) {
        // sum q a directly: the stored offset and its correction cancel exactly.
        __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int j = 0; j < 8; j += 2) {
          const __m256i a0 = bcast32(aq + 4 * j), a1 = bcast32(aq + 4 * j + 4);
          s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w[j]), _mm256_sign_epi8(a0, w[j])), ones16));
          s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w[j + 1]), _mm256_sign_epi8(a1, w[j + 1])), ones16));
        }
        isum = _mm256_add_epi32(s0, s1);
      } else {
        constexpr int per16 = f.has_qh ? 4 : 8;  // k-steps whose pair sums int16 holds
        __m256i s16[8 / per16];
#pragma GCC unroll 2
        for (int c = 0; c < 8 / per16; ++c) {
          s16[c] = _mm256_maddubs_epi16(w[per16 * c], bcast32(aq + 4 * per16 * c));
#pragma GCC unroll 8
          for (int j = per16 * c + 1; j < per16 * c + per16; ++j) {
            s16[c] = _mm256_add_epi16(s16[c], _mm256_maddubs_epi16(w[j], bcast32(aq + 4 * j)));
          }
        }
        isum = _mm256_madd_epi16(s16[0], ones16);
        if constexpr (per16 == 4) isum = _mm256_add_epi32(isum, _mm256_madd_epi16(s16[1], ones16));
        if constexpr (!f.has_min) isum = _mm256_add_epi32(isum, _mm256_set1_epi32(load_i32(a + corr_at + 4 * ub)));
      }
      const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(load_f32(a + k + 4 * ub)));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[t]);
      if constexpr (f.has_min) acc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(load_f32(a + corr_at + 4 * ub)), acc[t]);
    });
  };
  if constexpr (f.q8 && T == 1) {
    // One token of Q8_0 streams faster with a call per half block than inlined (kernel_lab
    // DecodeLayers, Zen 4 at the avx2 level: 31 GB/s called, 22 inlined), where the 4-bit types
    // gain from inlining (Q4_0 23 -> 30) and so does Q8_0 with several tokens.
    each_half<T>(nb, y, y_stride, valid,
                 [&](int h, size_t ub, __m256 (&acc)[T]) __attribute__((noinline)) { block(h, ub, acc); });
  } else {
    each_half<T>(nb, y, y_stride, valid, block);
  }
}

// Q4_K: per sub-block of 32 the same eight k-steps; on AVX2 the int16 sums meet the sub-block's
// 6-bit scales in vpmaddwd, with vpdpbusd the int32 sums in vpmulld. The mins meet the token's
// sums of 32 in four vpmaddwd (pairs of sub-blocks, the layout's order for vpdpwssd).
//
// One token takes both halves of a block in the same pass: each 64-byte line is read whole and
// gives two sub-blocks (its low and high nibbles), each activation broadcast serves sixteen
// rows, the decoded registers go straight into their products; the lines come in bursts with
// prefetches spread ahead (kAheadK4Token). Zen 4 EPYC, one thread, the avx2 level, kernel_lab
// DecodeLayers/Q4_K/packed/llama1bx4 of_read (its rate over a plain read of as many bytes beside
// it), three alternated runs: 0.76-0.82 half by half with the block's prefetches 8 KiB ahead,
// 0.87-0.91 so.
template <int T>
[[gnu::noinline]] void group_tile_k4(const uint8_t* grp, const PackedRegions& reg, int64_t nb, int64_t k, const uint8_t* xa,
                   size_t act_stride, float* y, int64_t y_stride, int64_t valid) {
  const size_t sums_at = static_cast<size_t>(k) + 4 * static_cast<size_t>(nb);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  if constexpr (T == 1) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const auto ub = static_cast<size_t>(b);
      const uint8_t* qs_block = grp + reg.at(reg.qs, reg.qs_block, ub);
      const uint8_t* sc_block = grp + reg.at(reg.sc, 128, ub);
      __m256i total0 = _mm256_setzero_si256(), total1 = _mm256_setzero_si256();
      // Sub-blocks in pairs: the low nibbles of a line are sub-block 2 p, the high ones 2 p + 1.
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const uint8_t* qs = qs_block + 512 * static_cast<size_t>(p);
        // A quarter of the block kAheadK4Token ahead, spread over the pairs (see kAheadK4Token).
        {
          const uint8_t* from = grp + reg.at(reg.d, 32, ub) + kAheadK4Token;
          const size_t l0 = 640 * static_cast<size_t>(p), l1 = p == 3 ? reg.block : l0 + 640;
          for (size_t line = l0; line < l1; line += 64) _mm_prefetch(reinterpret_cast<const char*>(from + line), _MM_HINT_T2);
        }
        // The pair's eight lines (and, before the first pair, the block's scales and mins) read
        // in one burst, as Q6_K's units (see group_tile_k6): the prefetches above bring them to L2,
        // the burst overlaps their way into L1; the memory clobber keeps GCC from scattering the
        // loads among the products.
        __m256i touched = _mm256_setzero_si256();
        if (p == 0) {
          const uint8_t* head = grp + reg.at(reg.d, 32, ub);
          for (size_t o = 0; o < reg.qs; o += 64) touched = _mm256_or_si256(touched, load256(head + o));
        }
#pragma GCC unroll 8
        for (int l = 0; l < 8; ++l) touched = _mm256_or_si256(touched, load256(qs + 64 * l));
        asm volatile("" : : "x"(touched) : "memory");
        const uint8_t* aq = xa + 256 * ub + 64 * static_cast<size_t>(p);
        const uint8_t* sc = sc_block + 32 * static_cast<size_t>(p);
        // s[n][h]: sub-block 2 p + n, half h.
        __m256i s[2][2] = {};
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) {
          const __m256i line[2] = {load256(qs + 64 * i), load256(qs + 64 * i + 32)};
          for (int n = 0; n < 2; ++n) {
            const __m256i a = bcast32(aq + 32 * n + 4 * i);
            for (int h = 0; h < 2; ++h) {
              const __m256i w = _mm256_and_si256(n == 0 ? line[h] : _mm256_srli_epi16(line[h], 4), low4);
              if constexpr (kDpbusd) {
                s[n][h] = dpbusd(s[n][h], w, a);
              } else {
                s[n][h] = _mm256_add_epi16(s[n][h], _mm256_maddubs_epi16(w, a));
              }
            }
          }
          // The chains in this order: GCC would otherwise gather the products to add them as a
          // tree, spilling them (kernel_lab: from L2 38.5 -> 40.5 GB/s).
          asm("" : "+x"(s[0][0]), "+x"(s[0][1]), "+x"(s[1][0]), "+x"(s[1][1]));
        }
        for (int h = 0; h < 2; ++h) {
          __m256i& total = h == 0 ? total0 : total1;
          for (int n = 0; n < 2; ++n) {
            const uint8_t* scale = sc + 16 * n + 8 * h;
            if constexpr (kDpbusd) {
              total = _mm256_add_epi32(total, _mm256_mullo_epi32(s[n][h], _mm256_cvtepu8_epi32(load64(scale))));
            } else {
              total = _mm256_add_epi32(total, _mm256_madd_epi16(s[n][h], pairs_u8(scale)));
            }
          }
        }
        asm("" : "+x"(total0), "+x"(total1));
      }
      // The mins against the token's sums of 32, shared by both halves.
      const uint8_t* sums = xa + sums_at + 16 * ub;
      const uint8_t* mn = grp + reg.at(reg.mn, 128, ub);
      __m256i msum0 = _mm256_setzero_si256(), msum1 = msum0;
      for (int q = 0; q < 4; ++q) {
        const __m256i s = bcast32(sums + 4 * q);
        msum0 = _mm256_add_epi32(msum0, _mm256_madd_epi16(_mm256_cvtepu8_epi16(load128(mn + 32 * static_cast<size_t>(q))), s));
        msum1 = _mm256_add_epi32(msum1, _mm256_madd_epi16(_mm256_cvtepu8_epi16(load128(mn + 32 * static_cast<size_t>(q) + 16)), s));
      }
      const uint8_t* d = grp + reg.at(reg.d, 32, ub);
      const uint8_t* dmin = grp + reg.at(reg.m, 32, ub);
      const __m256 dx = _mm256_set1_ps(load_f32(xa + k + 4 * ub));
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total0), _mm256_mul_ps(load_f16x8(d), dx), acc0);
      acc0 = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum0), _mm256_mul_ps(load_f16x8(dmin), dx), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total1), _mm256_mul_ps(load_f16x8(d + 16), dx), acc1);
      acc1 = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum1), _mm256_mul_ps(load_f16x8(dmin + 16), dx), acc1);
    }
    store_rows(y, acc0, valid);
    store_rows(y + 8, acc1, valid - 8);
    return;
  }
  // One super-block of one half (eight rows) into acc (see group_tile).
  const auto block = [&](int h, size_t ub, __m256 (&acc)[T]) __attribute__((always_inline)) {
    if (h == 0) prefetch_stream<kAheadK4>(grp, reg, ub);
    const auto uh = static_cast<size_t>(h);
    __m256i total[T];
    for (int t = 0; t < T; ++t) total[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const uint8_t* qs = grp + reg.at(reg.qs, reg.qs_block, ub) + 512 * static_cast<size_t>(j / 2) + 32 * uh;
      __m256i w[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        const __m256i p = load256(qs + 64 * i);
        w[i] = _mm256_and_si256(j % 2 == 0 ? p : _mm256_srli_epi16(p, 4), low4);
      }
      const uint8_t* sc = grp + reg.at(reg.sc, 128, ub) + 16 * static_cast<size_t>(j) + 8 * uh;
      if constexpr (kDpbusd) {
        const __m256i sc32 = _mm256_cvtepu8_epi32(load64(sc));
        each_token<T>([&]<int t>(std::integral_constant<int, t>) {
          const uint8_t* aq = xa + static_cast<size_t>(t) * act_stride + 256 * ub + 32 * static_cast<size_t>(j);
          __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
#pragma GCC unroll 8
          for (int i = 0; i < 8; i += 2) {
            s0 = dpbusd(s0, w[i], bcast32(aq + 4 * i));
            s1 = dpbusd(s1, w[i + 1], bcast32(aq + 4 * i + 4));
          }
          total[t] = _mm256_add_epi32(total[t], _mm256_mullo_epi32(_mm256_add_epi32(s0, s1), sc32));
        });
      } else {
        const __m256i scp = pairs_u8(sc);
        each_token<T>([&]<int t>(std::integral_constant<int, t>) {
          const uint8_t* aq = xa + static_cast<size_t>(t) * act_stride + 256 * ub + 32 * static_cast<size_t>(j);
          __m256i s16 = _mm256_maddubs_epi16(w[0], bcast32(aq));
#pragma GCC unroll 8
          for (int i = 1; i < 8; ++i) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[i], bcast32(aq + 4 * i)));
          total[t] = _mm256_add_epi32(total[t], _mm256_madd_epi16(s16, scp));
        });
      }
    }
    const __m256 dw = load_f16x8(grp + reg.at(reg.d, 32, ub) + 16 * uh);
    const __m256 dmin = load_f16x8(grp + reg.at(reg.m, 32, ub) + 16 * uh);
    __m256i mn[4];
    for (int q = 0; q < 4; ++q) mn[q] = _mm256_cvtepu8_epi16(load128(grp + reg.at(reg.mn, 128, ub) + 32 * static_cast<size_t>(q) + 16 * uh));
    each_token<T>([&]<int t>(std::integral_constant<int, t>) {
      const uint8_t* a = xa + static_cast<size_t>(t) * act_stride;
      const uint8_t* sums = a + sums_at + 16 * ub;
      __m256i msum = _mm256_madd_epi16(mn[0], bcast32(sums));
      for (int q = 1; q < 4; ++q) msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mn[q], bcast32(sums + 4 * q)));
      const __m256 dx = _mm256_set1_ps(load_f32(a + k + 4 * ub));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total[t]), _mm256_mul_ps(dw, dx), acc[t]);
      acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dmin, dx), acc[t]);
    });
  };
  each_half<T>(nb, y, y_stride, valid, block);
}

// Q6_K on AVX2: the int16 pairs (scale_2q, scale_2q+1) of eight rows (units: a block's slot,
// plus 8 for rows 8-15), for vpmaddwd against q6k_negated_sums.
inline __m256i q6k_scale_pairs(const uint8_t* units, int q) {
  return _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(load64(units + q6k_sc(2 * q)), load64(units + q6k_sc(2 * q + 1))));
}
// A token's int32 corrections of a block (-32 x the sum of each 16 quants) -> int16 -sum_0 ..
// -sum_15 in order (exact: the corrections are multiples of 32, |sum| <= 16 x 127).
inline __m256i q6k_negated_sums(const uint8_t* corr) {
  const __m256i neg0 = _mm256_srai_epi32(load256(corr), 5), neg1 = _mm256_srai_epi32(load256(corr + 32), 5);
  return _mm256_permute4x64_epi64(_mm256_packs_epi32(neg0, neg1), 0xD8);
}

// Q6_K: per sub-block of 16, four k-steps. With vpdpbusd each chain starts at the token's
// -32 x sum of the 16 quants and the sum meets the int8 scale in vpmulld (as the AVX-512
// kernel). On AVX2 the two int16 pair sums meet the scales in vpmaddwd, and the -32 offset is
// added once per super-block: sum_j scale_j (-32 sum_j) = 32 sum over pairs of sub-blocks of
// vpmaddwd((scale_2q, scale_2q+1), (-sum_2q, -sum_2q+1)), the sums recovered exactly from the
// token's int32 corrections by an arithmetic shift.
//
// One token takes both halves of a block in the same pass, as Q4_K's (kernel_lab
// DecodeLayers/Q6_K/packed/llama1bx4 of_read, measured as there: 0.75-0.78 half by half,
// 0.83-0.85 so). It reads each unit's 13 lines (and, before the first, the block pair's d line)
// in one burst, so that their misses overlap; the decoding then finds them in L1. Without the
// burst 0.61-0.69 of the read; with it but without the memory clobber that keeps its loads
// together, 0.59-0.66 at k 8192; with prefetches 8-32 KiB ahead besides, no better (0.79-0.90
// against 0.86-0.92, and once 0.65). (Half by half, GB/s from memory: 25.1 against 22.0 with software
// prefetches 16 KiB ahead over the former layout, 14.2 with those over this one, 17.1 with both,
// 7.4 with the whole block in one burst.)
template <int T>
[[gnu::noinline]] void group_tile_k6(const uint8_t* grp, const PackedRegions& reg, int64_t nb, int64_t k, const uint8_t* xa,
                   size_t act_stride, float* y, int64_t y_stride, int64_t valid) {
  const size_t corr_at = static_cast<size_t>(k) + 4 * static_cast<size_t>(nb);
  const __m256i low4 = _mm256_set1_epi8(0x0F), bits45 = _mm256_set1_epi8(0x30);
  // The quants of quarter q (0..3) of a line pair: low nibble or high nibble of the ql line, the
  // quarter's two bits of the qh line shifted by a constant to bits 4-5.
  // (quarter is a constant once the loops that call this are unrolled.)
  const auto decode = [&](int quarter, __m256i lo, __m256i hi) __attribute__((always_inline)) {
    const __m256i low = _mm256_and_si256(quarter / 2 == 0 ? lo : _mm256_srli_epi16(lo, 4), low4);
    const __m256i moved = quarter == 0   ? _mm256_slli_epi16(hi, 4)
                          : quarter == 1 ? _mm256_slli_epi16(hi, 2)
                          : quarter == 2 ? hi
                                         : _mm256_srli_epi16(hi, 2);
    return _mm256_or_si256(low, _mm256_and_si256(moved, bits45));
  };
  if constexpr (T == 1) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const auto ub = static_cast<size_t>(b);
      const uint8_t* units = grp + reg.at(reg.qs, reg.qs_block, ub);
      const uint8_t* corr = xa + corr_at + 64 * ub;
      __m256i total0 = _mm256_setzero_si256(), total1 = _mm256_setzero_si256();
      // Unrolled: every offset and shift below becomes a constant.
#pragma GCC unroll 16
      for (int jj = 0; jj < 16; ++jj) {
        const int hh = jj / 8, half = jj / 4 % 2, quarter = jj % 4, j = 8 * hh + 2 * quarter + half;
        if (quarter == 0) {
          const uint8_t* unit = units + q6k_unit(hh, half);
          __m256i touched = hh == 0 && half == 0 ? load256(grp + reg.at(reg.d, 32, ub)) : _mm256_setzero_si256();
#pragma GCC unroll 13
          for (int l = 0; l < 13; ++l) touched = _mm256_or_si256(touched, load256(unit + 64 * l));
          asm volatile("" : : "x"(touched) : "memory");
        }
        const uint8_t* aq = xa + 256 * ub + 16 * static_cast<size_t>(j);
        // Two chains per half (k-steps 0-1 and 2-3: two int16 pair sums of 6-bit products fit).
        __m256i s0a = _mm256_setzero_si256(), s0b = s0a, s1a = s0a, s1b = s0a;
        if constexpr (kDpbusd) s0a = s1a = _mm256_set1_epi32(load_i32(corr + 4 * static_cast<size_t>(j)));
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          const uint8_t* lo = units + q6k_ql(16 * hh + 8 * (quarter % 2) + 4 * half + i);
          const uint8_t* hi = units + q6k_qh(8 * hh + 4 * half + i);
          const __m256i a = bcast32(aq + 4 * i);
          const __m256i w0 = decode(quarter, load256(lo), load256(hi)), w1 = decode(quarter, load256(lo + 32), load256(hi + 32));
          __m256i& s0 = (kDpbusd ? i % 2 == 0 : i < 2) ? s0a : s0b;
          __m256i& s1 = (kDpbusd ? i % 2 == 0 : i < 2) ? s1a : s1b;
          if constexpr (kDpbusd) {
            s0 = dpbusd(s0, w0, a);
            s1 = dpbusd(s1, w1, a);
          } else {
            s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(w0, a));
            s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(w1, a));
          }
          asm("" : "+x"(s0a), "+x"(s0b), "+x"(s1a), "+x"(s1b));
        }
        const uint8_t* sc = units + q6k_sc(j);
        if constexpr (kDpbusd) {
          total0 = _mm256_add_epi32(total0, _mm256_mullo_epi32(_mm256_add_epi32(s0a, s0b), _mm256_cvtepi8_epi32(load64(sc))));
          total1 = _mm256_add_epi32(total1, _mm256_mullo_epi32(_mm256_add_epi32(s1a, s1b), _mm256_cvtepi8_epi32(load64(sc + 8))));
        } else {
          const __m256i scp0 = pairs_i8(sc), scp1 = pairs_i8(sc + 8);
          total0 = _mm256_add_epi32(total0, _mm256_add_epi32(_mm256_madd_epi16(s0a, scp0), _mm256_madd_epi16(s0b, scp0)));
          total1 = _mm256_add_epi32(total1, _mm256_add_epi32(_mm256_madd_epi16(s1a, scp1), _mm256_madd_epi16(s1b, scp1)));
        }
        // Sums in this order: GCC would otherwise gather the products of all sixteen to add them
        // as a tree at the end, spilling them.
        asm("" : "+x"(total0), "+x"(total1));
      }
      if constexpr (!kDpbusd) {
        // The offset's share (see below), the token's sums shared by both halves.
        const __m256i neg = q6k_negated_sums(corr);
        __m256i off0 = _mm256_setzero_si256(), off1 = off0;
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q) {
          const __m256i nq = _mm256_permutevar8x32_epi32(neg, _mm256_set1_epi32(q));
          off0 = _mm256_add_epi32(off0, _mm256_madd_epi16(q6k_scale_pairs(units, q), nq));
          off1 = _mm256_add_epi32(off1, _mm256_madd_epi16(q6k_scale_pairs(units + 8, q), nq));
        }
        total0 = _mm256_add_epi32(total0, _mm256_slli_epi32(off0, 5));
        total1 = _mm256_add_epi32(total1, _mm256_slli_epi32(off1, 5));
      }
      const uint8_t* d = grp + reg.at(reg.d, 32, ub);
      const __m256 dx = _mm256_set1_ps(load_f32(xa + k + 4 * ub));
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total0), _mm256_mul_ps(load_f16x8(d), dx), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total1), _mm256_mul_ps(load_f16x8(d + 16), dx), acc1);
    }
    store_rows(y, acc0, valid);
    store_rows(y + 8, acc1, valid - 8);
    return;
  }
  // One super-block of one half (eight rows) into acc (see group_tile).
  const auto block = [&](int h, size_t ub, __m256 (&acc)[T]) __attribute__((always_inline)) {
    const uint8_t* units = grp + reg.at(reg.qs, reg.qs_block, ub);
    const auto uh = static_cast<size_t>(h);
    __m256i total[T];
    for (int t = 0; t < T; ++t) total[t] = _mm256_setzero_si256();
    // Unrolled: every offset and shift below becomes a constant.
#pragma GCC unroll 16
    for (int jj = 0; jj < 16; ++jj) {
      const int hh = jj / 8, half = jj / 4 % 2, quarter = jj % 4, j = 8 * hh + 2 * quarter + half;
      __m256i w[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const __m256i lo = load256(units + q6k_ql(16 * hh + 8 * (quarter % 2) + 4 * half + i) + 32 * uh);
        const __m256i hi = load256(units + q6k_qh(8 * hh + 4 * half + i) + 32 * uh);
        w[i] = decode(quarter, lo, hi);
      }
      const uint8_t* sc = units + q6k_sc(j) + 8 * uh;
      if constexpr (kDpbusd) {
        const __m256i sc32 = _mm256_cvtepi8_epi32(load64(sc));
        each_token<T>([&]<int t>(std::integral_constant<int, t>) {
          const uint8_t* a = xa + static_cast<size_t>(t) * act_stride;
          const uint8_t* aq = a + 256 * ub + 16 * static_cast<size_t>(j);
          __m256i s0 = _mm256_set1_epi32(load_i32(a + corr_at + 64 * ub + 4 * static_cast<size_t>(j)));
          __m256i s1 = _mm256_setzero_si256();
          s0 = dpbusd(s0, w[0], bcast32(aq));
          s1 = dpbusd(s1, w[1], bcast32(aq + 4));
          s0 = dpbusd(s0, w[2], bcast32(aq + 8));
          s1 = dpbusd(s1, w[3], bcast32(aq + 12));
          total[t] = _mm256_add_epi32(total[t], _mm256_mullo_epi32(_mm256_add_epi32(s0, s1), sc32));
        });
      } else {
        const __m256i scp = pairs_i8(sc);
        each_token<T>([&]<int t>(std::integral_constant<int, t>) {
          const uint8_t* aq = xa + static_cast<size_t>(t) * act_stride + 256 * ub + 16 * static_cast<size_t>(j);
          const __m256i s0 = _mm256_add_epi16(_mm256_maddubs_epi16(w[0], bcast32(aq)), _mm256_maddubs_epi16(w[1], bcast32(aq + 4)));
          const __m256i s1 = _mm256_add_epi16(_mm256_maddubs_epi16(w[2], bcast32(aq + 8)), _mm256_maddubs_epi16(w[3], bcast32(aq + 12)));
          total[t] = _mm256_add_epi32(total[t], _mm256_add_epi32(_mm256_madd_epi16(s0, scp), _mm256_madd_epi16(s1, scp)));
        });
      }
    }
    // After the quants (integer sums: the order is free), so the block is read in its order.
    if constexpr (!kDpbusd) {
      // The offset's share: vpmaddwd of (scale_2q, scale_2q+1) lane pairs with the token's
      // (-sum_2q, -sum_2q+1), times 32.
      __m256i scq[8];
#pragma GCC unroll 8
      for (int q = 0; q < 8; ++q) scq[q] = q6k_scale_pairs(units + 8 * uh, q);
      each_token<T>([&]<int t>(std::integral_constant<int, t>) {
        const __m256i neg = q6k_negated_sums(xa + static_cast<size_t>(t) * act_stride + corr_at + 64 * ub);
        __m256i off = _mm256_madd_epi16(scq[0], _mm256_permutevar8x32_epi32(neg, _mm256_setzero_si256()));
        for (int q = 1; q < 8; ++q) {
          off = _mm256_add_epi32(off, _mm256_madd_epi16(scq[q], _mm256_permutevar8x32_epi32(neg, _mm256_set1_epi32(q))));
        }
        total[t] = _mm256_add_epi32(total[t], _mm256_slli_epi32(off, 5));
      });
    }
    const __m256 dw = load_f16x8(grp + reg.at(reg.d, 32, ub) + 16 * uh);
    for (int t = 0; t < T; ++t) {
      const __m256 dx = _mm256_set1_ps(load_f32(xa + static_cast<size_t>(t) * act_stride + k + 4 * ub));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total[t]), _mm256_mul_ps(dw, dx), acc[t]);
    }
  };
  each_half<T>(nb, y, y_stride, valid, block);
}

template <DType Type, int T>
void group_tiles(const uint8_t* w, const PackedRegions& reg, int64_t nb, int64_t k, int64_t m, int64_t g0, int64_t g1,
                 const uint8_t* xa, size_t act_stride, float* y, int64_t y_stride) {
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t row0 = g * kPackRows;
    const int64_t valid = std::min<int64_t>(kPackRows, m - row0);
    const uint8_t* grp = w + static_cast<size_t>(g) * reg.total;
    if constexpr (packed_format(Type).k4) {
      group_tile_k4<T>(grp, reg, nb, k, xa, act_stride, y + row0, y_stride, valid);
    } else if constexpr (packed_format(Type).k6) {
      group_tile_k6<T>(grp, reg, nb, k, xa, act_stride, y + row0, y_stride, valid);
    } else {
      group_tile<Type, T>(grp, reg, nb, k, xa, act_stride, y + row0, y_stride, valid);
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
  // Groups in chunks of about 256 KiB that stay in L2 while every tile of tokens passes.
  const int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>((256u << 10) / reg.total));
  for (int64_t c0 = g0; c0 < g1; c0 += chunk) {
    const int64_t c1 = std::min(g1, c0 + chunk);
    // Tiles as even as possible (5 tokens: 3 + 2, not 4 + 1).
    const int64_t tiles = (n + kAvx2Tile - 1) / kAvx2Tile;
    for (int64_t i = 0, t0 = 0; i < tiles; ++i) {
      const int64_t size = n / tiles + (i < n % tiles ? 1 : 0);
      const uint8_t* a = ab + static_cast<size_t>(t0) * act_stride;
      float* yt = y + t0 * y_stride;
      t0 += size;
      switch (size) {
        case 1: group_tiles<Type, 1>(wb, reg, nb, k, m, c0, c1, a, act_stride, yt, y_stride); break;
        case 2: group_tiles<Type, 2>(wb, reg, nb, k, m, c0, c1, a, act_stride, yt, y_stride); break;
        case 3: group_tiles<Type, 3>(wb, reg, nb, k, m, c0, c1, a, act_stride, yt, y_stride); break;
        default: group_tiles<Type, 4>(wb, reg, nb, k, m, c0, c1, a, act_stride, yt, y_stride); break;
      }
    }
  }
}

static_assert(kAvx2Tile == 4, "the switch above covers tiles of 1 to 4 tokens");

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

}  // namespace hearth::kernels::x86::HEARTH_PACKED_NS
