// The packed matmul on plain armv8-a (kernels/cpu/arm/packed_arm_impl.h): k-step sums from
// vmull_s8 and pairwise adds.
#define HEARTH_ARM_NS neon
#define HEARTH_ARM_DOTPROD 0
#define HEARTH_ARM_I8MM 0
#include "kernels/cpu/arm/packed_arm_impl.h"
