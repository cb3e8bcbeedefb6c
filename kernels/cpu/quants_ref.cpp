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

// ---------------------------------------------------------------------------------------------
// K-quant fitting. A k-quant super-block of 256 values holds sub-blocks of 16 or 32, each with
// its own scale (and, for Q2_K / Q4_K / Q5_K, its own minimum); those are themselves quantized
// against one or two f16 super-block scales. The quantizers below work in three steps:
//   1. per sub-block, fit a scale (and offset) in floating point: a few starting points, each
//      followed by a least-squares refit given the integer levels it produced; keep the one of
//      least squared error;
//   2. quantize the sub-block scales against the super-block scale (d = largest / levels), each
//      integer chosen by error between its two neighbours;
//   3. choose each element's level with the *effective* scales the dequantizer will compute
//      (f16-rounded d times the integer sub-block scale).
// Errors are unweighted squared errors; synthetic weights need no importance matrix.

// x ~= scale * q - offset with q in [0, nmax]: the Q2_K / Q4_K / Q5_K sub-block model. Both are
// non-negative (the formats store unsigned sub-block scales and minimums).
struct AffineFit {
  float scale = 0.0f;
  float offset = 0.0f;
};

// Round half away from zero without a library call (the scale search rounds millions of times
// per tensor; its choices need no particular tie rule).
int round_fast(float v) { return static_cast<int>(v + std::copysign(0.5f, v)); }

float inverse(float scale) { return scale != 0.0f ? 1.0f / scale : 0.0f; }

// The level of x in an affine sub-block of inverse scale `inv` (0: every level 0), clamped
// before the conversion to int so that no quotient overflows it.
int level_affine(float x, float inv, float offset, int nmax) {
  return round_fast(std::clamp((x + offset) * inv, 0.0f, static_cast<float>(nmax)));
}

// Float arithmetic: sub-blocks are 16 or 32 values, and float keeps the loop vectorizable.
double affine_error(const float* x, int n, int nmax, AffineFit f) {
  const float inv = f.scale > 0.0f ? inverse(f.scale) : 0.0f;
  float err = 0;
  for (int i = 0; i < n; ++i) {
    const float e = f.scale * static_cast<float>(level_affine(x[i], inv, f.offset, nmax)) - f.offset - x[i];
    err += e * e;
  }
  return err;
}

// Least-squares (scale, offset) for the levels that `f` gives, with offset >= 0; `f` itself
// when the levels do not determine a positive scale.
AffineFit refit_affine(const float* x, int n, int nmax, AffineFit f) {
  const float inv = f.scale > 0.0f ? inverse(f.scale) : 0.0f;
  float fsq = 0, fsqq = 0, fsx = 0, fsqx = 0;
  for (int i = 0; i < n; ++i) {
    const auto q = static_cast<float>(level_affine(x[i], inv, f.offset, nmax));
    fsq += q;
    fsqq += q * q;
    fsx += x[i];
    fsqx += q * x[i];
  }
  const double sq = fsq, sqq = fsqq, sx = fsx, sqx = fsqx;
  const double det = n * sqq - sq * sq;
  if (det <= 0) return f;  // every element on one level
  double scale = (n * sqx - sq * sx) / det;
  double offset = (scale * sq - sx) / n;
  if (offset < 0) {  // a minimum above zero cannot be stored: fit the scale alone
    offset = 0;
    scale = sqx / sqq;
  }
  if (!(scale > 0)) return f;
  return {static_cast<float>(scale), static_cast<float>(offset)};
}

AffineFit fit_affine(const float* x, int n, int nmax) {
  float lo = 0.0f, hi = x[0];
  for (int i = 0; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  if (hi <= lo) return {0.0f, -lo};  // every element equal to lo <= 0: the offset alone is exact
  AffineFit best{(hi - lo) / static_cast<float>(nmax), -lo};
  double best_err = affine_error(x, n, nmax, best);
  // Starting points: the full range, then ranges narrowed by up to a quarter (clipping the
  // extremes buys finer steps for the bulk of a bell-shaped sub-block).
  for (int t = 0; t < 4; ++t) {
    const float shrink = 1.0f - 0.08f * static_cast<float>(t);
    AffineFit f{(hi - lo) * shrink / static_cast<float>(nmax), -lo * shrink};
    for (int iter = 0; iter < 2; ++iter) f = refit_affine(x, n, nmax, f);
    const double err = affine_error(x, n, nmax, f);
    if (err < best_err) {
      best_err = err;
      best = f;
    }
  }
  return best;
}

// x ~= scale * q with q in [-nneg, npos]: the Q3_K / Q6_K sub-block model. The scale carries the
// sign, so the element of largest magnitude can use the longer (negative) side of the range.
int level_symmetric(float x, float inv, int nneg, int npos) {
  return round_fast(std::clamp(x * inv, static_cast<float>(-nneg), static_cast<float>(npos)));
}

double symmetric_error(const float* x, int n, int nneg, int npos, float scale) {
  const float inv = inverse(scale);
  float err = 0;
  for (int i = 0; i < n; ++i) {
    const float e = scale * static_cast<float>(level_symmetric(x[i], inv, nneg, npos)) - x[i];
    err += e * e;
  }
  return err;
}

float fit_symmetric(const float* x, int n, int nneg, int npos) {
  float amax = 0.0f, max = 0.0f;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  if (amax == 0.0f) return 0.0f;
  const float to_neg = max / static_cast<float>(-nneg);  // the largest magnitude on -nneg exactly
  float best = to_neg;
  double best_err = symmetric_error(x, n, nneg, npos, best);
  // Starting points: the largest magnitude on +npos, then on -nneg with the range narrowed by
  // 0 to 14 %; each refit by least squares given its levels.
  for (int t = 0; t < 4; ++t) {
    float scale = t == 0 ? max / static_cast<float>(npos) : to_neg * (1.0f - 0.07f * static_cast<float>(t - 1));
    for (int iter = 0; iter < 2; ++iter) {
      const float inv = inverse(scale);
      float sqq = 0, sqx = 0;
      for (int i = 0; i < n; ++i) {
        const auto q = static_cast<float>(level_symmetric(x[i], inv, nneg, npos));
        sqq += q * q;
        sqx += q * x[i];
      }
      if (sqq > 0) scale = sqx / sqq;
    }
    const double err = symmetric_error(x, n, nneg, npos, scale);
    if (err < best_err) {
      best_err = err;
      best = scale;
    }
  }
  return best;
}

// Step 2 for an affine sub-block: the integer scale and minimum, against the (f16-rounded)
// super-block scales d and dmin, of least error. The candidates are the integers either side of
// scale / d and offset / dmin, with a non-zero scale kept non-zero (rounding it to 0 flattens
// the sub-block, which costs more than the coarse step of scale 1 next to an outlier's
// sub-block), plus the flat sub-block at its mean for when even that step is too coarse.
void affine_levels(const float* x, int n, int nmax, AffineFit fit, float d, float dmin, int max_level, int& sc,
                   int& mn) {
  const auto candidates = [max_level](float value, float unit, bool keep_nonzero, int out[2]) {
    if (unit <= 0.0f || value <= 0.0f) {
      out[0] = out[1] = 0;
      return;
    }
    const int lo = static_cast<int>(std::floor(value / unit));
    out[0] = std::clamp(lo, keep_nonzero ? 1 : 0, max_level);
    out[1] = std::clamp(lo + 1, keep_nonzero ? 1 : 0, max_level);
  };
  int scs[2], mns[2];
  candidates(fit.scale, d, true, scs);
  candidates(fit.offset, dmin, false, mns);
  double best = -1;
  const auto consider = [&](int a, int b) {
    const double err = affine_error(x, n, nmax, {d * static_cast<float>(a), dmin * static_cast<float>(b)});
    if (best < 0 || err < best) {
      best = err;
      sc = a;
      mn = b;
    }
  };
  for (int a : scs) {
    for (int b : mns) consider(a, b);
  }
  // Flat after all, when even scale 1 is too coarse: the constant nearest the sub-block's mean.
  double mean = 0;
  for (int i = 0; i < n; ++i) mean += x[i];
  mean /= n;
  consider(0, dmin > 0.0f && mean < 0 ? std::clamp(nearest_int(static_cast<float>(-mean) / dmin), 0, max_level) : 0);
}

// Step 2 for a symmetric sub-block: the integer scale in [lo, hi] of least error against d, from
// the integers either side of scale / d, never 0 for a non-zero scale.
int symmetric_level(const float* x, int n, int nneg, int npos, float scale, float d, int lo, int hi) {
  if (d == 0.0f || scale == 0.0f) return 0;
  const float r = scale / d;
  int a = static_cast<int>(std::floor(r)), b = a + 1;
  if (a == 0) a = 1;   // scale > 0
  if (b == 0) b = -1;  // scale < 0
  a = std::clamp(a, lo, hi);
  b = std::clamp(b, lo, hi);
  const double ea = symmetric_error(x, n, nneg, npos, d * static_cast<float>(a));
  const double eb = symmetric_error(x, n, nneg, npos, d * static_cast<float>(b));
  return eb < ea ? b : a;
}

// The 8 six-bit scales and minimums of a Q4_K / Q5_K block into 12 bytes: the inverse of
// unpack_scales_mins_k4 (core/quant_blocks.h).
void pack_scales_mins_k4(const int scale[8], const int min[8], uint8_t* q) {
  for (int j = 0; j < 4; ++j) {
    q[j] = static_cast<uint8_t>(scale[j] | ((scale[j + 4] >> 4) << 6));
    q[j + 4] = static_cast<uint8_t>(min[j] | ((min[j + 4] >> 4) << 6));
    q[j + 8] = static_cast<uint8_t>((scale[j + 4] & 0xF) | ((min[j + 4] & 0xF) << 4));
  }
}

// Q4_K / Q5_K share their scale structure: 8 sub-blocks of 32 with 6-bit scales and minimums.
// Writes d, dmin and the packed scales of one block; `levels` receives each element's level in
// [0, nmax].
template <class Block>
void quantize_k4_scales(const float* x, int nmax, Block& y, uint8_t levels[kQK_K]) {
  AffineFit fits[8];
  float max_scale = 0.0f, max_offset = 0.0f;
  for (int j = 0; j < 8; ++j) {
    fits[j] = fit_affine(x + 32 * j, 32, nmax);
    max_scale = std::max(max_scale, fits[j].scale);
    max_offset = std::max(max_offset, fits[j].offset);
  }
  y.d = fp32_to_fp16(max_scale / 63);
  y.dmin = fp32_to_fp16(max_offset / 63);
  const float d = f16(y.d), dmin = f16(y.dmin);
  int sc[8], mn[8];
  for (int j = 0; j < 8; ++j) {
    affine_levels(x + 32 * j, 32, nmax, fits[j], d, dmin, 63, sc[j], mn[j]);
    const float scale = d * static_cast<float>(sc[j]), offset = dmin * static_cast<float>(mn[j]);
    for (int l = 0; l < 32; ++l) {
      levels[32 * j + l] = static_cast<uint8_t>(level_affine(x[32 * j + l], inverse(scale), offset, nmax));
    }
  }
  pack_scales_mins_k4(sc, mn, y.scales);
}

// Q3_K / Q6_K: 16 sub-blocks of 16 with signed integer scales in [scale_lo, scale_hi] against d.
// Returns d (as stored, f16) and fills `scales` and each element's level in [-nneg, npos].
uint16_t quantize_k16_symmetric(const float* x, int nneg, int npos, int scale_lo, int scale_hi, int scales[16],
                                int levels[kQK_K]) {
  float fits[16];
  float max_abs = 0.0f;
  for (int i = 0; i < 16; ++i) {
    fits[i] = fit_symmetric(x + 16 * i, 16, nneg, npos);
    max_abs = std::max(max_abs, std::fabs(fits[i]));
  }
  const uint16_t d_bits = fp32_to_fp16(max_abs / static_cast<float>(scale_hi));
  const float d = f16(d_bits);
  for (int i = 0; i < 16; ++i) {
    scales[i] = symmetric_level(x + 16 * i, 16, nneg, npos, fits[i], d, scale_lo, scale_hi);
    const float scale = d * static_cast<float>(scales[i]);
    for (int l = 0; l < 16; ++l) levels[16 * i + l] = level_symmetric(x[16 * i + l], inverse(scale), nneg, npos);
  }
  return d_bits;
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

// K-quants. Element e of a 256-value block sits, in Q2_K's and Q3_K's 2-bit array, in byte
// 32 * (e / 128) + e % 32 at bit 2 * ((e % 128) / 32); see the dequantizers above.

void quantize_row_q2_K(const float* x, BlockQ2_K* y, int64_t n) {
  const int64_t nb = block_count(n, kQK_K);
  for (int64_t b = 0; b < nb; ++b, x += kQK_K) {
    AffineFit fits[16];
    float max_scale = 0.0f, max_offset = 0.0f;
    for (int i = 0; i < 16; ++i) {
      fits[i] = fit_affine(x + 16 * i, 16, 3);
      max_scale = std::max(max_scale, fits[i].scale);
      max_offset = std::max(max_offset, fits[i].offset);
    }
    y[b].d = fp32_to_fp16(max_scale / 15);
    y[b].dmin = fp32_to_fp16(max_offset / 15);
    const float d = f16(y[b].d), dmin = f16(y[b].dmin);
    std::memset(y[b].qs, 0, sizeof(y[b].qs));
    for (int i = 0; i < 16; ++i) {
      int sc = 0, mn = 0;
      affine_levels(x + 16 * i, 16, 3, fits[i], d, dmin, 15, sc, mn);
      y[b].scales[i] = static_cast<uint8_t>(sc | (mn << 4));
      const float scale = d * static_cast<float>(sc), offset = dmin * static_cast<float>(mn);
      for (int l = 0; l < 16; ++l) {
        const int e = 16 * i + l;
        const int q = level_affine(x[e], inverse(scale), offset, 3);
        y[b].qs[32 * (e / 128) + e % 32] |= static_cast<uint8_t>(q << (2 * ((e % 128) / 32)));
      }
    }
  }
}

void quantize_row_q3_K(const float* x, BlockQ3_K* y, int64_t n) {
  const int64_t nb = block_count(n, kQK_K);
  for (int64_t b = 0; b < nb; ++b, x += kQK_K) {
    int scales[16], levels[kQK_K];
    y[b].d = quantize_k16_symmetric(x, 4, 3, -32, 31, scales, levels);
    // Stored scale s + 32 (6 bits): low nibbles two to a byte in bytes 0..7 (sub-block i and
    // i + 8), high pairs four to a byte in bytes 8..11 (i, i + 4, i + 8, i + 12).
    std::memset(y[b].scales, 0, sizeof(y[b].scales));
    for (int i = 0; i < 16; ++i) {
      const int u = scales[i] + 32;
      y[b].scales[i % 8] |= static_cast<uint8_t>((u & 0xF) << (4 * (i / 8)));
      y[b].scales[8 + i % 4] |= static_cast<uint8_t>((u >> 4) << (2 * (i / 4)));
    }
    // Level q in [-4, 3] is stored as q + 4: two low bits in qs, the third in hmask (set: no -4).
    std::memset(y[b].qs, 0, sizeof(y[b].qs));
    std::memset(y[b].hmask, 0, sizeof(y[b].hmask));
    for (int e = 0; e < kQK_K; ++e) {
      const int u = levels[e] + 4;
      const int part = (e % 128) / 32;
      y[b].qs[32 * (e / 128) + e % 32] |= static_cast<uint8_t>((u & 3) << (2 * part));
      if ((u & 4) != 0) y[b].hmask[e % 32] |= static_cast<uint8_t>(1 << (4 * (e / 128) + part));
    }
  }
}

void quantize_row_q4_K(const float* x, BlockQ4_K* y, int64_t n) {
  const int64_t nb = block_count(n, kQK_K);
  for (int64_t b = 0; b < nb; ++b, x += kQK_K) {
    uint8_t levels[kQK_K];
    quantize_k4_scales(x, 15, y[b], levels);
    // Each 32 bytes hold 64 values: sub-block 2p in the low nibbles, 2p + 1 in the high ones.
    for (int p = 0; p < 4; ++p) {
      for (int l = 0; l < 32; ++l) {
        y[b].qs[32 * p + l] = static_cast<uint8_t>(levels[64 * p + l] | (levels[64 * p + 32 + l] << 4));
      }
    }
  }
}

void quantize_row_q5_K(const float* x, BlockQ5_K* y, int64_t n) {
  const int64_t nb = block_count(n, kQK_K);
  for (int64_t b = 0; b < nb; ++b, x += kQK_K) {
    uint8_t levels[kQK_K];
    quantize_k4_scales(x, 31, y[b], levels);
    // As Q4_K for the low four bits; the fifth bit of element l of sub-block j is bit j of qh[l].
    std::memset(y[b].qh, 0, sizeof(y[b].qh));
    for (int p = 0; p < 4; ++p) {
      for (int l = 0; l < 32; ++l) {
        const int lo = levels[64 * p + l], hi = levels[64 * p + 32 + l];
        y[b].qs[32 * p + l] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
        y[b].qh[l] |= static_cast<uint8_t>(((lo >> 4) << (2 * p)) | ((hi >> 4) << (2 * p + 1)));
      }
    }
  }
}

void quantize_row_q6_K(const float* x, BlockQ6_K* y, int64_t n) {
  const int64_t nb = block_count(n, kQK_K);
  for (int64_t b = 0; b < nb; ++b, x += kQK_K) {
    int scales[16], levels[kQK_K];
    y[b].d = quantize_k16_symmetric(x, 32, 31, -127, 127, scales, levels);
    for (int i = 0; i < 16; ++i) y[b].scales[i] = static_cast<int8_t>(scales[i]);
    // Level q in [-32, 31] is stored as q + 32: per 128 values, element l + 32k (k = 0..3) keeps
    // its low nibble in ql[l + 32 * (k & 1)] (low half for k < 2) and its top two bits at bit 2k
    // of qh[l].
    for (int half = 0; half < 2; ++half) {
      const int* u = levels + 128 * half;
      uint8_t* ql = y[b].ql + 64 * half;
      uint8_t* qh = y[b].qh + 32 * half;
      for (int l = 0; l < 32; ++l) {
        const int u0 = u[l] + 32, u1 = u[l + 32] + 32, u2 = u[l + 64] + 32, u3 = u[l + 96] + 32;
        ql[l] = static_cast<uint8_t>((u0 & 0xF) | ((u2 & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((u1 & 0xF) | ((u3 & 0xF) << 4));
        qh[l] = static_cast<uint8_t>((u0 >> 4) | ((u1 >> 4) << 2) | ((u2 >> 4) << 4) | ((u3 >> 4) << 6));
      }
    }
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
    case DType::Q2_K: return quantize_row_q2_K(src, static_cast<BlockQ2_K*>(dst), n);
    case DType::Q3_K: return quantize_row_q3_K(src, static_cast<BlockQ3_K*>(dst), n);
    case DType::Q4_K: return quantize_row_q4_K(src, static_cast<BlockQ4_K*>(dst), n);
    case DType::Q5_K: return quantize_row_q5_K(src, static_cast<BlockQ5_K*>(dst), n);
    case DType::Q6_K: return quantize_row_q6_K(src, static_cast<BlockQ6_K*>(dst), n);
    case DType::Q8_K: return quantize_row_q8_K(src, static_cast<BlockQ8_K*>(dst), n);
    default: break;
  }
  HEARTH_CHECK(false, "no reference quantizer for {}", dtype_name(type));
}

}  // namespace hearth::kernels::ref
