// x86 SIMD kernels of the non-matmul ops (kernels/cpu/ops_simd.h has the contracts), one
// namespace per level like the dot products (kernels/cpu/x86/dot_x86.h): ops_avx2.cpp
// (AVX2 + FMA + F16C) and ops_avx512.cpp (adds AVX-512 F/BW/VL) compile ops_x86_impl.h with
// their own flags, so a function here may only be called after kernels::cpu_level() said the
// CPU has those instructions: kernels/cpu/ops_simd.cpp is the only caller.
#pragma once

#include <cstddef>
#include <cstdint>

#define HEARTH_X86_DECLARE_OPS(ns)                                                                             \
  namespace hearth::kernels::x86::ns {                                                                         \
  void qk_f16(const float* q, const uint16_t* k, size_t stride, int64_t n, int64_t head_dim, float* scores); \
  void qk_f32(const float* q, const float* k, size_t stride, int64_t n, int64_t head_dim, float* scores);    \
  void qk_q8_0(const void* q, const void* k, size_t stride, int64_t n, int64_t head_dim, float* scores);     \
  void pv_f16(const float* p, const uint16_t* v, size_t stride, int64_t n, int64_t head_dim, float* out);    \
  void pv_f32(const float* p, const float* v, size_t stride, int64_t n, int64_t head_dim, float* out);       \
  void qk2_f16(const float* q0, const float* q1, const uint16_t* k, size_t stride, int64_t n, int64_t head_dim, \
               float* scores0, float* scores1);                                                              \
  void qk2_f32(const float* q0, const float* q1, const float* k, size_t stride, int64_t n, int64_t head_dim,    \
               float* scores0, float* scores1);                                                              \
  void pv2_f16(const float* p0, const float* p1, const uint16_t* v, size_t stride, int64_t n, int64_t head_dim, \
               float* out0, float* out1);                                                                    \
  void pv2_f32(const float* p0, const float* p1, const float* v, size_t stride, int64_t n, int64_t head_dim,    \
               float* out0, float* out1);                                                                    \
  void softmax(float* s, int64_t n, float scale, float softcap, bool half);                                  \
  void exp(const float* x, float* y, int64_t n);                                                             \
  void f32_to_f16(const float* x, uint16_t* y, int64_t n);                                                   \
  void round_f16(float* x, int64_t n);                                                                        \
  void dequantize_q8_0(const void* x, float* y, int64_t n);                                                  \
  void rms_norm_row(const float* x, const float* weight, float eps, float* y, int64_t n);                    \
  void silu_mul(const float* g, const float* u, float* y, int64_t n);                                        \
  void gelu_mul(const float* g, const float* u, float* y, int64_t n);                                        \
  }

HEARTH_X86_DECLARE_OPS(avx2)
HEARTH_X86_DECLARE_OPS(avx512)
#undef HEARTH_X86_DECLARE_OPS
