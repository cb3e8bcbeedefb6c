// The non-matmul kernels for the Avx512 level (AVX-512 F/BW/VL on top of the AVX2 flags): the
// same 256-bit kernels with 32 registers and masked tails.
#define HEARTH_X86_NS avx512
#define HEARTH_X86_AVX512 1
#include "kernels/cpu/x86/ops_x86_impl.h"
