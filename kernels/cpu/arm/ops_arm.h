// aarch64 SIMD kernels of the non-matmul ops (kernels/cpu/ops_simd.h has the contracts):
// ops_neon.cpp, baseline armv8-a (Advanced SIMD and the f16 conversions are part of it), serves
// both aarch64 levels; kernels/cpu/ops_simd.cpp is the only caller.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hearth::kernels::arm::neon {
void qk_f16(const float* q, const uint16_t* k, size_t stride, int64_t n, int64_t head_dim, float* scores);
void qk_f32(const float* q, const float* k, size_t stride, int64_t n, int64_t head_dim, float* scores);
void qk_q8_0(const void* q, const void* k, size_t stride, int64_t n, int64_t head_dim, float* scores);
void pv_f16(const float* p, const uint16_t* v, size_t stride, int64_t n, int64_t head_dim, float* out);
void pv_f32(const float* p, const float* v, size_t stride, int64_t n, int64_t head_dim, float* out);
void softmax(float* s, int64_t n, float scale, float softcap, bool half);
void exp(const float* x, float* y, int64_t n);
void f32_to_f16(const float* x, uint16_t* y, int64_t n);
void round_f16(float* x, int64_t n);
void dequantize_q8_0(const void* x, float* y, int64_t n);
void rms_norm_row(const float* x, const float* weight, float eps, float* y, int64_t n);
void silu_mul(const float* g, const float* u, float* y, int64_t n);
void gelu_mul(const float* g, const float* u, float* y, int64_t n);
}  // namespace hearth::kernels::arm::neon
