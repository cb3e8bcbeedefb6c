// Which SIMD level the CPU kernels run at, chosen once at start-up from what the processor
// supports. The project is built for baseline x86-64 (or aarch64); the AVX2 and AVX-512
// kernels live in their own translation units, compiled with their own flags, and are only
// called when this says the machine has the instructions.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace hearth::kernels {

// Ordered: every level implies the ones below it.
//   Avx2:   AVX2 + FMA + F16C
//   Avx512: Avx2 + AVX-512 F, BW and VL (VNNI is reported separately: cpu_has_vnni())
enum class CpuLevel { Scalar = 0, Avx2 = 1, Avx512 = 2 };

std::string_view cpu_level_name(CpuLevel level);                   // "scalar", "avx2", "avx512"
std::optional<CpuLevel> cpu_level_from_name(std::string_view name);  // inverse, exact names

// The best level the processor supports (Scalar on non-x86 builds).
CpuLevel cpu_supported_level();
// AVX-512 VNNI (vpdpbusd), usable only together with the Avx512 level.
bool cpu_has_vnni();

// The level the kernels use: cpu_supported_level(), or the lower one named by the environment
// variable HEARTH_CPU_LEVEL=scalar|avx2|avx512 (for tests and comparisons). Decided on the
// first call; throws hearth::Error for an unknown name or a level the CPU lacks.
CpuLevel cpu_level();

// Printable description of the active level, e.g. "avx512 (vnni)", or
// "avx2 (HEARTH_CPU_LEVEL; cpu has avx512 vnni)" when forced lower.
std::string cpu_description();

}  // namespace hearth::kernels
