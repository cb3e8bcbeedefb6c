// The plain armv8-a kernels (baseline flags): int8 products with vmull_s8 + vpadalq_s16.
#define HEARTH_ARM_NS neon
#define HEARTH_ARM_DOTPROD 0
#include "kernels/cpu/arm/dot_arm_impl.h"
