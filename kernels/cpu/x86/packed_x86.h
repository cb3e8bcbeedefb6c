// The packed-weight matmul kernels (layout and contracts: kernels/cpu/packed.h), compiled with
// AVX-512 F/BW/VL and VNNI in packed_avx512.cpp; kernels/cpu/packed.cpp only hands them out
// after checking the CPU has those.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hearth::kernels::x86::avx512 {

#define HEARTH_X86_DECLARE_PACKED_GEMM(t)                                                                        \
  void packed_gemm_##t(const void* w, int64_t k, int64_t m, int64_t g0, int64_t g1, const void* xa, size_t act_stride, \
                       int64_t n, float* y, int64_t y_stride);
HEARTH_X86_DECLARE_PACKED_GEMM(q4_0)
HEARTH_X86_DECLARE_PACKED_GEMM(q4_1)
HEARTH_X86_DECLARE_PACKED_GEMM(q5_0)
HEARTH_X86_DECLARE_PACKED_GEMM(q5_1)
HEARTH_X86_DECLARE_PACKED_GEMM(q8_0)
HEARTH_X86_DECLARE_PACKED_GEMM(q4_K)
HEARTH_X86_DECLARE_PACKED_GEMM(q6_K)
#undef HEARTH_X86_DECLARE_PACKED_GEMM

}  // namespace hearth::kernels::x86::avx512
