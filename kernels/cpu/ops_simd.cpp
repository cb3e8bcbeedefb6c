#include "kernels/cpu/ops_simd.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <iterator>
#include <memory>

#include "core/error.h"
#include "core/fp16.h"
#include "kernels/cpu/ops_ref.h"
#include "kernels/cpu/quants_ref.h"
#if defined(HEARTH_X86_KERNELS)
#include "kernels/cpu/x86/ops_x86.h"
#endif
#if defined(HEARTH_ARM_KERNELS)
#include "kernels/cpu/arm/ops_arm.h"
#endif

namespace hearth::kernels {

const float* gelu_f16_table() {
  static const std::unique_ptr<float[]> table = [] {
    auto t = std::make_unique<float[]>(65536);
    for (uint32_t h = 0; h < 65536; ++h) {
      t[h] = fp16_to_fp32(fp32_to_fp16(ref::gelu_tanh_exact(fp16_to_fp32(static_cast<uint16_t>(h)))));
    }
    return t;
  }();
  return table.get();
}

namespace {

// --- the plain C++ kernels (the Scalar level, and any level without SIMD ones) -------------------
// The same structure as the SIMD kernels (eight partial sums per score, a fixed reduction tree),
// with a separate multiply and add (the build never contracts them into FMAs).

inline float value(const float* p) { return *p; }
inline float value(const uint16_t* p) { return fp16_to_fp32(*p); }

template <class T>
void qk_scalar(const float* q, const T* k, size_t stride, int64_t n, int64_t head_dim, float* scores) {
  for (int64_t j = 0; j < n; ++j) {
    const T* row = k + static_cast<size_t>(j) * stride;
    float acc[8] = {};
    for (int64_t d = 0; d < head_dim; ++d) acc[d % 8] += q[d] * value(row + d);
    scores[j] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  }
}

// Per row: sum over blocks of float(integer dot) * (d_q * d_row), in block order.
void qk_q8_0_scalar(const void* q, const void* k, size_t stride, int64_t n, int64_t head_dim, float* scores) {
  const auto* qb = static_cast<const BlockQ8_0*>(q);
  for (int64_t j = 0; j < n; ++j) {
    const BlockQ8_0* row = static_cast<const BlockQ8_0*>(k) + static_cast<size_t>(j) * stride;
    float acc = 0.0f;
    for (int64_t b = 0; b < head_dim / kQK8_0; ++b) {
      int32_t sum = 0;
      for (int i = 0; i < kQK8_0; ++i) sum += int32_t{qb[b].qs[i]} * int32_t{row[b].qs[i]};
      acc += static_cast<float>(sum) * (fp16_to_fp32(qb[b].d) * fp16_to_fp32(row[b].d));
    }
    scores[j] = acc;
  }
}

template <class T>
void pv_scalar(const float* p, const T* v, size_t stride, int64_t n, int64_t head_dim, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    const T* row = v + static_cast<size_t>(j) * stride;
    for (int64_t d = 0; d < head_dim; ++d) out[d] += p[j] * value(row + d);
  }
}

void softmax_scalar(float* s, int64_t n, float scale, float softcap, bool half) {
  float max = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    float x = s[j] * scale;
    if (softcap > 0.0f) x = softcap * std::tanh(x / softcap);
    s[j] = x;
    max = std::max(max, x);
  }
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    s[j] = std::exp(s[j] - max);
    sum += static_cast<double>(s[j]);
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t j = 0; j < n; ++j) {
    const float p = s[j] * inv;
    s[j] = half ? fp16_to_fp32(fp32_to_fp16(p)) : p;
  }
}

void exp_scalar(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}

void f32_to_f16_scalar(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

void round_f16_scalar(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
}

void dequantize_q8_0_scalar(const void* x, float* y, int64_t n) {
  ref::dequantize_row_q8_0(static_cast<const BlockQ8_0*>(x), y, n);
}

void silu_mul_scalar(const float* g, const float* u, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = ref::silu(g[i]) * u[i];
}

void gelu_mul_scalar(const float* g, const float* u, float* y, int64_t n) {
  const float* table = gelu_f16_table();
  for (int64_t i = 0; i < n; ++i) {
    const float x = g[i];
    const float gelu = x <= -10.0f ? 0.0f : x >= 10.0f ? x : table[fp32_to_fp16(x)];
    y[i] = gelu * u[i];
  }
}

// Two queries as two calls of the one-query kernel, for levels without a two-query one.
template <class T, void (*Qk)(const float*, const T*, size_t, int64_t, int64_t, float*)>
void qk2_twice(const float* q0, const float* q1, const T* k, size_t stride, int64_t n, int64_t head_dim, float* s0,
               float* s1) {
  Qk(q0, k, stride, n, head_dim, s0);
  Qk(q1, k, stride, n, head_dim, s1);
}
template <class T, void (*Pv)(const float*, const T*, size_t, int64_t, int64_t, float*)>
void pv2_twice(const float* p0, const float* p1, const T* v, size_t stride, int64_t n, int64_t head_dim, float* out0,
               float* out1) {
  Pv(p0, v, stride, n, head_dim, out0);
  Pv(p1, v, stride, n, head_dim, out1);
}

constexpr OpsKernels kScalar = {
    qk_scalar<uint16_t>,
    qk_scalar<float>,
    qk_q8_0_scalar,
    pv_scalar<uint16_t>,
    pv_scalar<float>,
    qk2_twice<uint16_t, qk_scalar<uint16_t>>,
    qk2_twice<float, qk_scalar<float>>,
    pv2_twice<uint16_t, pv_scalar<uint16_t>>,
    pv2_twice<float, pv_scalar<float>>,
    softmax_scalar,
    exp_scalar,
    f32_to_f16_scalar,
    round_f16_scalar,
    dequantize_q8_0_scalar,
    ref::rms_norm_row,
    silu_mul_scalar,
    gelu_mul_scalar,
    false,
};

#define HEARTH_OPS_TABLE(ns, qk2_f16, qk2_f32, pv2_f16, pv2_f32)                                                \
  OpsKernels {                                                                                                 \
    ns::qk_f16, ns::qk_f32, ns::qk_q8_0, ns::pv_f16, ns::pv_f32, qk2_f16, qk2_f32, pv2_f16, pv2_f32, ns::softmax, ns::exp,  \
        ns::f32_to_f16, ns::round_f16, ns::dequantize_q8_0, ns::rms_norm_row, ns::silu_mul, ns::gelu_mul, true \
  }
#define HEARTH_OPS_TABLE_NATIVE(ns) HEARTH_OPS_TABLE(ns, ns::qk2_f16, ns::qk2_f32, ns::pv2_f16, ns::pv2_f32)
#define HEARTH_OPS_TABLE_TWICE(ns)                                                                        \
  HEARTH_OPS_TABLE(ns, (qk2_twice<uint16_t, ns::qk_f16>), (qk2_twice<float, ns::qk_f32>),                \
                   (pv2_twice<uint16_t, ns::pv_f16>), (pv2_twice<float, ns::pv_f32>))

// Indexed by CpuLevel; a level of the other architecture keeps the scalar kernels (it is never
// selected: cpu_level_supported() is false for it).
const std::array<OpsKernels, std::size(kAllCpuLevels)>& tables() {
  static const std::array<OpsKernels, std::size(kAllCpuLevels)> all = [] {
    std::array<OpsKernels, std::size(kAllCpuLevels)> a;
    a.fill(kScalar);
#if defined(HEARTH_X86_KERNELS)
    a[static_cast<size_t>(CpuLevel::Avx2)] = HEARTH_OPS_TABLE_NATIVE(x86::avx2);
    a[static_cast<size_t>(CpuLevel::Avx512)] = HEARTH_OPS_TABLE_NATIVE(x86::avx512);
#endif
#if defined(HEARTH_ARM_KERNELS)
    // Plain armv8-a NEON serves every aarch64 level (these ops have no use for sdot).
    a[static_cast<size_t>(CpuLevel::Neon)] = HEARTH_OPS_TABLE_TWICE(arm::neon);
    a[static_cast<size_t>(CpuLevel::Dotprod)] = HEARTH_OPS_TABLE_TWICE(arm::neon);
    a[static_cast<size_t>(CpuLevel::I8mm)] = HEARTH_OPS_TABLE_TWICE(arm::neon);
#endif
    return a;
  }();
  return all;
}
#undef HEARTH_OPS_TABLE_TWICE
#undef HEARTH_OPS_TABLE_NATIVE
#undef HEARTH_OPS_TABLE

}  // namespace

const OpsKernels& ops_kernels(CpuLevel level) {
  HEARTH_CHECK(static_cast<size_t>(level) < std::size(kAllCpuLevels), "level {}", static_cast<int>(level));
  return tables()[static_cast<size_t>(level)];
}

}  // namespace hearth::kernels
