// The x86 kernels of the non-matmul ops, written once and compiled once per level:
// ops_avx2.cpp and ops_avx512.cpp define HEARTH_X86_NS (the namespace) and HEARTH_X86_AVX512
// (1: masked loads and stores for the tails), then include this file. Include it nowhere else.
// Contracts: kernels/cpu/ops_simd.h.
//
// Everything is 256-bit (8 float lanes) at both levels; the AVX-512 build gets 32 registers
// and masked tails. Helpers stay in an anonymous namespace and only intrinsics and libm are
// called, so no inline function compiled with these flags can be picked by the linker for
// baseline code.
#include <immintrin.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/ops_simd.h"
#include "kernels/cpu/x86/ops_x86.h"

#if !defined(HEARTH_X86_NS) || !defined(HEARTH_X86_AVX512)
#error "define HEARTH_X86_NS and HEARTH_X86_AVX512 before including ops_x86_impl.h"
#endif

namespace hearth::kernels::x86::HEARTH_X86_NS {
namespace {

constexpr int kLanes = 8;

// --- loads and stores ------------------------------------------------------------------------

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// The first n (0 < n < 8) values at p, `fill` in the other lanes; reads only those n.
inline __m256 load_part(const float* p, int n, float fill = 0.0f) {
#if HEARTH_X86_AVX512
  return _mm256_mask_loadu_ps(_mm256_set1_ps(fill), static_cast<__mmask8>((1u << n) - 1), p);
#else
  alignas(32) float buf[kLanes] = {fill, fill, fill, fill, fill, fill, fill, fill};
  std::memcpy(buf, p, static_cast<size_t>(n) * sizeof(float));
  return _mm256_load_ps(buf);
#endif
}
inline __m256 load_part(const uint16_t* p, int n) {
#if HEARTH_X86_AVX512
  return _mm256_cvtph_ps(_mm_maskz_loadu_epi16(static_cast<__mmask8>((1u << n) - 1), p));
#else
  alignas(16) uint16_t buf[kLanes] = {};
  std::memcpy(buf, p, static_cast<size_t>(n) * sizeof(uint16_t));
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(buf)));
#endif
}
inline void store_part(float* p, __m256 v, int n) {
#if HEARTH_X86_AVX512
  _mm256_mask_storeu_ps(p, static_cast<__mmask8>((1u << n) - 1), v);
#else
  alignas(32) float buf[kLanes];
  _mm256_store_ps(buf, v);
  std::memcpy(p, buf, static_cast<size_t>(n) * sizeof(float));
#endif
}

// --- reductions ------------------------------------------------------------------------------

// Lane r of the result = the sum of the eight lanes of a[r], by the same tree for every r:
// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
inline __m256 reduce8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
  const __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
  const __m256 t2 = _mm256_hadd_ps(a4, a5), t3 = _mm256_hadd_ps(a6, a7);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

inline double hsum(__m256d v) {
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// --- exp ---------------------------------------------------------------------------------------

// e^x for every float x, within 2 ulp of the correctly rounded value for normal results (tested
// against double precision); subnormal results round once; +inf above ~88.72, 0 below ~-103.9,
// NaN stays NaN. x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, Cody-Waite), e^r by the
// degree-7 polynomial of Cephes' expf, then 2^n applied as two normal powers of two so the only
// rounding of the scaling is the last multiply.
inline __m256 exp8(__m256 x) {
  // Operand order keeps a NaN x (maxps/minps return the second operand when one is NaN).
  x = _mm256_min_ps(_mm256_set1_ps(88.8f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
  p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
  const __m256i ni = _mm256_cvttps_epi32(n);  // integral already; -150..128
  const __m256i n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

inline __m256 round_f16_8(__m256 x) {
  return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// --- attention -------------------------------------------------------------------------------

// Scores of q against rows in groups of eight: accumulator r sums q[d] * row_r[d] with lane l
// taking d = l, l + 8, ... in order (a tail of head_dim % 8 values enters as one more vector,
// zero beyond head_dim), then reduce8. The last group repeats its last row to fill eight
// accumulators and drops the copies, so a score never depends on which rows share its group.
template <class T>
void qk_rows(const float* q, const T* k, size_t stride, int64_t n, int64_t head_dim, float* scores) {
  const int64_t full = head_dim / kLanes * kLanes;
  const int rem = static_cast<int>(head_dim - full);
  const __m256 q_tail = rem != 0 ? load_part(q + full, rem) : _mm256_setzero_ps();
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    const T* r[kLanes];
#pragma GCC unroll 8
    for (int i = 0; i < kLanes; ++i) r[i] = k + static_cast<size_t>(j0 + i < n ? j0 + i : n - 1) * stride;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t c = 0; c < full; c += kLanes) {
      const __m256 qc = _mm256_loadu_ps(q + c);
      a0 = _mm256_fmadd_ps(qc, load8(r[0] + c), a0);
      a1 = _mm256_fmadd_ps(qc, load8(r[1] + c), a1);
      a2 = _mm256_fmadd_ps(qc, load8(r[2] + c), a2);
      a3 = _mm256_fmadd_ps(qc, load8(r[3] + c), a3);
      a4 = _mm256_fmadd_ps(qc, load8(r[4] + c), a4);
      a5 = _mm256_fmadd_ps(qc, load8(r[5] + c), a5);
      a6 = _mm256_fmadd_ps(qc, load8(r[6] + c), a6);
      a7 = _mm256_fmadd_ps(qc, load8(r[7] + c), a7);
    }
    if (rem != 0) {
      a0 = _mm256_fmadd_ps(q_tail, load_part(r[0] + full, rem), a0);
      a1 = _mm256_fmadd_ps(q_tail, load_part(r[1] + full, rem), a1);
      a2 = _mm256_fmadd_ps(q_tail, load_part(r[2] + full, rem), a2);
      a3 = _mm256_fmadd_ps(q_tail, load_part(r[3] + full, rem), a3);
      a4 = _mm256_fmadd_ps(q_tail, load_part(r[4] + full, rem), a4);
      a5 = _mm256_fmadd_ps(q_tail, load_part(r[5] + full, rem), a5);
      a6 = _mm256_fmadd_ps(q_tail, load_part(r[6] + full, rem), a6);
      a7 = _mm256_fmadd_ps(q_tail, load_part(r[7] + full, rem), a7);
    }
    const __m256 s = reduce8(a0, a1, a2, a3, a4, a5, a6, a7);
    if (j0 + kLanes <= n) {
      _mm256_storeu_ps(scores + j0, s);
    } else {
      store_part(scores + j0, s, static_cast<int>(n - j0));
    }
  }
}

// q8_0 scores, rows in groups of eight as in qk_rows: per block, lane l of row r's accumulator
// gains float(q[4l..4l+3] . row_r[4l..4l+3]) * (d_q * d_r) (maddubs on |q| and row * sign(q):
// both in [-127, 127], so no pair sum saturates), then reduce8.
constexpr size_t kQ8Block = 34;  // f16 d, then 32 int8 q (core/quant_blocks.h's BlockQ8_0)
inline float q8_scale(const uint8_t* block) {
  uint16_t bits;
  std::memcpy(&bits, block, sizeof bits);
  return _cvtsh_ss(bits);
}
inline __m256i q8_values(const uint8_t* block) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 2)); }

void qk_q8_rows(const void* q, const void* k, size_t stride, int64_t n, int64_t head_dim, float* scores) {
  const auto* qb = static_cast<const uint8_t*>(q);
  const auto* kb = static_cast<const uint8_t*>(k);
  const int64_t blocks = head_dim / 32;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    const uint8_t* r[kLanes];
#pragma GCC unroll 8
    for (int i = 0; i < kLanes; ++i) r[i] = kb + static_cast<size_t>(j0 + i < n ? j0 + i : n - 1) * stride * kQ8Block;
    __m256 a[kLanes];
#pragma GCC unroll 8
    for (int i = 0; i < kLanes; ++i) a[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
      const size_t at = static_cast<size_t>(b) * kQ8Block;
      const __m256i qv = q8_values(qb + at);
      const __m256i q_abs = _mm256_sign_epi8(qv, qv);
      const float dq = q8_scale(qb + at);
#pragma GCC unroll 8
      for (int i = 0; i < kLanes; ++i) {
        const __m256i pairs = _mm256_maddubs_epi16(q_abs, _mm256_sign_epi8(q8_values(r[i] + at), qv));
        const __m256 sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        a[i] = _mm256_fmadd_ps(sums, _mm256_set1_ps(dq * q8_scale(r[i] + at)), a[i]);
      }
    }
    const __m256 s = reduce8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
    if (j0 + kLanes <= n) {
      _mm256_storeu_ps(scores + j0, s);
    } else {
      store_part(scores + j0, s, static_cast<int>(n - j0));
    }
  }
}

// out[c, c + 8 * A) += p[j] * row_j[...] for every row, one fused multiply-add per element and row.
template <int A, class T>
inline void pv_chunk(const float* p, const T* v, size_t stride, int64_t n, float* out) {
  __m256 acc[A];
#pragma GCC unroll 8
  for (int a = 0; a < A; ++a) acc[a] = _mm256_loadu_ps(out + a * kLanes);
  for (int64_t j = 0; j < n; ++j) {
    const __m256 pj = _mm256_broadcast_ss(p + j);
    const T* row = v + static_cast<size_t>(j) * stride;
#pragma GCC unroll 8
    for (int a = 0; a < A; ++a) acc[a] = _mm256_fmadd_ps(pj, load8(row + a * kLanes), acc[a]);
  }
#pragma GCC unroll 8
  for (int a = 0; a < A; ++a) _mm256_storeu_ps(out + a * kLanes, acc[a]);
}

template <class T>
void pv_rows(const float* p, const T* v, size_t stride, int64_t n, int64_t head_dim, float* out) {
  int64_t c = 0;
  for (; c + 8 * kLanes <= head_dim; c += 8 * kLanes) pv_chunk<8>(p, v + c, stride, n, out + c);
  for (; c + kLanes <= head_dim; c += kLanes) pv_chunk<1>(p, v + c, stride, n, out + c);
  if (c < head_dim) {
    const int rem = static_cast<int>(head_dim - c);
    __m256 acc = load_part(out + c, rem);
    for (int64_t j = 0; j < n; ++j) {
      acc = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), load_part(v + static_cast<size_t>(j) * stride + c, rem), acc);
    }
    store_part(out + c, acc, rem);
  }
}

// Two queries over the same rows, four rows at a time: each row chunk is loaded (and widened)
// once for both. Accumulators (q0, row r) and (q1, row r) do exactly what qk_rows does for them,
// and reduce8 sums every accumulator by the same tree, so the scores are qk_rows' bits.
template <class T>
void qk2_rows(const float* q0, const float* q1, const T* k, size_t stride, int64_t n, int64_t head_dim, float* s0,
              float* s1) {
  const int64_t full = head_dim / kLanes * kLanes;
  const int rem = static_cast<int>(head_dim - full);
  const __m256 q0_tail = rem != 0 ? load_part(q0 + full, rem) : _mm256_setzero_ps();
  const __m256 q1_tail = rem != 0 ? load_part(q1 + full, rem) : _mm256_setzero_ps();
  for (int64_t j0 = 0; j0 < n; j0 += 4) {
    const T* r[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) r[i] = k + static_cast<size_t>(j0 + i < n ? j0 + i : n - 1) * stride;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int64_t c = 0; c < full; c += kLanes) {
      const __m256 x0 = _mm256_loadu_ps(q0 + c), x1 = _mm256_loadu_ps(q1 + c);
      const __m256 k0 = load8(r[0] + c), k1 = load8(r[1] + c), k2 = load8(r[2] + c), k3 = load8(r[3] + c);
      a0 = _mm256_fmadd_ps(x0, k0, a0);
      b0 = _mm256_fmadd_ps(x1, k0, b0);
      a1 = _mm256_fmadd_ps(x0, k1, a1);
      b1 = _mm256_fmadd_ps(x1, k1, b1);
      a2 = _mm256_fmadd_ps(x0, k2, a2);
      b2 = _mm256_fmadd_ps(x1, k2, b2);
      a3 = _mm256_fmadd_ps(x0, k3, a3);
      b3 = _mm256_fmadd_ps(x1, k3, b3);
    }
    if (rem != 0) {
      const __m256 k0 = load_part(r[0] + full, rem), k1 = load_part(r[1] + full, rem);
      const __m256 k2 = load_part(r[2] + full, rem), k3 = load_part(r[3] + full, rem);
      a0 = _mm256_fmadd_ps(q0_tail, k0, a0);
      b0 = _mm256_fmadd_ps(q1_tail, k0, b0);
      a1 = _mm256_fmadd_ps(q0_tail, k1, a1);
      b1 = _mm256_fmadd_ps(q1_tail, k1, b1);
      a2 = _mm256_fmadd_ps(q0_tail, k2, a2);
      b2 = _mm256_fmadd_ps(q1_tail, k2, b2);
      a3 = _mm256_fmadd_ps(q0_tail, k3, a3);
      b3 = _mm256_fmadd_ps(q1_tail, k3, b3);
    }
    const __m256 s = reduce8(a0, a1, a2, a3, b0, b1, b2, b3);  // q0's four scores, then q1's
    if (j0 + 4 <= n) {
      _mm_storeu_ps(s0 + j0, _mm256_castps256_ps128(s));
      _mm_storeu_ps(s1 + j0, _mm256_extractf128_ps(s, 1));
    } else {
      alignas(32) float buf[kLanes];
      _mm256_store_ps(buf, s);
      const size_t count = static_cast<size_t>(n - j0);
      std::memcpy(s0 + j0, buf, count * sizeof(float));
      std::memcpy(s1 + j0, buf + 4, count * sizeof(float));
    }
  }
}

// pv_chunk for two queries: each row chunk loaded once, one multiply-add per element, query and row.
template <int A, class T>
inline void pv2_chunk(const float* p0, const float* p1, const T* v, size_t stride, int64_t n, float* out0,
                      float* out1) {
  __m256 acc0[A], acc1[A];
#pragma GCC unroll 4
  for (int a = 0; a < A; ++a) {
    acc0[a] = _mm256_loadu_ps(out0 + a * kLanes);
    acc1[a] = _mm256_loadu_ps(out1 + a * kLanes);
  }
  for (int64_t j = 0; j < n; ++j) {
    const __m256 x0 = _mm256_broadcast_ss(p0 + j), x1 = _mm256_broadcast_ss(p1 + j);
    const T* row = v + static_cast<size_t>(j) * stride;
#pragma GCC unroll 4
    for (int a = 0; a < A; ++a) {
      const __m256 x = load8(row + a * kLanes);
      acc0[a] = _mm256_fmadd_ps(x0, x, acc0[a]);
      acc1[a] = _mm256_fmadd_ps(x1, x, acc1[a]);
    }
  }
#pragma GCC unroll 4
  for (int a = 0; a < A; ++a) {
    _mm256_storeu_ps(out0 + a * kLanes, acc0[a]);
    _mm256_storeu_ps(out1 + a * kLanes, acc1[a]);
  }
}

template <class T>
void pv2_rows(const float* p0, const float* p1, const T* v, size_t stride, int64_t n, int64_t head_dim, float* out0,
              float* out1) {
  int64_t c = 0;
  for (; c + 4 * kLanes <= head_dim; c += 4 * kLanes) pv2_chunk<4>(p0, p1, v + c, stride, n, out0 + c, out1 + c);
  for (; c + kLanes <= head_dim; c += kLanes) pv2_chunk<1>(p0, p1, v + c, stride, n, out0 + c, out1 + c);
  if (c < head_dim) {
    const int rem = static_cast<int>(head_dim - c);
    __m256 acc0 = load_part(out0 + c, rem), acc1 = load_part(out1 + c, rem);
    for (int64_t j = 0; j < n; ++j) {
      const __m256 x = load_part(v + static_cast<size_t>(j) * stride + c, rem);
      acc0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + j), x, acc0);
      acc1 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + j), x, acc1);
    }
    store_part(out0 + c, acc0, rem);
    store_part(out1 + c, acc1, rem);
  }
}

}  // namespace

void qk2_f16(const float* q0, const float* q1, const uint16_t* k, size_t stride, int64_t n, int64_t head_dim,
             float* scores0, float* scores1) {
  qk2_rows(q0, q1, k, stride, n, head_dim, scores0, scores1);
}
void qk2_f32(const float* q0, const float* q1, const float* k, size_t stride, int64_t n, int64_t head_dim,
             float* scores0, float* scores1) {
  qk2_rows(q0, q1, k, stride, n, head_dim, scores0, scores1);
}
void pv2_f16(const float* p0, const float* p1, const uint16_t* v, size_t stride, int64_t n, int64_t head_dim,
             float* out0, float* out1) {
  pv2_rows(p0, p1, v, stride, n, head_dim, out0, out1);
}
void pv2_f32(const float* p0, const float* p1, const float* v, size_t stride, int64_t n, int64_t head_dim,
             float* out0, float* out1) {
  pv2_rows(p0, p1, v, stride, n, head_dim, out0, out1);
}

void qk_f16(const float* q, const uint16_t* k, size_t stride, int64_t n, int64_t head_dim, float* scores) {
  qk_rows(q, k, stride, n, head_dim, scores);
}
void qk_f32(const float* q, const float* k, size_t stride, int64_t n, int64_t head_dim, float* scores) {
  qk_rows(q, k, stride, n, head_dim, scores);
}
void qk_q8_0(const void* q, const void* k, size_t stride, int64_t n, int64_t head_dim, float* scores) {
  qk_q8_rows(q, k, stride, n, head_dim, scores);
}
void pv_f16(const float* p, const uint16_t* v, size_t stride, int64_t n, int64_t head_dim, float* out) {
  pv_rows(p, v, stride, n, head_dim, out);
}
void pv_f32(const float* p, const float* v, size_t stride, int64_t n, int64_t head_dim, float* out) {
  pv_rows(p, v, stride, n, head_dim, out);
}

void softmax(float* s, int64_t n, float scale, float softcap, bool half) {
  const int64_t full = n / kLanes * kLanes;
  const int rem = static_cast<int>(n - full);
  // Scale (and cap), and the maximum.
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  if (softcap > 0.0f) {
    for (int64_t j = 0; j < n; ++j) s[j] = softcap * std::tanh(s[j] * scale / softcap);
    for (int64_t j = 0; j < full; j += kLanes) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + j));
  } else {
    const __m256 vs = _mm256_set1_ps(scale);
    for (int64_t j = 0; j < full; j += kLanes) {
      const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(s + j), vs);
      _mm256_storeu_ps(s + j, x);
      vmax = _mm256_max_ps(vmax, x);
    }
    for (int64_t j = full; j < n; ++j) s[j] *= scale;
  }
  float max = hmax(vmax);
  for (int64_t j = full; j < n; ++j) max = s[j] > max ? s[j] : max;
  // e = exp(s - max), summed in double: lanes 0-3 and 4-7 of each vector in two accumulators
  // (the tail as one more vector, zero past n).
  const __m256 vm = _mm256_set1_ps(max);
  __m256d sum0 = _mm256_setzero_pd(), sum1 = _mm256_setzero_pd();
  for (int64_t j = 0; j < full; j += kLanes) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
    _mm256_storeu_ps(s + j, e);
    sum0 = _mm256_add_pd(sum0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    sum1 = _mm256_add_pd(sum1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  if (rem != 0) {
    const __m256 e = exp8(_mm256_sub_ps(load_part(s + full, rem, -INFINITY), vm));
    store_part(s + full, e, rem);
    sum0 = _mm256_add_pd(sum0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    sum1 = _mm256_add_pd(sum1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  const __m256 inv = _mm256_set1_ps(static_cast<float>(1.0 / hsum(_mm256_add_pd(sum0, sum1))));
  for (int64_t j = 0; j < full; j += kLanes) {
    const __m256 pj = _mm256_mul_ps(_mm256_loadu_ps(s + j), inv);
    _mm256_storeu_ps(s + j, half ? round_f16_8(pj) : pj);
  }
  if (rem != 0) {
    const __m256 pj = _mm256_mul_ps(load_part(s + full, rem), inv);
    store_part(s + full, half ? round_f16_8(pj) : pj, rem);
  }
}

void exp(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) _mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
  if (i < n) store_part(y + i, exp8(load_part(x + i, static_cast<int>(n - i))), static_cast<int>(n - i));
}

// --- conversions -------------------------------------------------------------------------------

void f32_to_f16(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

void round_f16(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) _mm256_storeu_ps(x + i, round_f16_8(_mm256_loadu_ps(x + i)));
  if (i < n) store_part(x + i, round_f16_8(load_part(x + i, static_cast<int>(n - i))), static_cast<int>(n - i));
}

void dequantize_q8_0(const void* x, float* y, int64_t n) {
  const auto* blocks = static_cast<const uint8_t*>(x);
  for (int64_t b = 0; b < n / 32; ++b) {
    const uint8_t* block = blocks + static_cast<size_t>(b) * kQ8Block;
    const __m256 d = _mm256_set1_ps(q8_scale(block));
    for (int i = 0; i < 32; i += kLanes) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(block + 2 + i));
      _mm256_storeu_ps(y + b * 32 + i, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
    }
  }
}

// --- norms and activations ---------------------------------------------------------------------

void rms_norm_row(const float* x, const float* weight, float eps, float* y, int64_t n) {
  // Squares rounded to float (as the reference), summed in double: lanes 0-3 and 4-7 apart.
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 sq = _mm256_mul_ps(v, v);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
  }
  double sum = hsum(_mm256_add_pd(s0, s1));
  for (int64_t t = i; t < n; ++t) sum += static_cast<double>(x[t] * x[t]);
  const float mean = static_cast<float>(sum / static_cast<double>(n));
  const float scale = 1.0f / std::sqrt(mean + eps);
  const __m256 vs = _mm256_set1_ps(scale);
  for (i = 0; i + kLanes <= n; i += kLanes) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
    if (weight != nullptr) v = _mm256_mul_ps(v, _mm256_loadu_ps(weight + i));
    _mm256_storeu_ps(y + i, v);
  }
  for (; i < n; ++i) {
    const float v = x[i] * scale;
    y[i] = weight != nullptr ? v * weight[i] : v;
  }
}

namespace {
inline __m256 silu8(__m256 g) {
  const __m256 e = exp8(_mm256_xor_ps(g, _mm256_set1_ps(-0.0f)));
  return _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}
inline __m256 gelu8(__m256 g, const float* table) {
  const __m128i h = _mm256_cvtps_ph(g, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 t = _mm256_i32gather_ps(table, _mm256_cvtepu16_epi32(h), 4);
  t = _mm256_blendv_ps(t, _mm256_setzero_ps(), _mm256_cmp_ps(g, _mm256_set1_ps(-10.0f), _CMP_LE_OQ));
  return _mm256_blendv_ps(t, g, _mm256_cmp_ps(g, _mm256_set1_ps(10.0f), _CMP_GE_OQ));
}
}  // namespace

void silu_mul(const float* g, const float* u, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    _mm256_storeu_ps(y + i, _mm256_mul_ps(silu8(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
  }
  if (i < n) {
    const int rem = static_cast<int>(n - i);
    store_part(y + i, _mm256_mul_ps(silu8(load_part(g + i, rem)), load_part(u + i, rem)), rem);
  }
}

void gelu_mul(const float* g, const float* u, float* y, int64_t n) {
  const float* table = gelu_f16_table();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    _mm256_storeu_ps(y + i, _mm256_mul_ps(gelu8(_mm256_loadu_ps(g + i), table), _mm256_loadu_ps(u + i)));
  }
  if (i < n) {
    const int rem = static_cast<int>(n - i);
    store_part(y + i, _mm256_mul_ps(gelu8(load_part(g + i, rem), table), load_part(u + i, rem)), rem);
  }
}

}  // namespace hearth::kernels::x86::HEARTH_X86_NS
