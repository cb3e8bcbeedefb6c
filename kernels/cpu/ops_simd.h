// Dispatch of the CPU backend's vector kernels other than the dot products of matmul: the
// pieces of attention over the KV cache, f32 -> f16 stores, RMSNorm rows and the gated
// activations. Per CPU level the best kernel (AVX2 / AVX-512 on x86, NEON on aarch64, plain
// C++ otherwise); kernels/cpu/cpu_backend.cpp drives them, tests pick levels directly.
//
// Attention contracts — what lets a token's result be bit-identical in any batch, with any
// number of threads and with any prefill chunking (tests/kernels/test_attention.cpp checks it):
//  - qk: each score is a function of q and its own row only (its place in the call, the row
//    count and whether rows are f16 or their exact f32 conversion do not change one bit).
//  - pv: each out[d] is updated by one multiply-add per row, rows in ascending order, whatever
//    the chunk of rows or dimensions it runs in (so a row range may be split into blocks).
//  - softmax: a function of its n scores and its arguments only.
// Arithmetic: float products with float partial sums in the level's lane order, then a fixed
// reduction tree; fused multiply-adds on the SIMD levels, separate multiply and add on the
// scalar level. Sums of exponentials in double, as ref::attention_head does.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/cpu_features.h"

namespace hearth::kernels {

struct OpsKernels {
  // scores[j] = sum_d q[d] * row_j[d] for j in [0, n), row_j = k + j * stride, d in [0, head_dim).
  void (*qk_f16)(const float* q, const uint16_t* k, size_t stride, int64_t n, int64_t head_dim, float* scores);
  void (*qk_f32)(const float* q, const float* k, size_t stride, int64_t n, int64_t head_dim, float* scores);
  // The q8_0 cache's scores (ggml's q8_0 x q8_0 dot): q and each row are head_dim / 32 Q8_0
  // blocks (row_j = k + j * stride blocks); scores[j] = sum over blocks b of
  // float(sum_i q_b[i] * row_jb[i]) * (d(q_b) * d(row_jb)), the integer sums exact, the float
  // terms added in the level's lane order and then a fixed tree.
  void (*qk_q8_0)(const void* q, const void* k, size_t stride, int64_t n, int64_t head_dim, float* scores);
  // out[d] += sum_j p[j] * row_j[d] for d in [0, head_dim), j ascending, row_j = v + j * stride.
  void (*pv_f16)(const float* p, const uint16_t* v, size_t stride, int64_t n, int64_t head_dim, float* out);
  void (*pv_f32)(const float* p, const float* v, size_t stride, int64_t n, int64_t head_dim, float* out);
  // The same for two queries over the same rows, bit-identical to two calls of the kernels above
  // (scores0 / out0 belong to q0 / p0); where the level can, each row is loaded and widened once
  // for both.
  void (*qk2_f16)(const float* q0, const float* q1, const uint16_t* k, size_t stride, int64_t n, int64_t head_dim,
                  float* scores0, float* scores1);
  void (*qk2_f32)(const float* q0, const float* q1, const float* k, size_t stride, int64_t n, int64_t head_dim,
                  float* scores0, float* scores1);
  void (*pv2_f16)(const float* p0, const float* p1, const uint16_t* v, size_t stride, int64_t n, int64_t head_dim,
                  float* out0, float* out1);
  void (*pv2_f32)(const float* p0, const float* p1, const float* v, size_t stride, int64_t n, int64_t head_dim,
                  float* out0, float* out1);
  // In place, n >= 1 raw q.k dot products -> probabilities: s = dot * scale, then
  // s = softcap * tanh(s / softcap) when softcap > 0, then exp(s - max) / sum, rounded to f16
  // when half (an f16 cache: p enters the p.V product as f16, as in ggml).
  void (*softmax)(float* s, int64_t n, float scale, float softcap, bool half);
  // y[i] = exp(x[i]) (the exponential softmax and silu use; exposed for tests).
  void (*exp)(const float* x, float* y, int64_t n);
  // y[i] = x[i] rounded to the nearest f16 (ties to even), bytes identical to core/fp16.h's
  // fp32_to_fp16 for every input (subnormals, infinities, NaNs).
  void (*f32_to_f16)(const float* x, uint16_t* y, int64_t n);
  // x[i] = the float nearest-even f16 value of x[i] (fp16_to_fp32(fp32_to_fp16(x[i]))), in place.
  void (*round_f16)(float* x, int64_t n);
  // y[i] = d * q[i] of the Q8_0 blocks at x (n a multiple of 32): a q8_0 KV cache's V rows for
  // the f32 p.V kernels. Exact (an f16 scale times an int8 fits a float), so every level gives
  // the same bits.
  void (*dequantize_q8_0)(const void* x, float* y, int64_t n);
  // ref::rms_norm_row: squares in float, summed in double (lane order of the level); weight may be null.
  void (*rms_norm_row)(const float* x, const float* weight, float eps, float* y, int64_t n);
  // y[i] = silu(g[i]) * u[i]   (silu(x) = x / (1 + exp(-x)))
  void (*silu_mul)(const float* g, const float* u, float* y, int64_t n);
  // y[i] = ref::gelu_tanh(g[i]) * u[i], bit for bit (GELU from a table of every f16 value).
  void (*gelu_mul)(const float* g, const float* u, float* y, int64_t n);
  bool simd = false;  // false: the plain C++ kernels
};

// The kernels of `level` (which the caller has checked the CPU supports: cpu_level_supported()).
const OpsKernels& ops_kernels(CpuLevel level);

// ref::gelu_tanh at every f16 input: table[h] = gelu_tanh_exact(f16 h) rounded to f16, as a float
// (65536 entries, built on first use). ref::gelu_tanh(x) = table[fp32_to_fp16(x)] for |x| < 10.
const float* gelu_f16_table();

}  // namespace hearth::kernels
