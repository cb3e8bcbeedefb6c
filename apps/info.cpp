#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "apps/commands.h"
#include "core/build_info.h"
#include "core/system_memory.h"
#include "core/thread_pool.h"
#include "engine/format/gguf.h"
#include "engine/format/model_info.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/registry.h"
#include "shard/devices.h"

namespace hearth::apps {

namespace {

// This machine as a node sees it: the kernel path chosen at start, threads, memory, build.
nlohmann::ordered_json system_json() {
  nlohmann::ordered_json j;
  j["cpu_kernels"] = kernels::cpu_description();
  j["cpu_level"] = std::string(kernels::cpu_level_name(kernels::cpu_level()));
  j["cpu_supported_level"] = std::string(kernels::cpu_level_name(kernels::cpu_supported_level()));
  j["cpu_vnni"] = kernels::cpu_has_vnni();
  j["hardware_threads"] = ThreadPool::hardware_threads();
  j["memory_bytes"] = total_memory_bytes();
  j["memory_available_bytes"] = available_memory_bytes();
  j["backends"] = shard::backends_json(kernels::list_backends());
  j["build"] = {{"version", build::kVersion}, {"commit", build::kCommit}, {"compiler", build::kCompiler},
                {"type", build::kBuildType}, {"cuda_option", build::kCuda}, {"vulkan_option", build::kVulkan},
                {"rdma_option", build::kRdma}};
  return j;
}

// One line per backend kind: its devices, or plainly why it has none.
std::string backends_text(const nlohmann::ordered_json& backends) {
  std::string out;
  for (const auto& b : backends) {
    const std::string kind = b["backend"].get<std::string>();
    if (!b["compiled"].get<bool>()) {
      out += fmt::format("{:<22} not built into this binary\n", "backend " + kind);
    } else if (b["devices"].empty()) {
      out += fmt::format("{:<22} built in, no device found: {}\n", "backend " + kind, b.value("note", std::string("?")));
    } else {
      for (const auto& d : b["devices"]) out += fmt::format("{:<22} {}\n", "backend " + kind, shard::device_line(d));
    }
  }
  return out;
}

std::string system_text(const nlohmann::ordered_json& j) {
  return fmt::format(
      "{:<22} {}\n{:<22} {} (supported: {})\n{:<22} {}\n{:<22} {:.1f} GiB ({:.1f} GiB available)\n{}"
      "{:<22} hearth {} ({}, {}, {})\n",
      "cpu kernels", j["cpu_kernels"].get<std::string>(), "cpu level", j["cpu_level"].get<std::string>(),
      j["cpu_supported_level"].get<std::string>(), "hardware threads", j["hardware_threads"].get<int>(), "memory",
      static_cast<double>(j["memory_bytes"].get<uint64_t>()) / (1u << 30),
      static_cast<double>(j["memory_available_bytes"].get<uint64_t>()) / (1u << 30), backends_text(j["backends"]), "build",
      build::kVersion, build::kCommit, build::kCompiler, build::kBuildType);
}

}  // namespace

std::string BackendArgs::spec() const { return kernels::backend_spec(kind, device); }

int run_info(const InfoArgs& args) {
  if (args.model.empty() && !args.system) throw Error("hearth info needs a MODEL path, --system, or both");
  nlohmann::ordered_json json_out;
  std::string text;
  if (args.system) {
    const auto sys = system_json();
    if (args.json) json_out["system"] = sys;
    text += system_text(sys);
  }
  if (!args.model.empty()) {
    const gguf::GgufFile file = gguf::GgufFile::open(args.model);
    const auto info = engine::model_info_json(file, {.tensors = args.tensors, .metadata = args.metadata});
    if (args.json) {
      if (!args.system) json_out = info;
      else json_out["model"] = info;
    }
    if (!text.empty()) text += "\n";
    text += engine::model_info_text(info);
  }
  const std::string out = args.json ? json_out.dump(2) + "\n" : text;
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace hearth::apps
