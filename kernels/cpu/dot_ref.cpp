#include "kernels/cpu/dot_ref.h"

#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "core/quant_blocks.h"

namespace hearth::kernels::ref {
namespace {

float f16(uint16_t h) { return fp16_to_fp32(h); }

int64_t blocks(int64_t n, int64_t block) {
  HEARTH_CHECK(n % block == 0, "row of {} is not whole {}-blocks", n, block);
  return n / block;
}

float dot_q4_0_q8_0(int64_t n, const BlockQ4_0* x, const BlockQ8_0* y) {
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks(n, kQK4_0); ++b) {
    int sumi = 0;
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      sumi += ((x[b].qs[j] & 0x0F) - 8) * y[b].qs[j] + ((x[b].qs[j] >> 4) - 8) * y[b].qs[j + kQK4_0 / 2];
    }
    sum += static_cast<float>(sumi) * f16(x[b].d) * f16(y[b].d);
  }
  return sum;
}

float dot_q4_1_q8_1(int64_t n, const BlockQ4_1* x, const BlockQ8_1* y) {
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks(n, kQK4_1); ++b) {
    int sumi = 0;
    for (int j = 0; j < kQK4_1 / 2; ++j) {
      sumi += (x[b].qs[j] & 0x0F) * y[b].qs[j] + (x[b].qs[j] >> 4) * y[b].qs[j + kQK4_1 / 2];
    }
    // sum_j (d q_j + m) dy qy_j = d dy sumi + m (dy sum qy) = d dy sumi + m s
    sum += (f16(x[b].d) * f16(y[b].d)) * static_cast<float>(sumi) + f16(x[b].m) * f16(y[b].s);
  }
  return sum;
}

uint32_t load_qh(const uint8_t* qh) {
  uint32_t v;
  std::memcpy(&v, qh, sizeof(v));
  return v;
}

float dot_q5_0_q8_0(int64_t n, const BlockQ5_0* x, const BlockQ8_0* y) {
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks(n, kQK5_0); ++b) {
    const uint32_t qh = load_qh(x[b].qh);
    int sumi = 0;
    for (int j = 0; j < kQK5_0 / 2; ++j) {
      const int x0 = ((x[b].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4)) - 16;
      const int x1 = ((x[b].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4)) - 16;
      sumi += x0 * y[b].qs[j] + x1 * y[b].qs[j + kQK5_0 / 2];
    }
    sum += static_cast<float>(sumi) * f16(x[b].d) * f16(y[b].d);
  }
  return sum;
}

float dot_q5_1_q8_1(int64_t n, const BlockQ5_1* x, const BlockQ8_1* y) {
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks(n, kQK5_1); ++b) {
    const uint32_t qh = load_qh(x[b].qh);
    int sumi = 0;
    for (int j = 0; j < kQK5_1 / 2; ++j) {
      const int x0 = (x[b].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int x1 = (x[b].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      sumi += x0 * y[b].qs[j] + x1 * y[b].qs[j + kQK5_1 / 2];
    }
    sum += (f16(x[b].d) * f16(y[b].d)) * static_cast<float>(sumi) + f16(x[b].m) * f16(y[b].s);
  }
  return sum;
}

float dot_q8_0_q8_0(int64_t n, const BlockQ8_0* x, const BlockQ8_0* y) {
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks(n, kQK8_0); ++b) {
    int sumi = 0;
    for (int j = 0; j < kQK8_0; ++j) sumi += x[b].qs[j] * y[b].qs[j];
    sum += static_cast<float>(sumi) * (f16(x[b].d) * f16(y[b].d));
  }
  return sum;
}

float dot_q2_K_q8_K(int64_t n, const BlockQ2_K* x, const BlockQ8_K* y) {
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks(n, kQK_K); ++b) {
    int summs = 0;  // minimums: sum over sub-blocks of min * (sum of q8 in it)
    for (int j = 0; j < 16; ++j) summs += y[b].bsums[j] * (x[b].scales[j] >> 4);
    const float dall = y[b].d * f16(x[b].d);
    const float dmin = y[b].d * f16(x[b].dmin);
    int isum = 0;
    int is = 0;
    const uint8_t* q2 = x[b].qs;
    const int8_t* q8 = y[b].qs;
    for (int half = 0; half < 2; ++half, q2 += 32) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int part = 0; part < 2; ++part, q8 += 16) {
          int s = 0;
          for (int l = 0; l < 16; ++l) s += q8[l] * ((q2[l + 16 * part] >> shift) & 3);
          isum += (x[b].scales[is++] & 0xF) * s;
        }
      }
    }
    sum += dall * static_cast<float>(isum) - dmin * static_cast<float>(summs);
  }
  return sum;
}

float dot_q3_K_q8_K(int64_t n, const BlockQ3_K* x, const BlockQ8_K* y) {
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks(n, kQK_K); ++b) {
    int scales[16];
    unpack_scales_q3_K(x[b].scales, scales);
    int isum = 0;
    int is = 0;
    uint8_t mask = 1;
    const uint8_t* q3 = x[b].qs;
    const int8_t* q8 = y[b].qs;
    for (int half = 0; half < 2; ++half, q3 += 32) {
      for (int shift = 0; shift < 8; shift += 2, mask = static_cast<uint8_t>(mask << 1)) {
        for (int part = 0; part < 2; ++part, q8 += 16) {
          int acc = 0;
          for (int l = 16 * part; l < 16 * part + 16; ++l) {
            const int v = ((q3[l] >> shift) & 3) - ((x[b].hmask[l] & mask) ? 0 : 4);
            acc += v * q8[l - 16 * part];
          }
          isum += scales[is++] * acc;
        }
      }
    }
    sum += f16(x[b].d) * y[b].d * static_cast<float>(isum);
  }
  return sum;
}

float dot_q4_K_q8_K(int64_t n, const BlockQ4_K* x, const BlockQ8_K* y) {
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks(n, kQK_K); ++b) {
    int isum = 0, summs = 0;
    int sc[8], mn[8];
    unpack_scales_mins_k4(x[b].scales, sc, mn);
    const uint8_t* q4 = x[b].qs;
    const int8_t* q8 = y[b].qs;
    for (int j = 0; j < 8; j += 2, q4 += 32) {
      const int sc0 = sc[j], m0 = mn[j], sc1 = sc[j + 1], m1 = mn[j + 1];
      int s0 = 0, s1 = 0;
      for (int l = 0; l < 32; ++l) {
        s0 += (q4[l] & 0xF) * q8[l];
        s1 += (q4[l] >> 4) * q8[l + 32];
      }
      q8 += 64;
      isum += sc0 * s0 + sc1 * s1;
      summs += m0 * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]) + m1 * (y[b].bsums[2 * j + 2] + y[b].bsums[2 * j + 3]);
    }
    const float d = y[b].d * f16(x[b].d);
    const float dmin = y[b].d * f16(x[b].dmin);
    sum += d * static_cast<float>(isum) - dmin * static_cast<float>(summs);
  }
  return sum;
}

float dot_q5_K_q8_K(int64_t n, const BlockQ5_K* x, const BlockQ8_K* y) {
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks(n, kQK_K); ++b) {
    int isum = 0, summs = 0;
    int sc[8], mn[8];
    unpack_scales_mins_k4(x[b].scales, sc, mn);
    const uint8_t* ql = x[b].qs;
    const uint8_t* qh = x[b].qh;
    const int8_t* q8 = y[b].qs;
    uint8_t bit_low = 1, bit_high = 2;
    for (int j = 0; j < 8; j += 2, ql += 32) {
      const int sc0 = sc[j], m0 = mn[j], sc1 = sc[j + 1], m1 = mn[j + 1];
      int s0 = 0, s1 = 0;
      for (int l = 0; l < 32; ++l) {
        s0 += ((ql[l] & 0xF) + ((qh[l] & bit_low) ? 16 : 0)) * q8[l];
        s1 += ((ql[l] >> 4) + ((qh[l] & bit_high) ? 16 : 0)) * q8[l + 32];
      }
      q8 += 64;
      bit_low = static_cast<uint8_t>(bit_low << 2);
      bit_high = static_cast<uint8_t>(bit_high << 2);
      isum += sc0 * s0 + sc1 * s1;
      summs += m0 * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]) + m1 * (y[b].bsums[2 * j + 2] + y[b].bsums[2 * j + 3]);
    }
    const float d = y[b].d * f16(x[b].d);
    const float dmin = y[b].d * f16(x[b].dmin);
    sum += d * static_cast<float>(isum) - dmin * static_cast<float>(summs);
  }
  return sum;
}

float dot_q6_K_q8_K(int64_t n, const BlockQ6_K* x, const BlockQ8_K* y) {
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks(n, kQK_K); ++b) {
    int isum = 0;
    const uint8_t* ql = x[b].ql;
    const uint8_t* qh = x[b].qh;
    const int8_t* sc = x[b].scales;
    const int8_t* q8 = y[b].qs;
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, q8 += 128) {
      int s[8] = {};  // per 16-element sub-block
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        s[is + 0] += q1 * q8[l];
        s[is + 2] += q2 * q8[l + 32];
        s[is + 4] += q3 * q8[l + 64];
        s[is + 6] += q4 * q8[l + 96];
      }
      for (int i = 0; i < 8; ++i) isum += sc[i] * s[i];
    }
    sum += f16(x[b].d) * y[b].d * static_cast<float>(isum);
  }
  return sum;
}

template <class LoadW, class LoadX>
float dot_plain(int64_t n, LoadW load_w, LoadX load_x) {
  // Eight partial sums in double, as ggml accumulates plain-type dots in wide precision.
  double acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += static_cast<double>(load_w(i + l)) * static_cast<double>(load_x(i + l));
  }
  double sum = 0.0;
  for (; i < n; ++i) sum += static_cast<double>(load_w(i)) * static_cast<double>(load_x(i));
  for (double a : acc) sum += a;
  return static_cast<float>(sum);
}

}  // namespace

DType vec_dot_type(DType weight) {
  switch (weight) {
    case DType::Q4_0:
    case DType::Q5_0:
    case DType::Q8_0: return DType::Q8_0;
    case DType::Q4_1:
    case DType::Q5_1: return DType::Q8_1;
    case DType::Q2_K:
    case DType::Q3_K:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K: return DType::Q8_K;
    case DType::F16: return DType::F16;
    case DType::BF16: return DType::BF16;
    default: return DType::F32;
  }
}

bool can_vec_dot(DType weight) {
  switch (weight) {
    case DType::F32:
    case DType::F16:
    case DType::BF16:
    case DType::Q4_0:
    case DType::Q4_1:
    case DType::Q5_0:
    case DType::Q5_1:
    case DType::Q8_0:
    case DType::Q2_K:
    case DType::Q3_K:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K: return true;
    default: return false;
  }
}

float vec_dot(DType weight, int64_t n, const void* w, const void* x) {
  switch (weight) {
    case DType::Q4_0: return dot_q4_0_q8_0(n, static_cast<const BlockQ4_0*>(w), static_cast<const BlockQ8_0*>(x));
    case DType::Q4_1: return dot_q4_1_q8_1(n, static_cast<const BlockQ4_1*>(w), static_cast<const BlockQ8_1*>(x));
    case DType::Q5_0: return dot_q5_0_q8_0(n, static_cast<const BlockQ5_0*>(w), static_cast<const BlockQ8_0*>(x));
    case DType::Q5_1: return dot_q5_1_q8_1(n, static_cast<const BlockQ5_1*>(w), static_cast<const BlockQ8_1*>(x));
    case DType::Q8_0: return dot_q8_0_q8_0(n, static_cast<const BlockQ8_0*>(w), static_cast<const BlockQ8_0*>(x));
    case DType::Q2_K: return dot_q2_K_q8_K(n, static_cast<const BlockQ2_K*>(w), static_cast<const BlockQ8_K*>(x));
    case DType::Q3_K: return dot_q3_K_q8_K(n, static_cast<const BlockQ3_K*>(w), static_cast<const BlockQ8_K*>(x));
    case DType::Q4_K: return dot_q4_K_q8_K(n, static_cast<const BlockQ4_K*>(w), static_cast<const BlockQ8_K*>(x));
    case DType::Q5_K: return dot_q5_K_q8_K(n, static_cast<const BlockQ5_K*>(w), static_cast<const BlockQ8_K*>(x));
    case DType::Q6_K: return dot_q6_K_q8_K(n, static_cast<const BlockQ6_K*>(w), static_cast<const BlockQ8_K*>(x));
    case DType::F32: {
      const auto* a = static_cast<const float*>(w);
      const auto* b = static_cast<const float*>(x);
      return dot_plain(n, [a](int64_t i) { return a[i]; },
                       [b](int64_t i) { return b[i]; });
    }
    case DType::F16: {
      const auto* a = static_cast<const uint16_t*>(w);
      const auto* b = static_cast<const uint16_t*>(x);
      return dot_plain(n, [a](int64_t i) { return fp16_to_fp32(a[i]); },
                       [b](int64_t i) { return fp16_to_fp32(b[i]); });
    }
    case DType::BF16: {
      const auto* a = static_cast<const uint16_t*>(w);
      const auto* b = static_cast<const uint16_t*>(x);
      return dot_plain(n, [a](int64_t i) { return bf16_to_fp32(a[i]); },
                       [b](int64_t i) { return bf16_to_fp32(b[i]); });
    }
    default: break;
  }
  HEARTH_CHECK(false, "no dot product for weights of type {}", dtype_name(weight));
  return 0.0f;
}

}  // namespace hearth::kernels::ref
