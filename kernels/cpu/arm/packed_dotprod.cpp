// The packed matmul with the ARMv8.2 dot products (compiled with -march=armv8.2-a+dotprod; only
// called when the CPU reports ASIMDDP). As dot_dotprod.cpp, everything it compiles stays inside
// it (scripts/test-arm.sh fails on any weak symbol here).
#define HEARTH_ARM_NS dotprod
#define HEARTH_ARM_DOTPROD 1
#define HEARTH_ARM_I8MM 0
#include "kernels/cpu/arm/packed_arm_impl.h"
