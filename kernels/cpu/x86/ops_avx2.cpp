// The non-matmul kernels for the Avx2 level (compiled with -mavx2 -mfma -mf16c).
#define HEARTH_X86_NS avx2
#define HEARTH_X86_AVX512 0
#include "kernels/cpu/x86/ops_x86_impl.h"
