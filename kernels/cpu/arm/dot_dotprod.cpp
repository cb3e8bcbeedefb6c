// The ARMv8.2 dot-product level (compiled with -march=armv8.2-a+dotprod): the same kernels with
// the int8 products on sdot (vdotq_s32). Only called when the CPU reports ASIMDDP. Everything
// this file compiles stays inside it (the helpers are in an anonymous namespace and inlined;
// scripts/test-arm.sh fails on any weak symbol here), so no copy of an inline function built
// with these flags can replace the baseline one.
#define HEARTH_ARM_NS dotprod
#define HEARTH_ARM_DOTPROD 1
#include "kernels/cpu/arm/dot_arm_impl.h"
