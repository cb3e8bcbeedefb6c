// The packed matmul with the ARMv8.6 int8 matrix multiply (compiled with
// -march=armv8.2-a+dotprod+i8mm; only called when the CPU reports I8MM): the dotprod kernels,
// with each pair of tokens of the 32-element types on smmla. As dot_dotprod.cpp, everything it
// compiles stays inside it (scripts/test-arm.sh fails on any weak symbol here).
#define HEARTH_ARM_NS i8mm
#define HEARTH_ARM_DOTPROD 1
#define HEARTH_ARM_I8MM 1
#include "kernels/cpu/arm/packed_arm_impl.h"
