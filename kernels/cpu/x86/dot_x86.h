// x86 SIMD dot products and activation quantizers, one namespace per instruction-set level.
// Each namespace is compiled in its own translation unit with its own target flags
// (dot_avx2.cpp: AVX2 + FMA + F16C; dot_avx512.cpp: adds AVX-512 F/BW/VL and VNNI), so a
// function here may only be called after kernels::cpu_level() / cpu_has_vnni() said the CPU
// has those instructions: kernels/cpu/dot.cpp is the only caller.
//
// Contracts (shared with kernels/cpu/dot_ref.h):
//  - n is a multiple of the weight's block size; w and x need no alignment.
//  - x rows come from the activation quantizers, so their int8 values lie in [-127, 127]
//    (the AVX2 sign trick and maddubs rely on it: no -128 in activations).
//  - vec_dot_*_4 computes out[r] = vec_dot(w, x + r * x_stride) for r in 0..3 with exactly the
//    arithmetic of the one-row function, so a token's result does not depend on batching.
//  - quantize_* write bytes identical to ref::quantize_activations.
#pragma once

#include <cstddef>
#include <cstdint>

// The kernels every x86 level provides: X(name) with name the weight type in lower case.
#define HEARTH_X86_BLOCK_DOTS(X) X(q8_0) X(q4_0) X(q4_1) X(q5_0) X(q5_1) X(q4_K) X(q5_K) X(q6_K)
#define HEARTH_X86_PLAIN_DOTS(X) X(f16) X(bf16) X(f32)
#define HEARTH_X86_QUANTIZERS(X) X(q8_0) X(q8_1) X(q8_K)
// Four-row kernels with pre-widened activation scales (kernels/cpu/dot.h, VecDotRowsScaledFn).
#define HEARTH_X86_SCALED_DOTS(X) X(q8_0) X(q4_0) X(q5_0) X(q4_1) X(q5_1)

#define HEARTH_X86_DECLARE_LEVEL(ns)                                                                    \
  namespace hearth::kernels::x86::ns {                                                                  \
  HEARTH_X86_BLOCK_DOTS(HEARTH_X86_DECLARE_DOT)                                                         \
  HEARTH_X86_BLOCK_DOTS(HEARTH_X86_DECLARE_DOT4)                                                        \
  HEARTH_X86_PLAIN_DOTS(HEARTH_X86_DECLARE_DOT)                                                         \
  HEARTH_X86_QUANTIZERS(HEARTH_X86_DECLARE_QUANTIZE)                                                    \
  HEARTH_X86_SCALED_DOTS(HEARTH_X86_DECLARE_DOT4S)                                                      \
  }
#define HEARTH_X86_DECLARE_DOT(t) float vec_dot_##t(int64_t n, const void* w, const void* x);
#define HEARTH_X86_DECLARE_DOT4(t) \
  void vec_dot_##t##_4(int64_t n, const void* w, const void* x, size_t x_stride, float* out);
#define HEARTH_X86_DECLARE_DOT4S(t)                                                                    \
  void vec_dot_##t##_4s(int64_t n, const void* w, const void* x, size_t x_stride, const float* xd, const float* xs, \
                        float* out);
#define HEARTH_X86_DECLARE_QUANTIZE(t) void quantize_##t(const float* x, void* y, int64_t n);

HEARTH_X86_DECLARE_LEVEL(avx2)
HEARTH_X86_DECLARE_LEVEL(avx512)
