#include "kernels/registry.h"

#include <cctype>
#include <charconv>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cpu/cpu_backend.h"
#ifdef HEARTH_WITH_CUDA
#include "kernels/cuda/cuda.h"
#endif
#ifdef HEARTH_WITH_VULKAN
#include "kernels/vulkan/vulkan.h"
#endif

namespace hearth::kernels {

namespace {

struct Spec {
  std::string kind;
  int device = 0;
  std::string name;  // "vulkan:Radeon": a device named by part of its name instead of its index
};

Spec parse_spec(std::string_view spec) {
  Spec s;
  const size_t colon = spec.find(':');
  s.kind = std::string(spec.substr(0, colon));
  if (colon != std::string_view::npos) {
    const std::string_view index = spec.substr(colon + 1);
    if (index.empty()) throw Error(fmt::format("backend '{}': a device index or name must follow ':' (e.g. cuda:0)", spec));
    const auto [ptr, ec] = std::from_chars(index.data(), index.data() + index.size(), s.device);
    if (ec != std::errc() || ptr != index.data() + index.size() || s.device < 0) {
      s.device = -1;
      s.name = std::string(index);
    }
  }
  return s;
}

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// The index of the device of `devices` whose name contains `name` (case-insensitive); throws when
// none or several do, naming them.
int device_by_name(std::string_view spec_text, std::string_view name, const std::vector<DeviceInfo>& devices) {
  std::vector<const DeviceInfo*> found;
  for (const DeviceInfo& d : devices) {
    if (lower(d.name).find(lower(name)) != std::string::npos) found.push_back(&d);
  }
  if (found.size() == 1) return found[0]->index;
  std::string list;
  if (found.empty()) {
    for (const DeviceInfo& d : devices) list += (list.empty() ? "" : ", ") + d.spec() + " " + d.name;
    throw Error(fmt::format("backend '{}': no device's name contains '{}'; devices: {}", spec_text, name,
                            list.empty() ? "none" : list));
  }
  for (const DeviceInfo* d : found) list += (list.empty() ? "" : ", ") + d->spec() + " " + d->name;
  throw Error(fmt::format("backend '{}': '{}' names several devices ({}); give the index", spec_text, name, list));
}

std::string known_list(const std::vector<BackendReport>& reports) {
  std::string out;
  for (const BackendReport& r : reports) {
    if (!out.empty()) out += "; ";
    if (!r.compiled) {
      out += r.kind + " (not built into this binary)";
    } else if (r.devices.empty()) {
      out += r.kind + " (no device: " + r.note + ")";
    } else {
      std::string devices;
      for (const DeviceInfo& d : r.devices) devices += (devices.empty() ? "" : ", ") + d.spec() + " " + d.name;
      out += r.kind + " (" + devices + ")";
    }
  }
  return out;
}

}  // namespace

std::vector<BackendReport> list_backends(const BackendOptions& options) {
  std::vector<BackendReport> out;
  {
    BackendReport cpu;
    cpu.kind = "cpu";
    cpu.compiled = true;
    const int threads = options.n_threads > 0 ? options.n_threads : ThreadPool::hardware_threads();
    cpu.devices.push_back(CpuBackend(threads).device());
    out.push_back(std::move(cpu));
  }
  // The GPU backends join here when they are built in (HEARTH_CUDA / HEARTH_VULKAN).
#ifdef HEARTH_WITH_CUDA
  {
    CudaDevices cuda = cuda_devices();
    out.push_back({.kind = "cuda", .compiled = true, .devices = std::move(cuda.devices), .note = std::move(cuda.note)});
  }
#else
  out.push_back({.kind = "cuda", .compiled = false, .devices = {}, .note = "not built into this binary"});
#endif
#ifdef HEARTH_WITH_VULKAN
  {
    VulkanDevices vk = vulkan_devices();
    out.push_back({.kind = "vulkan", .compiled = true, .devices = std::move(vk.devices), .note = std::move(vk.note)});
  }
#else
  out.push_back({.kind = "vulkan", .compiled = false, .devices = {}, .note = "not built into this binary"});
#endif
  return out;
}

std::unique_ptr<Backend> make_backend(std::string_view spec_text, const BackendOptions& options) {
  Spec spec = parse_spec(spec_text);
  if (spec.kind == "cpu") {
    if (spec.device != 0) throw Error(fmt::format("backend '{}': the CPU is device cpu:0 only", spec_text));
    return std::make_unique<CpuBackend>(options.n_threads > 0 ? options.n_threads : ThreadPool::hardware_threads());
  }
  const std::vector<BackendReport> reports = list_backends(options);
  for (const BackendReport& r : reports) {
    if (r.kind != spec.kind) continue;
    if (!r.compiled) {
      throw Error(fmt::format("backend '{}' is not built into this binary; available: {}", spec_text, known_list(reports)));
    }
    if (!spec.name.empty()) spec.device = device_by_name(spec_text, spec.name, r.devices);
#ifdef HEARTH_WITH_CUDA
    if (r.kind == "cuda") {
      for (const DeviceInfo& d : r.devices) {
        if (d.index == spec.device) return make_cuda_backend(spec.device);
      }
    }
#endif
#ifdef HEARTH_WITH_VULKAN
    if (r.kind == "vulkan") {
      for (const DeviceInfo& d : r.devices) {
        if (d.index == spec.device) return make_vulkan_backend(spec.device);
      }
    }
#endif
    throw Error(fmt::format("backend '{}': no such device; available: {}", spec_text, known_list(reports)));
  }
  throw Error(fmt::format("unknown backend '{}'; available: {}", spec_text, known_list(reports)));
}

std::string backend_spec(std::string_view kind, int device) {
  if (device < 0) return std::string(kind);
  const size_t colon = kind.find(':');
  if (colon != std::string_view::npos) {
    const Spec s = parse_spec(kind);
    if (!s.name.empty()) throw Error(fmt::format("--backend {} names its device, and --device {} another", kind, device));
    if (s.device != device) {
      throw Error(fmt::format("--backend {} names device {}, --device says {}", kind, s.device, device));
    }
    return std::string(kind);
  }
  return fmt::format("{}:{}", kind, device);
}

}  // namespace hearth::kernels
