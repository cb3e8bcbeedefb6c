#include "kernels/cpu/ops_ref.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "kernels/cpu/quants_ref.h"

namespace hearth::kernels::ref {

float dot_f32(const float* a, const float* b, int64_t n) {
  // Eight independent partial sums: stable order, and the compiler can vectorize it.
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  }
  float sum = 0.0f;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (int l = 0; l < 8; ++l) sum += acc[l];
  return sum;
}

void rms_norm_row(const float* x, const float* weight, float eps, float* y, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i] * x[i]);
  const float mean = static_cast<float>(sum / static_cast<double>(n));
  const float scale = 1.0f / std::sqrt(mean + eps);
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] * scale;
    y[i] = weight != nullptr ? v * weight[i] : v;
  }
}

void rope_token(float* x, int n_heads, int64_t head_dim, int32_t pos, const RopeParams& p, const float* freq_factors) {
  HEARTH_CHECK(p.n_rot > 0 && p.n_rot <= head_dim && p.n_rot % 2 == 0, "bad rope dims {}", p.n_rot);
  const float theta_scale = std::pow(p.freq_base, -2.0f / static_cast<float>(p.n_rot));
  // Angles per pair, computed as ggml does: theta_i = pos * theta_scale^i by repeated
  // multiplication, then divided by the frequency factor and scaled linearly.
  float cos_theta[512], sin_theta[512];
  HEARTH_CHECK(p.n_rot / 2 <= 512, "rope dims {} too large", p.n_rot);
  float theta_base = static_cast<float>(pos);
  for (int i = 0; i < p.n_rot / 2; ++i) {
    const float ff = freq_factors != nullptr ? freq_factors[i] : 1.0f;
    const float theta = p.freq_scale * (theta_base / ff);
    cos_theta[i] = std::cos(theta);
    sin_theta[i] = std::sin(theta);
    theta_base *= theta_scale;
  }
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int i = 0; i < p.n_rot / 2; ++i) {
      const int a = p.mode == RopeMode::Normal ? 2 * i : i;
      const int b = p.mode == RopeMode::Normal ? 2 * i + 1 : i + p.n_rot / 2;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * cos_theta[i] - x1 * sin_theta[i];
      v[b] = x0 * sin_theta[i] + x1 * cos_theta[i];
    }
  }
}

float silu(float x) { return x / (1.0f + std::exp(-x)); }

float gelu_tanh_exact(float x) {
  constexpr float kSqrt2OverPi = 0.79788456080286535587989211986876f;
  constexpr float kCoef = 0.044715f;
  return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * x * (1.0f + kCoef * x * x)));
}

float gelu_tanh(float x) {
  // At f16 resolution, as ggml's CPU backend evaluates GELU (a table over all halves): the
  // input is rounded to f16 and so is the result. Outside (-10, 10) GELU is 0 or x.
  if (x <= -10.0f) return 0.0f;
  if (x >= 10.0f) return x;
  return fp16_to_fp32(fp32_to_fp16(gelu_tanh_exact(fp16_to_fp32(fp32_to_fp16(x)))));
}

namespace {
// Element `index` of a cache of rows laid end to end (a Q8_0 row is whole blocks of 32).
inline float kv_value(const void* base, DType type, int64_t index) {
  switch (type) {
    case DType::F16:
      return fp16_to_fp32(static_cast<const uint16_t*>(base)[index]);
    case DType::Q8_0: {
      const BlockQ8_0& b = static_cast<const BlockQ8_0*>(base)[index / kQK8_0];
      return fp16_to_fp32(b.d) * static_cast<float>(b.qs[index % kQK8_0]);
    }
    default:
      return static_cast<const float*>(base)[index];
  }
}
}  // namespace

void attention_head(const float* q, const void* k_cache, const void* v_cache, DType kv_type, int64_t kv_stride,
                    int64_t head_offset, int64_t head_dim, int32_t first, int32_t last, float scale, float softcap,
                    float* scores, float* out) {
  // With an f16 cache both products take f16 inputs, as ggml's CPU path does: q is rounded to
  // f16 for q.k and the probabilities are rounded to f16 for p.v. With a q8_0 cache q is
  // quantized to q8_0 for q.k (ggml's q8_0 x q8_0 dot; products of the two exact dequantized
  // values, summed in double here) and p.v takes float probabilities against exact V values.
  const bool half = kv_type == DType::F16;
  float qr[1024];
  HEARTH_CHECK(head_dim <= 1024, "head dim {} too large", head_dim);
  if (kv_type == DType::Q8_0) {
    HEARTH_CHECK(head_dim % kQK8_0 == 0 && head_offset % kQK8_0 == 0 && kv_stride % kQK8_0 == 0,
                 "a q8_0 KV cache needs head dims that are multiples of {}", kQK8_0);
    BlockQ8_0 qq[1024 / kQK8_0];
    quantize_activations_q8_0(q, qq, head_dim);
    dequantize_row_q8_0(qq, qr, head_dim);
  } else {
    for (int64_t d = 0; d < head_dim; ++d) qr[d] = half ? fp16_to_fp32(fp32_to_fp16(q[d])) : q[d];
  }
  float max_score = -INFINITY;
  for (int32_t j = first; j <= last; ++j) {
    const int64_t base = j * kv_stride + head_offset;
    double s = 0.0;
    for (int64_t d = 0; d < head_dim; ++d) {
      const float k = kv_value(k_cache, kv_type, base + d);
      s += kv_type == DType::Q8_0 ? static_cast<double>(qr[d]) * k : static_cast<double>(qr[d] * k);
    }
    float sf = static_cast<float>(s) * scale;
    if (softcap > 0.0f) sf = softcap * std::tanh(sf / softcap);
    scores[j - first] = sf;
    max_score = std::max(max_score, sf);
  }
  double sum = 0.0;
  for (int32_t j = first; j <= last; ++j) {
    const float e = std::exp(scores[j - first] - max_score);
    scores[j - first] = e;
    sum += e;
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int32_t j = first; j <= last; ++j) {
    const float p = scores[j - first] * inv;
    scores[j - first] = half ? fp16_to_fp32(fp32_to_fp16(p)) : p;
  }
  for (int64_t d = 0; d < head_dim; ++d) {
    double acc = 0.0;
    for (int32_t j = first; j <= last; ++j) {
      acc += static_cast<double>(scores[j - first] * kv_value(v_cache, kv_type, j * kv_stride + head_offset + d));
    }
    out[d] = static_cast<float>(acc);
  }
}

}  // namespace hearth::kernels::ref
