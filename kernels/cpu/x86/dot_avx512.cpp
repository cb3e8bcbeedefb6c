// The AVX-512 level (compiled with AVX-512 F/BW/VL and VNNI on top of the AVX2 flags): the same
// 256-bit kernels, with the 32-element integer dot products on vpdpbusd (no int16 step). Only
// used when the CPU has VNNI; kernels/cpu/dot.cpp falls back to the AVX2 kernels otherwise.
#define HEARTH_X86_NS avx512
#define HEARTH_X86_VNNI 1
#include "kernels/cpu/x86/dot_x86_impl.h"
