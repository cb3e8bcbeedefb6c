// The AVX2 kernels (compiled with -mavx2 -mfma -mf16c): integer products with maddubs + madd.
#define HEARTH_X86_NS avx2
#define HEARTH_X86_VNNI 0
#include "kernels/cpu/x86/dot_x86_impl.h"
