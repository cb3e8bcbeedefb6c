// The packed-weight matmul kernels on aarch64 (layout and contracts: kernels/cpu/packed.h), one
// set per level, each compiled in its own translation unit with its own flags from
// kernels/cpu/arm/packed_arm_impl.h; kernels/cpu/packed.cpp only hands them out after
// cpu_level_supported() said the CPU has the instructions:
//   neon     armv8-a: the k-step sums from vmull_s8 + pairwise adds (packed_neon.cpp)
//   dotprod  sdot by element, one k-step of four rows per instruction (packed_dotprod.cpp)
//   i8mm     the dotprod kernels, with pairs of tokens of the 32-element types on smmla
//            (packed_i8mm.cpp)
#pragma once

#include <cstddef>
#include <cstdint>

#define HEARTH_ARM_DECLARE_PACKED_GEMM(t)                                                                        \
  void packed_gemm_##t(const void* w, int64_t k, int64_t m, int64_t g0, int64_t g1, const void* xa, size_t act_stride, \
                       int64_t n, float* y, int64_t y_stride);
#define HEARTH_ARM_DECLARE_PACKED_GEMMS \
  HEARTH_ARM_DECLARE_PACKED_GEMM(q4_0)  \
  HEARTH_ARM_DECLARE_PACKED_GEMM(q4_1)  \
  HEARTH_ARM_DECLARE_PACKED_GEMM(q5_0)  \
  HEARTH_ARM_DECLARE_PACKED_GEMM(q5_1)  \
  HEARTH_ARM_DECLARE_PACKED_GEMM(q8_0)  \
  HEARTH_ARM_DECLARE_PACKED_GEMM(q4_K)  \
  HEARTH_ARM_DECLARE_PACKED_GEMM(q6_K)  \
  HEARTH_ARM_DECLARE_PACKED_GEMM(q5_K)

namespace hearth::kernels::arm::neon {
HEARTH_ARM_DECLARE_PACKED_GEMMS
}  // namespace hearth::kernels::arm::neon
namespace hearth::kernels::arm::dotprod {
HEARTH_ARM_DECLARE_PACKED_GEMMS
}  // namespace hearth::kernels::arm::dotprod
namespace hearth::kernels::arm::i8mm {
HEARTH_ARM_DECLARE_PACKED_GEMMS
}  // namespace hearth::kernels::arm::i8mm

#undef HEARTH_ARM_DECLARE_PACKED_GEMMS
#undef HEARTH_ARM_DECLARE_PACKED_GEMM
