// aarch64 SIMD dot products and activation quantizers, one namespace per level. Each namespace
// is compiled in its own translation unit (dot_neon.cpp: baseline armv8-a; dot_dotprod.cpp:
// -march=armv8.2-a+dotprod), so a function of `dotprod` may only be called after
// kernels::cpu_level_supported(CpuLevel::Dotprod) said the CPU has the instructions:
// kernels/cpu/dot.cpp is the only caller.
//
// Contracts (shared with kernels/cpu/dot_ref.h and kernels/cpu/x86/dot_x86.h):
//  - n is a multiple of the weight's block size; w and x need no alignment.
//  - x rows come from the activation quantizers (int8 values in [-127, 127]); the kernels are
//    exact for any int8 values anyway (products are widened before they are summed).
//  - vec_dot_*_4 computes out[r] = vec_dot(w, x + r * x_stride) for r in 0..3 with exactly the
//    arithmetic of the one-row function, so a token's result does not depend on batching.
//  - quantize_* write bytes identical to ref::quantize_activations.
#pragma once

#include <cstddef>
#include <cstdint>

// The kernels every aarch64 level provides: X(name) with name the weight type in lower case.
#define HEARTH_ARM_BLOCK_DOTS(X) X(q8_0) X(q4_0) X(q4_1) X(q5_0) X(q5_1) X(q2_K) X(q3_K) X(q4_K) X(q5_K) X(q6_K)
#define HEARTH_ARM_PLAIN_DOTS(X) X(f16) X(bf16) X(f32)
#define HEARTH_ARM_QUANTIZERS(X) X(q8_0) X(q8_1) X(q8_K)

#define HEARTH_ARM_DECLARE_LEVEL(ns)                  \
  namespace hearth::kernels::arm::ns {                \
  HEARTH_ARM_BLOCK_DOTS(HEARTH_ARM_DECLARE_DOT)       \
  HEARTH_ARM_BLOCK_DOTS(HEARTH_ARM_DECLARE_DOT4)      \
  HEARTH_ARM_PLAIN_DOTS(HEARTH_ARM_DECLARE_DOT)       \
  HEARTH_ARM_QUANTIZERS(HEARTH_ARM_DECLARE_QUANTIZE)  \
  }
#define HEARTH_ARM_DECLARE_DOT(t) float vec_dot_##t(int64_t n, const void* w, const void* x);
#define HEARTH_ARM_DECLARE_DOT4(t) \
  void vec_dot_##t##_4(int64_t n, const void* w, const void* x, size_t x_stride, float* out);
#define HEARTH_ARM_DECLARE_QUANTIZE(t) void quantize_##t(const float* x, void* y, int64_t n);

HEARTH_ARM_DECLARE_LEVEL(neon)
HEARTH_ARM_DECLARE_LEVEL(dotprod)
