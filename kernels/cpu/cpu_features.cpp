#include "kernels/cpu/cpu_features.h"

#include <cstdlib>
#include <fstream>
#include <string>

#include "core/error.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#ifndef HWCAP2_I8MM  // Linux 5.10's value, for older headers
#define HWCAP2_I8MM (1 << 13)
#endif
#endif

namespace hearth::kernels {

std::string_view cpu_level_name(CpuLevel level) {
  switch (level) {
    case CpuLevel::Scalar: return "scalar";
    case CpuLevel::Avx2: return "avx2";
    case CpuLevel::Avx512: return "avx512";
    case CpuLevel::Neon: return "neon";
    case CpuLevel::Dotprod: return "dotprod";
    case CpuLevel::I8mm: return "i8mm";
  }
  return "?";
}

std::optional<CpuLevel> cpu_level_from_name(std::string_view name) {
  for (CpuLevel l : kAllCpuLevels) {
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
#elif defined(__aarch64__) && defined(__linux__)
  static const CpuLevel level = [] {
    const unsigned long hwcap = getauxval(AT_HWCAP);
    if ((hwcap & HWCAP_ASIMD) == 0) return CpuLevel::Scalar;
    if ((hwcap & HWCAP_ASIMDDP) == 0) return CpuLevel::Neon;
    return (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0 ? CpuLevel::I8mm : CpuLevel::Dotprod;
  }();
  return level;
#elif defined(__aarch64__)
  // Advanced SIMD is part of every aarch64 platform hearth targets; the dot products are not
  // detected outside Linux (no getauxval), so they stay unused there.
  return CpuLevel::Neon;
#else
  return CpuLevel::Scalar;
#endif
}

namespace {

bool is_arm_level(CpuLevel l) { return l == CpuLevel::Neon || l == CpuLevel::Dotprod || l == CpuLevel::I8mm; }

}  // namespace

bool cpu_level_supported(CpuLevel level) {
  if (level == CpuLevel::Scalar) return true;
  const CpuLevel top = cpu_supported_level();
  if (top == CpuLevel::Scalar || is_arm_level(level) != is_arm_level(top)) return false;
  // Same chain: its levels are consecutive enum values in chain order.
  return static_cast<int>(level) <= static_cast<int>(top);
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

bool cpu_has_avx_vnni() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // CPUID leaf 7 sub-leaf 1, EAX bit 4; the ymm state is enabled wherever the Avx2 level is.
  static const bool avx_vnni = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!cpu_level_supported(CpuLevel::Avx2) || __get_cpuid_max(0, nullptr) < 7) return false;
    __cpuid_count(7, 1, eax, ebx, ecx, edx);
    return (eax & (1u << 4)) != 0;
  }();
  return avx_vnni;
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
  if (!wanted) throw Error(fmt::format("HEARTH_CPU_LEVEL={}: expected scalar, avx2, avx512, neon, dotprod or i8mm", env));
  if (!cpu_level_supported(*wanted)) {
    throw Error(fmt::format("HEARTH_CPU_LEVEL={}: this CPU lacks it (best level here: {})", env,
                            cpu_level_name(supported)));
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
  const std::string hw = std::string(cpu_level_name(supported)) + (cpu_has_vnni() ? " vnni" : "") +
                         (cpu_has_avx_vnni() ? " avx-vnni" : "");
  if (active != supported) return std::string(cpu_level_name(active)) + " (HEARTH_CPU_LEVEL; cpu has " + hw + ")";
  if (active == CpuLevel::Avx512) return cpu_has_vnni() ? "avx512 (vnni)" : "avx512 (no vnni)";
  if (active == CpuLevel::Avx2 && cpu_has_avx_vnni()) return "avx2 (avx-vnni)";
  return std::string(cpu_level_name(active));
}

}  // namespace hearth::kernels

namespace hearth::kernels {

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  std::string fallback;
  while (std::getline(in, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.pop_back();
    std::string value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(value.begin());
    if (value.empty()) continue;
    if (key == "model name") return value;  // x86 (and some ARM kernels)
    if (key == "Model" || key == "Hardware") fallback = value;  // Raspberry Pi and other ARM boards
  }
  return fallback.empty() ? std::string("unknown CPU") : fallback;
}

}  // namespace hearth::kernels
