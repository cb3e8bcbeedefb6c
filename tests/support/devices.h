// Which devices the GPU-backend tests can use here, from kernels::list_backends().
#pragma once

#include <string>
#include <string_view>

#include "kernels/registry.h"

namespace hearth::test {

inline bool device_property_is(const kernels::DeviceInfo& d, std::string_view key, std::string_view prefix) {
  for (const auto& [k, v] : d.properties) {
    if (k == key && std::string_view(v).starts_with(prefix)) return true;
  }
  return false;
}
// A device a backend can run on (Vulkan lists devices that lack what it needs, marked usable: no).
inline bool usable(const kernels::DeviceInfo& d) { return d.backend != "vulkan" || device_property_is(d, "usable", "yes"); }
// A software implementation (lavapipe): correct, but slow for whole real models.
inline bool software(const kernels::DeviceInfo& d) { return device_property_is(d, "type", "CPU"); }

// The spec of the first usable device of backend `kind` ("vulkan:0"), or "" with the reason in
// `why`.
inline std::string first_usable_device(std::string_view kind, std::string& why) {
  for (const kernels::BackendReport& r : kernels::list_backends()) {
    if (r.kind != kind) continue;
    if (!r.compiled) {
      why = "the " + r.kind + " backend is not built into this binary";
      return "";
    }
    for (const kernels::DeviceInfo& d : r.devices) {
      if (!usable(d)) continue;
      return d.spec();
    }
    if (why.empty()) why = "no usable " + r.kind + " device" + (r.note.empty() ? "" : ": " + r.note);
    return "";
  }
  why = "no backend named " + std::string(kind);
  return "";
}

}  // namespace hearth::test
