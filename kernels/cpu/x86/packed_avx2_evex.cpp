// The avxvnni kernels' arithmetic with the EVEX vpdpbusd on ymm (AVX-512 VNNI + VL), so that
// the vpdpbusd variant of kernels/cpu/x86/packed_avx2_impl.h runs in the tests on AVX-512
// machines, which mostly lack AVX-VNNI. Never chosen for a matmul (the 512-bit kernels are).
#define HEARTH_PACKED_NS avx2_evex
#define HEARTH_PACKED_DPBUSD 2
#include "kernels/cpu/x86/packed_avx2_impl.h"
