// The packed-weight matmul kernels (layout and contracts: kernels/cpu/packed.h), one set per
// instruction set, each compiled with its own flags; kernels/cpu/packed.cpp only hands them out
// after checking the CPU has those:
//   avx512     AVX-512 F/BW/VL + VNNI, 16 rows per zmm (packed_avx512.cpp)
//   avx2       AVX2 + FMA + F16C, two ymm halves of 8 rows, vpmaddubsw (packed_avx2.cpp)
//   avxvnni    the same with AVX-VNNI's VEX vpdpbusd (packed_avxvnni.cpp; Alder Lake, Zen 5)
//   avx2_evex  the avxvnni arithmetic with the EVEX vpdpbusd of AVX-512 VNNI + VL: only so that
//              the vpdpbusd variant of the ymm kernels can be tested on AVX-512 machines
//              (packed_avx2_evex.cpp); never chosen for a matmul
#pragma once

#include <cstddef>
#include <cstdint>

#define HEARTH_X86_DECLARE_PACKED_GEMM(t)                                                                        \
  void packed_gemm_##t(const void* w, int64_t k, int64_t m, int64_t g0, int64_t g1, const void* xa, size_t act_stride, \
                       int64_t n, float* y, int64_t y_stride);
#define HEARTH_X86_DECLARE_PACKED_GEMMS \
  HEARTH_X86_DECLARE_PACKED_GEMM(q4_0)  \
  HEARTH_X86_DECLARE_PACKED_GEMM(q4_1)  \
  HEARTH_X86_DECLARE_PACKED_GEMM(q5_0)  \
  HEARTH_X86_DECLARE_PACKED_GEMM(q5_1)  \
  HEARTH_X86_DECLARE_PACKED_GEMM(q8_0)  \
  HEARTH_X86_DECLARE_PACKED_GEMM(q4_K)  \
  HEARTH_X86_DECLARE_PACKED_GEMM(q6_K)

namespace hearth::kernels::x86::avx512 {
HEARTH_X86_DECLARE_PACKED_GEMMS
}  // namespace hearth::kernels::x86::avx512
namespace hearth::kernels::x86::avx2 {
HEARTH_X86_DECLARE_PACKED_GEMMS
}  // namespace hearth::kernels::x86::avx2
#if defined(HEARTH_X86_AVXVNNI)
namespace hearth::kernels::x86::avxvnni {
HEARTH_X86_DECLARE_PACKED_GEMMS
}  // namespace hearth::kernels::x86::avxvnni
#endif
namespace hearth::kernels::x86::avx2_evex {
HEARTH_X86_DECLARE_PACKED_GEMMS
}  // namespace hearth::kernels::x86::avx2_evex

#undef HEARTH_X86_DECLARE_PACKED_GEMMS
#undef HEARTH_X86_DECLARE_PACKED_GEMM
