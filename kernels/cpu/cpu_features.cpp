#include "kernels/cpu/cpu_features.h"

#include <cstdlib>

#include "core/error.h"

namespace hearth::kernels {

std::string_view cpu_level_name(CpuLevel level) {
  switch (level) {
    case CpuLevel::Scalar: return "scalar";
    case CpuLevel::Avx2: return "avx2";
    case CpuLevel::Avx512: return "avx512";
  }
  return "?";
}

std::optional<CpuLevel> cpu_level_from_name(std::string_view name) {
  for (CpuLevel l : {CpuLevel::Scalar, CpuLevel::Avx2, CpuLevel::Avx512}) {
    if (cpu_level_name(l) == name) return l;
  }
  return std::nullopt;
}

CpuLevel cpu_supported_level() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const CpuLevel level = [] {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))) {
      return CpuLevel::Scalar;
    }
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
      return CpuLevel::Avx512;
    }
    return CpuLevel::Avx2;
  }();
  return level;
#else
  return CpuLevel::Scalar;
#endif
}

bool cpu_has_vnni() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool vnni = [] {
    __builtin_cpu_init();
    return cpu_supported_level() == CpuLevel::Avx512 && __builtin_cpu_supports("avx512vnni");
  }();
  return vnni;
#else
  return false;
#endif
}

namespace {

CpuLevel decide_level() {
  const CpuLevel supported = cpu_supported_level();
  const char* env = std::getenv("HEARTH_CPU_LEVEL");
  if (env == nullptr || *env == '\0') return supported;
  const std::optional<CpuLevel> wanted = cpu_level_from_name(env);
  if (!wanted) throw Error(fmt::format("HEARTH_CPU_LEVEL={}: expected scalar, avx2 or avx512", env));
  if (*wanted > supported) {
    throw Error(fmt::format("HEARTH_CPU_LEVEL={}: this CPU supports at most {}", env, cpu_level_name(supported)));
  }
  return *wanted;
}

}  // namespace

CpuLevel cpu_level() {
  // A throw leaves the static uninitialized: every later call refuses the same way.
  static const CpuLevel level = decide_level();
  return level;
}

std::string cpu_description() {
  const CpuLevel active = cpu_level();
  const CpuLevel supported = cpu_supported_level();
  const std::string hw = std::string(cpu_level_name(supported)) + (cpu_has_vnni() ? " vnni" : "");
  if (active != supported) return std::string(cpu_level_name(active)) + " (HEARTH_CPU_LEVEL; cpu has " + hw + ")";
  if (active == CpuLevel::Avx512) return cpu_has_vnni() ? "avx512 (vnni)" : "avx512 (no vnni)";
  return std::string(cpu_level_name(active));
}

}  // namespace hearth::kernels
