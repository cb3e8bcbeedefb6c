// The aarch64 kernels of the non-matmul ops (contracts: kernels/cpu/ops_simd.h), baseline
// armv8-a: 4 float lanes, fused multiply-adds, fcvtl / fcvtn for the f16 cache.
#include <arm_neon.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/fp16.h"
#include "kernels/cpu/arm/ops_arm.h"
#include "kernels/cpu/ops_simd.h"

namespace hearth::kernels::arm::neon {
namespace {

constexpr int kLanes = 4;

inline float32x4_t load4(const float* p) { return vld1q_f32(p); }
inline float32x4_t load4(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

// The first n (0 < n < 4) values at p, `fill` in the other lanes; reads only those n.
inline float32x4_t load_part(const float* p, int n, float fill = 0.0f) {
  float buf[kLanes] = {fill, fill, fill, fill};
  std::memcpy(buf, p, static_cast<size_t>(n) * sizeof(float));
  return vld1q_f32(buf);
}
inline float32x4_t load_part(const uint16_t* p, int n) {
  uint16_t buf[kLanes] = {};
  std::memcpy(buf, p, static_cast<size_t>(n) * sizeof(uint16_t));
  return load4(buf);
}
inline void store_part(float* p, float32x4_t v, int n) {
  float buf[kLanes];
  vst1q_f32(buf, v);
  std::memcpy(p, buf, static_cast<size_t>(n) * sizeof(float));
}

// Lane r of the result = (a[r] lane 0 + lane 1) + (lane 2 + lane 3), the same tree for every r.
inline float32x4_t reduce4(float32x4_t a0, float32x4_t a1, float32x4_t a2, float32x4_t a3) {
  return vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3));
}

// e^x as the x86 kernels compute it (kernels/cpu/x86/ops_x86_impl.h: Cody-Waite reduction,
// Cephes' polynomial, 2^n as two normal powers of two).
inline float32x4_t exp4(float32x4_t x) {
  x = vminq_f32(vdupq_n_f32(88.8f), vmaxq_f32(vdupq_n_f32(-104.0f), x));  // NaN propagates
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
  r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
  p = vfmaq_f32(r, p, vmulq_f32(r, r));
  p = vaddq_f32(p, vdupq_n_f32(1.0f));
  const int32x4_t ni = vcvtq_s32_f32(n);
  const int32x4_t n1 = vshrq_n_s32(ni, 1);
  const int32x4_t n2 = vsubq_s32(ni, n1);
  const int32x4_t bias = vdupq_n_s32(127);
  const float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, bias), 23));
  const float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, bias), 23));
  return vmulq_f32(vmulq_f32(p, s1), s2);
}

inline float32x4_t round_f16_4(float32x4_t x) { return vcvt_f32_f16(vcvt_f16_f32(x)); }

// Groups of eight rows, accumulator r: lane l sums d = l, l + 4, ... (tail as one more vector,
// zero past head_dim); the last group repeats its last row. As the x86 qk_rows.
template <class T>
void qk_rows(const float* q, const T* k, size_t stride, int64_t n, int64_t head_dim, float* scores) {
  const int64_t full = head_dim / kLanes * kLanes;
  const int rem = static_cast<int>(head_dim - full);
  const float32x4_t q_tail = rem != 0 ? load_part(q + full, rem) : vdupq_n_f32(0.0f);
  for (int64_t j0 = 0; j0 < n; j0 += 8) {
    const T* r[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) r[i] = k + static_cast<size_t>(j0 + i < n ? j0 + i : n - 1) * stride;
    float32x4_t a[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) a[i] = vdupq_n_f32(0.0f);
    for (int64_t c = 0; c < full; c += kLanes) {
      const float32x4_t qc = vld1q_f32(q + c);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) a[i] = vfmaq_f32(a[i], qc, load4(r[i] + c));
    }
    if (rem != 0) {
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) a[i] = vfmaq_f32(a[i], q_tail, load_part(r[i] + full, rem));
    }
    float s[8];
    vst1q_f32(s, reduce4(a[0], a[1], a[2], a[3]));
    vst1q_f32(s + 4, reduce4(a[4], a[5], a[6], a[7]));
    std::memcpy(scores + j0, s, static_cast<size_t>(n - j0 < 8 ? n - j0 : 8) * sizeof(float));
  }
}

template <int A, class T>
inline void pv_chunk(const float* p, const T* v, size_t stride, int64_t n, float* out) {
  float32x4_t acc[A];
#pragma GCC unroll 8
  for (int a = 0; a < A; ++a) acc[a] = vld1q_f32(out + a * kLanes);
  for (int64_t j = 0; j < n; ++j) {
    const float32x4_t pj = vdupq_n_f32(p[j]);
    const T* row = v + static_cast<size_t>(j) * stride;
#pragma GCC unroll 8
    for (int a = 0; a < A; ++a) acc[a] = vfmaq_f32(acc[a], pj, load4(row + a * kLanes));
  }
#pragma GCC unroll 8
  for (int a = 0; a < A; ++a) vst1q_f32(out + a * kLanes, acc[a]);
}

template <class T>
void pv_rows(const float* p, const T* v, size_t stride, int64_t n, int64_t head_dim, float* out) {
  int64_t c = 0;
  for (; c + 8 * kLanes <= head_dim; c += 8 * kLanes) pv_chunk<8>(p, v + c, stride, n, out + c);
  for (; c + kLanes <= head_dim; c += kLanes) pv_chunk<1>(p, v + c, stride, n, out + c);
  if (c < head_dim) {
    const int rem = static_cast<int>(head_dim - c);
    float32x4_t acc = load_part(out + c, rem);
    for (int64_t j = 0; j < n; ++j) {
      acc = vfmaq_f32(acc, vdupq_n_f32(p[j]), load_part(v + static_cast<size_t>(j) * stride + c, rem));
    }
    store_part(out + c, acc, rem);
  }
}

inline float32x4_t silu4(float32x4_t g) {
  return vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0f), exp4(vnegq_f32(g))));
}

inline float32x4_t gelu4(float32x4_t g, const float* table) {
  uint16_t h[kLanes];
  vst1_u16(h, vreinterpret_u16_f16(vcvt_f16_f32(g)));
  const float t[kLanes] = {table[h[0]], table[h[1]], table[h[2]], table[h[3]]};
  float32x4_t v = vld1q_f32(t);
  v = vbslq_f32(vcleq_f32(g, vdupq_n_f32(-10.0f)), vdupq_n_f32(0.0f), v);
  return vbslq_f32(vcgeq_f32(g, vdupq_n_f32(10.0f)), g, v);
}

}  // namespace

void qk_f16(const float* q, const uint16_t* k, size_t stride, int64_t n, int64_t head_dim, float* scores) {
  qk_rows(q, k, stride, n, head_dim, scores);
}
void qk_f32(const float* q, const float* k, size_t stride, int64_t n, int64_t head_dim, float* scores) {
  qk_rows(q, k, stride, n, head_dim, scores);
}
// Per row and block: the 32 int8 products widened to 16 bits and pairwise summed into four
// int32 lanes (baseline armv8-a: no sdot), lane l holding the sum of q[i] * row[i] over
// i = 2l, 2l + 1, 8 + 2l, 8 + 2l + 1 and the same in the block's second half; then
// float(lanes) * (d_q * d_row) added to the row's accumulator and vaddvq at the end.
void qk_q8_0(const void* q, const void* k, size_t stride, int64_t n, int64_t head_dim, float* scores) {
  constexpr size_t kBlock = 34;  // f16 d, then 32 int8 q (core/quant_blocks.h's BlockQ8_0)
  const auto* qb = static_cast<const uint8_t*>(q);
  const auto* kb = static_cast<const uint8_t*>(k);
  const int64_t blocks = head_dim / 32;
  const auto scale = [](const uint8_t* block) {
    uint16_t bits;
    std::memcpy(&bits, block, sizeof bits);
    return fp16_to_fp32(bits);
  };
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* row = kb + static_cast<size_t>(j) * stride * kBlock;
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < blocks; ++b) {
      const size_t at = static_cast<size_t>(b) * kBlock;
      const int8x16_t q0 = vld1q_s8(reinterpret_cast<const int8_t*>(qb + at + 2));
      const int8x16_t q1 = vld1q_s8(reinterpret_cast<const int8_t*>(qb + at + 18));
      const int8x16_t k0 = vld1q_s8(reinterpret_cast<const int8_t*>(row + at + 2));
      const int8x16_t k1 = vld1q_s8(reinterpret_cast<const int8_t*>(row + at + 18));
      int32x4_t sum = vpaddlq_s16(vmull_s8(vget_low_s8(q0), vget_low_s8(k0)));
      sum = vpadalq_s16(sum, vmull_high_s8(q0, k0));
      sum = vpadalq_s16(sum, vmull_s8(vget_low_s8(q1), vget_low_s8(k1)));
      sum = vpadalq_s16(sum, vmull_high_s8(q1, k1));
      acc = vfmaq_n_f32(acc, vcvtq_f32_s32(sum), scale(qb + at) * scale(row + at));
    }
    scores[j] = vaddvq_f32(acc);
  }
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
  float32x4_t vmax = vdupq_n_f32(-INFINITY);
  if (softcap > 0.0f) {
    for (int64_t j = 0; j < n; ++j) s[j] = softcap * std::tanh(s[j] * scale / softcap);
    for (int64_t j = 0; j < full; j += kLanes) vmax = vmaxq_f32(vmax, vld1q_f32(s + j));
  } else {
    for (int64_t j = 0; j < full; j += kLanes) {
      const float32x4_t x = vmulq_n_f32(vld1q_f32(s + j), scale);
      vst1q_f32(s + j, x);
      vmax = vmaxq_f32(vmax, x);
    }
    for (int64_t j = full; j < n; ++j) s[j] *= scale;
  }
  float max = vmaxvq_f32(vmax);
  for (int64_t j = full; j < n; ++j) max = s[j] > max ? s[j] : max;
  const float32x4_t vm = vdupq_n_f32(max);
  float64x2_t sum0 = vdupq_n_f64(0.0), sum1 = vdupq_n_f64(0.0);
  for (int64_t j = 0; j < full; j += kLanes) {
    const float32x4_t e = exp4(vsubq_f32(vld1q_f32(s + j), vm));
    vst1q_f32(s + j, e);
    sum0 = vaddq_f64(sum0, vcvt_f64_f32(vget_low_f32(e)));
    sum1 = vaddq_f64(sum1, vcvt_high_f64_f32(e));
  }
  if (rem != 0) {
    const float32x4_t e = exp4(vsubq_f32(load_part(s + full, rem, -INFINITY), vm));
    store_part(s + full, e, rem);
    sum0 = vaddq_f64(sum0, vcvt_f64_f32(vget_low_f32(e)));
    sum1 = vaddq_f64(sum1, vcvt_high_f64_f32(e));
  }
  const float inv = static_cast<float>(1.0 / vaddvq_f64(vaddq_f64(sum0, sum1)));
  for (int64_t j = 0; j < full; j += kLanes) {
    const float32x4_t pj = vmulq_n_f32(vld1q_f32(s + j), inv);
    vst1q_f32(s + j, half ? round_f16_4(pj) : pj);
  }
  if (rem != 0) {
    const float32x4_t pj = vmulq_n_f32(load_part(s + full, rem), inv);
    store_part(s + full, half ? round_f16_4(pj) : pj, rem);
  }
}

void exp(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vst1q_f32(y + i, exp4(vld1q_f32(x + i)));
  if (i < n) store_part(y + i, exp4(load_part(x + i, static_cast<int>(n - i))), static_cast<int>(n - i));
}

void f32_to_f16(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vst1_u16(y + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
  for (; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

void round_f16(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vst1q_f32(x + i, round_f16_4(vld1q_f32(x + i)));
  for (; i < n; ++i) x[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
}

void dequantize_q8_0(const void* x, float* y, int64_t n) {
  constexpr int64_t kBlock = 34;  // f16 d, then 32 int8 q (core/quant_blocks.h's BlockQ8_0)
  const auto* blocks = static_cast<const uint8_t*>(x);
  for (int64_t b = 0; b < n / 32; ++b) {
    const uint8_t* block = blocks + b * kBlock;
    uint16_t d_bits;
    std::memcpy(&d_bits, block, sizeof d_bits);
    const float d = fp16_to_fp32(d_bits);
    for (int i = 0; i < 32; i += 8) {
      const int16x8_t q = vmovl_s8(vld1_s8(reinterpret_cast<const int8_t*>(block + 2 + i)));
      vst1q_f32(y + b * 32 + i, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(q))), d));
      vst1q_f32(y + b * 32 + i + 4, vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(q)), d));
    }
  }
}

void rms_norm_row(const float* x, const float* weight, float eps, float* y, int64_t n) {
  float64x2_t s0 = vdupq_n_f64(0.0), s1 = vdupq_n_f64(0.0);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const float32x4_t v = vld1q_f32(x + i);
    const float32x4_t sq = vmulq_f32(v, v);
    s0 = vaddq_f64(s0, vcvt_f64_f32(vget_low_f32(sq)));
    s1 = vaddq_f64(s1, vcvt_high_f64_f32(sq));
  }
  double sum = vaddvq_f64(vaddq_f64(s0, s1));
  for (int64_t t = i; t < n; ++t) sum += static_cast<double>(x[t] * x[t]);
  const float mean = static_cast<float>(sum / static_cast<double>(n));
  const float scale = 1.0f / std::sqrt(mean + eps);
  for (i = 0; i + kLanes <= n; i += kLanes) {
    float32x4_t v = vmulq_n_f32(vld1q_f32(x + i), scale);
    if (weight != nullptr) v = vmulq_f32(v, vld1q_f32(weight + i));
    vst1q_f32(y + i, v);
  }
  for (; i < n; ++i) {
    const float v = x[i] * scale;
    y[i] = weight != nullptr ? v * weight[i] : v;
  }
}

void silu_mul(const float* g, const float* u, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vst1q_f32(y + i, vmulq_f32(silu4(vld1q_f32(g + i)), vld1q_f32(u + i)));
  if (i < n) {
    const int rem = static_cast<int>(n - i);
    store_part(y + i, vmulq_f32(silu4(load_part(g + i, rem)), load_part(u + i, rem)), rem);
  }
}

void gelu_mul(const float* g, const float* u, float* y, int64_t n) {
  const float* table = gelu_f16_table();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vst1q_f32(y + i, vmulq_f32(gelu4(vld1q_f32(g + i), table), vld1q_f32(u + i)));
  if (i < n) {
    const int rem = static_cast<int>(n - i);
    store_part(y + i, vmulq_f32(gelu4(load_part(g + i, rem), table), load_part(u + i, rem)), rem);
  }
}

}  // namespace hearth::kernels::arm::neon
