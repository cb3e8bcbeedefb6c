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

#include <xmmintrin.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/packed.h"

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

namespace hearth::kernels::x86 {

// Software prefetches into L2 (T2, not L1: a burst of L1 prefetches per block fills the L1 miss
// buffers the kernel's own loads wait on) of a group's run of memory (its regions interleaved by
// block: PackedRegions) kPrefetchAhead bytes ahead of block b's share of it (b * block bytes in),
// called once per block. Past the last group they run beyond the buffer, which a prefetch may (it
// never faults). The AVX-512 32-element kernels use kPrefetchAhead; the ymm kernels choose their own
// (packed_avx2_impl.h). Measured on a Zen 4 EPYC, one thread, kernel_lab DecodeLayers/*/packed/llama1bx4
// (from memory), against the same block of the next group (the layout before, regions one after
// the other): Q6_K 22.4 -> 26.0 GB/s, Q4_K 27.0 -> 28.8 (six interleaved rounds); 4096 bytes ahead
// was slower (Q6_K 20.6, Q4_K 22.3), 10240-16384 no better than before. (The k-quants' one-token
// zmm kernels have since dropped these for burst loads over an ascending layout: packed_avx512.cpp.)
inline constexpr size_t kPrefetchAhead = 8192;
template <size_t Ahead = kPrefetchAhead>
[[gnu::always_inline]] inline void prefetch_stream(const uint8_t* grp, const PackedRegions& reg, size_t b) {
  const uint8_t* from = grp + b * reg.block + Ahead;
  for (size_t line = 0; line < reg.block; line += 64) _mm_prefetch(reinterpret_cast<const char*>(from + line), _MM_HINT_T2);
}

}  // namespace hearth::kernels::x86

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
