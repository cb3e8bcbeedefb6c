// The packed matmul on AVX2 + FMA + F16C (kernels/cpu/x86/packed_avx2_impl.h): integer dots by
// vpmaddubsw + vpmaddwd.
#define HEARTH_PACKED_NS avx2
#define HEARTH_PACKED_DPBUSD 0
#include "kernels/cpu/x86/packed_avx2_impl.h"
