#include "kernels/cpu/quants_ref.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "core/fp16.h"

namespace hearth::kernels::ref {
namespace {

int64_t block_count(int64_t n, int64_t block) {
  HEARTH_CHECK(n >= 0 && n % block == 0, "row of {} elements is not a whole number of {}-blocks", n, block);
  return n / block;
}

float f16(uint16_t h) { return fp16_to_fp32(h); }

// Round half away from zero, as C's roundf (and gguf-py's np_roundf).
int nearest_int(float x) { return static_cast<int>(std::round(x)); }

// Round half to even (the default floating-point rounding mode), as ggml's nearest_int and
// its SIMD round instructions do.
int nearest_int_even(float x) { return static_cast<int>(std::nearbyint(x)); }

// Q8_0 / Q8_1 blocks: d = amax / 127, q = round(x / d); Q8_1 also stores s = d * sum(q), which
// lets Q4_1 / Q5_1 apply their minimum cheaply. The two conventions differ in the last bit:
// the file format (gguf-py, ggml's reference) uses 1/d and rounds half away from zero; ggml's
// SIMD activation paths use 127/amax and round half to even (kActivation).
template <bool kActivation, class Block>
void quantize_q8_blocks(const float* x, Block* y, int64_t n) {
  const int64_t nb = block_count(n, kQK8_0);
  for (int64_t b = 0; b < nb; ++b, x += kQK8_0) {
    float amax = 0.0f;
    for (int j = 0; j < kQK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    float id;
    if constexpr (kActivation) {
      id = amax != 0.0f ? 127.0f / amax : 0.0f;
    } else {
      id = d != 0.0f ? 1.0f / d : 0.0f;
    }
    y[b].d = fp32_to_fp16(d);
    int sum = 0;
    for (int j = 0; j < kQK8_0; ++j) {
      y[b].qs[j] = static_cast<int8_t>(kActivation ? nearest_int_even(x[j] * id) : nearest_int(x[j] * id));
      sum += y[b].qs[j];
    }
    if constexpr (std::is_same_v<Block, BlockQ8_1>) y[b].s = fp32_to_fp16(static_cast<float>(sum) * d);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Dequantization

void dequantize_row_f32(const float* x, float* y, int64_t n) {
  std::memcpy(y, x, static_cast<size_t>(n) * sizeof(float));
}

void dequantize_row_f16(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}

void dequantize_row_bf16(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_fp32(x[i]);
}

void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t n) {
  const int64_t nb = block_count(n, kQK4_0);
  for (int64_t b = 0; b < nb; ++b, y += kQK4_0) {
    const float d = f16(x[b].d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      y[j] = d * static_cast<float>((x[b].qs[j] & 0x0F) - 8);
      y[j + kQK4_0 / 2] = d * static_cast<float>((x[b].qs[j] >> 4) - 8);
    }
  }
}

void dequantize_row_q4_1(const BlockQ4_1* x, float* y, int64_t n) {
  const int64_t nb = block_count(n, kQK4_1);
  for (int64_t b = 0; b < nb; ++b, y += kQK4_1) {
    const float d = f16(x[b].d);
    const float m = f16(x[b].m);
    for (int j = 0; j < kQK4_1 / 2; ++j) {
      y[j] = d * static_cast<float>(x[b].qs[j] & 0x0F) + m;
      y[j + kQK4_1 / 2] = d * static_cast<float>(x[b].qs[j] >> 4) + m;
    }
  }
}

void dequantize_row_q5_0(const BlockQ5_0* x, float* y, int64_t n) {
  const int64_t nb = block_count(n, kQK5_0);
  for (int64_t b = 0; b < nb; ++b, y += kQK5_0) {
    const float d = f16(x[b].d);
    uint32_t qh;
    std::memcpy(&qh, x[b].qh, sizeof(qh));
    for (int j = 0; j < kQK5_0 / 2; ++j) {
      const int high0 = static_cast<int>((qh >> j) & 1u) << 4;
      const int high1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
      y[j] = d * static_cast<float>(((x[b].qs[j] & 0x0F) | high0) - 16);
      y[j + kQK5_0 / 2] = d * static_cast<float>(((x[b].qs[j] >> 4) | high1) - 16);
    }
  }
}

void dequantize_row_q5_1(const BlockQ5_1* x, float* y, int64_t n) {
  const int64_t nb = block_count(n, kQK5_1);
  for (int64_t b = 0; b < nb; ++b, y += kQK5_1) {
    const float d = f16(x[b].d);
    const float m = f16(x[b].m);
    uint32_t qh;
    std::memcpy(&qh, x[b].qh, sizeof(qh));
    for (int j = 0; j < kQK5_1 / 2; ++j) {
      const int high0 = static_cast<int>((qh >> j) & 1u) << 4;
      const int high1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
      y[j] = d * static_cast<float>((x[b].qs[j] & 0x0F) | high0) + m;
      y[j + kQK5_1 / 2] = d * static_cast<float>((x[b].qs[j] >> 4) | high1) + m;
    }
  }
}

void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n) {
  const int64_t nb = block_count(n, kQK8_0);
  for (int64_t b = 0; b < nb; ++b, y += kQK8_0) {
    const float d = f16(x[b].d);
    for (int j = 0; j < kQK8_0; ++j) y[j] = static_cast<float>(x[b].qs[j]) * d;
  }
}

void dequantize_row_q8_1(const BlockQ8_1* x, float* y, int64_t n) {
  const int64_t nb = block_count(n, kQK8_0);
  for (int64_t b = 0; b < nb; ++b, y += kQK8_0) {
    const float d = f16(x[b].d);
    for (int j = 0; j < kQK8_0; ++j) y[j] = static_cast<float>(x[b].qs[j]) * d;
  }
}

void dequantize_row_q2_K(const BlockQ2_K* x, float* y, int64_t n) {
  const int64_t nb = block_count(n, kQK_K);
  for (int64_t b = 0; b < nb; ++b) {
    const float d = f16(x[b].d);
    const float dmin = f16(x[b].dmin);
    const uint8_t* q = x[b].qs;
    int is = 0;
    for (int half = 0; half < 2; ++half, q += 32) {  // 128 elements from 32 bytes of 2-bit values
      for (int shift = 0; shift < 8; shift += 2) {
        for (int part = 0; part < 2; ++part) {  // two sub-blocks of 16 with their own scale
          const uint8_t sc = x[b].scales[is++];
          const float dl = d * static_cast<float>(sc & 0xF);
          const float ml = dmin * static_cast<float>(sc >> 4);
          for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<float>((q[l + 16 * part] >> shift) & 3) - ml;
        }
      }
    }
  }
}

void dequantize_row_q3_K(const BlockQ3_K* x, float* y, int64_t n) {
  const int64_t nb = block_count(n, kQK_K);
  for (int64_t b = 0; b < nb; ++b) {
    const float d = f16(x[b].d);
    int scales[16];
    unpack_scales_q3_K(x[b].scales, scales);
    const uint8_t* q = x[b].qs;
    const uint8_t* hm = x[b].hmask;
    uint8_t mask = 1;
    int is = 0;
    for (int half = 0; half < 2; ++half, q += 32) {
      for (int shift = 0; shift < 8; shift += 2, mask = static_cast<uint8_t>(mask << 1)) {
        for (int part = 0; part < 2; ++part) {
          const float dl = d * static_cast<float>(scales[is++]);
          for (int l = 16 * part; l < 16 * part + 16; ++l) {
            const int value = ((q[l] >> shift) & 3) - ((hm[l] & mask) ? 0 : 4);
            *y++ = dl * static_cast<float>(value);
          }
        }
      }
    }
  }
}

void dequantize_row_q4_K(const BlockQ4_K* x, float* y, int64_t n) {
  const int64_t nb = block_count(n, kQK_K);
  for (int64_t b = 0; b < nb; ++b) {
    const float d = f16(x[b].d);
    const float dmin = f16(x[b].dmin);
    int sc[8], m[8];
    unpack_scales_mins_k4(x[b].scales, sc, m);
    const uint8_t* q = x[b].qs;
    for (int j = 0; j < 8; j += 2, q += 32) {  // 64 elements from 32 bytes: low then high nibbles
      const float d1 = d * static_cast<float>(sc[j]);
      const float m1 = dmin * static_cast<float>(m[j]);
      const float d2 = d * static_cast<float>(sc[j + 1]);
      const float m2 = dmin * static_cast<float>(m[j + 1]);
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void dequantize_row_q5_K(const BlockQ5_K* x, float* y, int64_t n) {
  const int64_t nb = block_count(n, kQK_K);
  for (int64_t b = 0; b < nb; ++b) {
    const float d = f16(x[b].d);
    const float dmin = f16(x[b].dmin);
    const uint8_t* ql = x[b].qs;
    const uint8_t* qh = x[b].qh;
    int sc[8], m[8];
    unpack_scales_mins_k4(x[b].scales, sc, m);
    uint8_t bit_low = 1, bit_high = 2;
    for (int j = 0; j < 8; j += 2, ql += 32) {
      const float d1 = d * static_cast<float>(sc[j]);
      const float m1 = dmin * static_cast<float>(m[j]);
      const float d2 = d * static_cast<float>(sc[j + 1]);
      const float m2 = dmin * static_cast<float>(m[j + 1]);
      for (int l = 0; l < 32; ++l) {
        *y++ = d1 * static_cast<float>((ql[l] & 0xF) + ((qh[l] & bit_low) ? 16 : 0)) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        *y++ = d2 * static_cast<float>((ql[l] >> 4) + ((qh[l] & bit_high) ? 16 : 0)) - m2;
      }
      bit_low = static_cast<uint8_t>(bit_low << 2);
      bit_high = static_cast<uint8_t>(bit_high << 2);
    }
  }
}

void dequantize_row_q6_K(const BlockQ6_K* x, float* y, int64_t n) {
  const int64_t nb = block_count(n, kQK_K);
  for (int64_t b = 0; b < nb; ++b) {
    const float d = f16(x[b].d);
    const uint8_t* ql = x[b].ql;
    const uint8_t* qh = x[b].qh;
    const int8_t* sc = x[b].scales;
    for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
        y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

void dequantize_row_q8_K(const BlockQ8_K* x, float* y, int64_t n) {
  const int64_t nb = block_count(n, kQK_K);
  for (int64_t b = 0; b < nb; ++b, y += kQK_K) {
    for (int j = 0; j < kQK_K; ++j) y[j] = x[b].d * static_cast<float>(x[b].qs[j]);
  }
}

// ---------------------------------------------------------------------------------------------
// Quantization

void quantize_row_f16(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

void quantize_row_bf16(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_bf16(x[i]);
}

void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n) {
  const int64_t nb = block_count(n, kQK4_0);
  for (int64_t b = 0; b < nb; ++b, x += kQK4_0) {
    // The element of largest magnitude maps to -8 exactly; its sign sets the sign of d.
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK4_0; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      const auto q0 = std::min<uint8_t>(15, static_cast<uint8_t>(static_cast<int8_t>(x[j] * id + 8.5f)));
      const auto q1 =
          std::min<uint8_t>(15, static_cast<uint8_t>(static_cast<int8_t>(x[j + kQK4_0 / 2] * id + 8.5f)));
      y[b].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void quantize_row_q4_1(const float* x, BlockQ4_1* y, int64_t n) {
  const int64_t nb = block_count(n, kQK4_1);
  for (int64_t b = 0; b < nb; ++b, x += kQK4_1) {
    float min = x[0], max = x[0];
    for (int j = 1; j < kQK4_1; ++j) {
      min = std::min(min, x[j]);
      max = std::max(max, x[j]);
    }
    const float d = (max - min) / 15;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    y[b].m = fp32_to_fp16(min);
    for (int j = 0; j < kQK4_1 / 2; ++j) {
      const auto q0 = std::min<uint8_t>(15, static_cast<uint8_t>(static_cast<int8_t>((x[j] - min) * id + 0.5f)));
      const auto q1 = std::min<uint8_t>(
          15, static_cast<uint8_t>(static_cast<int8_t>((x[j + kQK4_1 / 2] - min) * id + 0.5f)));
      y[b].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void quantize_row_q5_0(const float* x, BlockQ5_0* y, int64_t n) {
  const int64_t nb = block_count(n, kQK5_0);
  for (int64_t b = 0; b < nb; ++b, x += kQK5_0) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK5_0; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -16;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    uint32_t qh = 0;
    for (int j = 0; j < kQK5_0 / 2; ++j) {
      const auto q0 = std::min<uint8_t>(31, static_cast<uint8_t>(static_cast<int8_t>(x[j] * id + 16.5f)));
      const auto q1 =
          std::min<uint8_t>(31, static_cast<uint8_t>(static_cast<int8_t>(x[j + kQK5_0 / 2] * id + 16.5f)));
      y[b].qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= static_cast<uint32_t>((q0 & 0x10) >> 4) << j;
      qh |= static_cast<uint32_t>((q1 & 0x10) >> 4) << (j + kQK5_0 / 2);
    }
    std::memcpy(y[b].qh, &qh, sizeof(qh));
  }
}

void quantize_row_q5_1(const float* x, BlockQ5_1* y, int64_t n) {
  const int64_t nb = block_count(n, kQK5_1);
  for (int64_t b = 0; b < nb; ++b, x += kQK5_1) {
    float min = x[0], max = x[0];
    for (int j = 1; j < kQK5_1; ++j) {
      min = std::min(min, x[j]);
      max = std::max(max, x[j]);
    }
    const float d = (max - min) / 31;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    y[b].m = fp32_to_fp16(min);
    uint32_t qh = 0;
    for (int j = 0; j < kQK5_1 / 2; ++j) {
      const auto q0 = std::min<uint8_t>(31, static_cast<uint8_t>(static_cast<int8_t>((x[j] - min) * id + 0.5f)));
      const auto q1 = std::min<uint8_t>(
          31, static_cast<uint8_t>(static_cast<int8_t>((x[j + kQK5_1 / 2] - min) * id + 0.5f)));
      y[b].qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= static_cast<uint32_t>((q0 & 0x10) >> 4) << j;
      qh |= static_cast<uint32_t>((q1 & 0x10) >> 4) << (j + kQK5_1 / 2);
    }
    std::memcpy(y[b].qh, &qh, sizeof(qh));
  }
}

void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n) { quantize_q8_blocks<false>(x, y, n); }

void quantize_row_q8_1(const float* x, BlockQ8_1* y, int64_t n) { quantize_q8_blocks<false>(x, y, n); }

void quantize_row_q8_K(const float* x, BlockQ8_K* y, int64_t n) {
  const int64_t nb = block_count(n, kQK_K);
  for (int64_t b = 0; b < nb; ++b, x += kQK_K) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK_K; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    if (amax == 0.0f) {
      y[b].d = 0.0f;
      std::memset(y[b].qs, 0, sizeof(y[b].qs));
      std::memset(y[b].bsums, 0, sizeof(y[b].bsums));
      continue;
    }
    // The largest-magnitude element maps to -127 (the sign is folded into d), so the range of
    // q is [-127, 128) and clamping at 127 only touches values that rounded past it.
    const float iscale = -127.0f / max;
    for (int j = 0; j < kQK_K; ++j) y[b].qs[j] = static_cast<int8_t>(std::min(127, nearest_int_even(iscale * x[j])));
    for (int g = 0; g < kQK_K / 16; ++g) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += y[b].qs[16 * g + l];
      y[b].bsums[g] = static_cast<int16_t>(sum);
    }
    y[b].d = 1.0f / iscale;
  }
}

void quantize_activations_q8_0(const float* x, BlockQ8_0* y, int64_t n) { quantize_q8_blocks<true>(x, y, n); }

void quantize_activations_q8_1(const float* x, BlockQ8_1* y, int64_t n) { quantize_q8_blocks<true>(x, y, n); }

void quantize_activations(DType type, const float* src, void* dst, int64_t n) {
  switch (type) {
    case DType::Q8_0: return quantize_activations_q8_0(src, static_cast<BlockQ8_0*>(dst), n);
    case DType::Q8_1: return quantize_activations_q8_1(src, static_cast<BlockQ8_1*>(dst), n);
    case DType::Q8_K: return quantize_row_q8_K(src, static_cast<BlockQ8_K*>(dst), n);
    case DType::F16: return quantize_row_f16(src, static_cast<uint16_t*>(dst), n);
    case DType::BF16: return quantize_row_bf16(src, static_cast<uint16_t*>(dst), n);
    case DType::F32: return dequantize_row_f32(src, static_cast<float*>(dst), n);
    default: break;
  }
  HEARTH_CHECK(false, "{} is not an activation format", dtype_name(type));
}

// ---------------------------------------------------------------------------------------------
// Type-erased dispatch

bool can_dequantize(DType type) {
  switch (type) {
    case DType::F32:
    case DType::F16:
    case DType::BF16:
    case DType::Q4_0:
    case DType::Q4_1:
    case DType::Q5_0:
    case DType::Q5_1:
    case DType::Q8_0:
    case DType::Q8_1:
    case DType::Q2_K:
    case DType::Q3_K:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K:
    case DType::Q8_K:
      return true;
    default:
      return false;
  }
}

bool can_quantize(DType type) {
  switch (type) {
    case DType::F32:
    case DType::F16:
    case DType::BF16:
    case DType::Q4_0:
    case DType::Q4_1:
    case DType::Q5_0:
    case DType::Q5_1:
    case DType::Q8_0:
    case DType::Q8_1:
    case DType::Q8_K:
      return true;
    default:
      return false;
  }
}

void dequantize_row(DType type, const void* src, float* dst, int64_t n) {
  switch (type) {
    case DType::F32: return dequantize_row_f32(static_cast<const float*>(src), dst, n);
    case DType::F16: return dequantize_row_f16(static_cast<const uint16_t*>(src), dst, n);
    case DType::BF16: return dequantize_row_bf16(static_cast<const uint16_t*>(src), dst, n);
    case DType::Q4_0: return dequantize_row_q4_0(static_cast<const BlockQ4_0*>(src), dst, n);
    case DType::Q4_1: return dequantize_row_q4_1(static_cast<const BlockQ4_1*>(src), dst, n);
    case DType::Q5_0: return dequantize_row_q5_0(static_cast<const BlockQ5_0*>(src), dst, n);
    case DType::Q5_1: return dequantize_row_q5_1(static_cast<const BlockQ5_1*>(src), dst, n);
    case DType::Q8_0: return dequantize_row_q8_0(static_cast<const BlockQ8_0*>(src), dst, n);
    case DType::Q8_1: return dequantize_row_q8_1(static_cast<const BlockQ8_1*>(src), dst, n);
    case DType::Q2_K: return dequantize_row_q2_K(static_cast<const BlockQ2_K*>(src), dst, n);
    case DType::Q3_K: return dequantize_row_q3_K(static_cast<const BlockQ3_K*>(src), dst, n);
    case DType::Q4_K: return dequantize_row_q4_K(static_cast<const BlockQ4_K*>(src), dst, n);
    case DType::Q5_K: return dequantize_row_q5_K(static_cast<const BlockQ5_K*>(src), dst, n);
    case DType::Q6_K: return dequantize_row_q6_K(static_cast<const BlockQ6_K*>(src), dst, n);
    case DType::Q8_K: return dequantize_row_q8_K(static_cast<const BlockQ8_K*>(src), dst, n);
    default: break;
  }
  HEARTH_CHECK(false, "no reference dequantizer for {}", dtype_name(type));
}

void quantize_row(DType type, const float* src, void* dst, int64_t n) {
  switch (type) {
    case DType::F32: return dequantize_row_f32(src, static_cast<float*>(dst), n);  // a plain copy
    case DType::F16: return quantize_row_f16(src, static_cast<uint16_t*>(dst), n);
    case DType::BF16: return quantize_row_bf16(src, static_cast<uint16_t*>(dst), n);
    case DType::Q4_0: return quantize_row_q4_0(src, static_cast<BlockQ4_0*>(dst), n);
    case DType::Q4_1: return quantize_row_q4_1(src, static_cast<BlockQ4_1*>(dst), n);
    case DType::Q5_0: return quantize_row_q5_0(src, static_cast<BlockQ5_0*>(dst), n);
    case DType::Q5_1: return quantize_row_q5_1(src, static_cast<BlockQ5_1*>(dst), n);
    case DType::Q8_0: return quantize_row_q8_0(src, static_cast<BlockQ8_0*>(dst), n);
    case DType::Q8_1: return quantize_row_q8_1(src, static_cast<BlockQ8_1*>(dst), n);
    case DType::Q8_K: return quantize_row_q8_K(src, static_cast<BlockQ8_K*>(dst), n);
    default: break;
  }
  HEARTH_CHECK(false, "no reference quantizer for {}", dtype_name(type));
}

}  // namespace hearth::kernels::ref
