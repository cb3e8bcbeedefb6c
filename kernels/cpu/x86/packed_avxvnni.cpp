// The packed matmul on AVX2 + AVX-VNNI (kernels/cpu/x86/packed_avx2_impl.h): the VEX vpdpbusd
// of Alder Lake and later and of Zen 5. Built only where the compiler knows -mavxvnni.
#define HEARTH_PACKED_NS avxvnni
#define HEARTH_PACKED_DPBUSD 1
#include "kernels/cpu/x86/packed_avx2_impl.h"
