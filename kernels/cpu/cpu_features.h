// Which SIMD level the CPU kernels run at, chosen once at start-up from what the processor
// supports. The project is built for baseline x86-64 or baseline armv8-a; the kernels that need
// more (AVX2, AVX-512; ARMv8.2 dot products) live in their own translation units, compiled with
// their own flags, and are only called when this says the machine has the instructions.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace hearth::kernels {

// Levels form one chain per architecture, each level implying the ones below it on its chain:
//   x86-64:  Scalar < Avx2 < Avx512
//     Avx2:    AVX2 + FMA + F16C
//     Avx512:  Avx2 + AVX-512 F, BW and VL (VNNI is reported separately: cpu_has_vnni())
//   aarch64: Scalar < Neon < Dotprod < I8mm
//     Neon:    armv8-a Advanced SIMD (ASIMD)
//     Dotprod: Neon + the ARMv8.2 int8 dot products (sdot / udot)
//     I8mm:    Dotprod + the ARMv8.6 int8 matrix multiply (smmla: a 2x8 by 8x2 block per
//              instruction), which the packed prefill kernels use (Graviton 3, Apple M2,
//              Cortex-A510/A710 and later)
// Levels of the other architecture are never supported, so compare levels only through
// cpu_level_supported(), never with < on the enum values (which are table indices).
enum class CpuLevel { Scalar = 0, Avx2 = 1, Avx512 = 2, Neon = 3, Dotprod = 4, I8mm = 5 };
inline constexpr CpuLevel kAllCpuLevels[] = {CpuLevel::Scalar, CpuLevel::Avx2,    CpuLevel::Avx512,
                                             CpuLevel::Neon,   CpuLevel::Dotprod, CpuLevel::I8mm};

// "scalar", "avx2", "avx512", "neon", "dotprod", "i8mm"
std::string_view cpu_level_name(CpuLevel level);
std::optional<CpuLevel> cpu_level_from_name(std::string_view name);  // inverse, exact names

// The best level the processor supports (Scalar where this build has no SIMD kernels).
CpuLevel cpu_supported_level();
// Whether kernels of `level` may run here: Scalar always; otherwise `level` is on this build's
// chain at or below cpu_supported_level().
bool cpu_level_supported(CpuLevel level);
// AVX-512 VNNI (vpdpbusd), usable only together with the Avx512 level.
bool cpu_has_vnni();
// AVX-VNNI (the VEX vpdpbusd on ymm: Alder Lake and later, Zen 5), usable from the Avx2 level.
bool cpu_has_avx_vnni();

// The level the kernels use: cpu_supported_level(), or the lower one named by the environment
// variable HEARTH_CPU_LEVEL (one of the names above; for tests and comparisons). Decided on the
// first call; throws hearth::Error for an unknown name or a level the CPU lacks.
CpuLevel cpu_level();

// Printable description of the active level, e.g. "avx512 (vnni)", "dotprod", or
// "avx2 (HEARTH_CPU_LEVEL; cpu has avx512 vnni)" when forced lower.
std::string cpu_description();

// The processor's name as /proc/cpuinfo gives it ("AMD EPYC 9R14"; a board's model on ARM), or
// "unknown CPU".
std::string cpu_model_name();

}  // namespace hearth::kernels
