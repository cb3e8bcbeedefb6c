#include "shard/devices.h"

#include <fmt/format.h>

#include "shard/plan.h"

namespace hearth::shard {

nlohmann::ordered_json device_json(const kernels::DeviceInfo& d, double bandwidth_gbps) {
  nlohmann::ordered_json j;
  j["backend"] = d.backend;
  j["index"] = d.index;
  j["spec"] = d.spec();
  j["name"] = d.name;
  j["memory_total_bytes"] = d.memory_total;
  j["memory_free_bytes"] = d.memory_free;
  j["properties"] = nlohmann::ordered_json::object();
  for (const auto& [key, value] : d.properties) j["properties"][key] = value;
  if (bandwidth_gbps > 0) j["bandwidth_gbps"] = bandwidth_gbps;
  return j;
}

nlohmann::ordered_json backends_json(const std::vector<kernels::BackendReport>& reports, double cpu_bandwidth_gbps) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const kernels::BackendReport& r : reports) {
    nlohmann::ordered_json b;
    b["backend"] = r.kind;
    b["compiled"] = r.compiled;
    b["devices"] = nlohmann::ordered_json::array();
    for (const kernels::DeviceInfo& d : r.devices) {
      b["devices"].push_back(device_json(d, d.backend == "cpu" ? cpu_bandwidth_gbps : 0.0));
    }
    if (!r.note.empty()) b["note"] = r.note;
    out.push_back(std::move(b));
  }
  return out;
}

namespace {
std::string text_field(const nlohmann::json& d, const char* key) {
  const auto it = d.find(key);
  return it != d.end() && it->is_string() ? it->get<std::string>() : std::string();
}
}  // namespace

std::string device_name(const nlohmann::json& d) {
  if (!d.is_object()) return "(unreadable device description)";
  std::string name = text_field(d, "spec").empty() ? text_field(d, "backend") : text_field(d, "spec");
  if (!text_field(d, "name").empty()) name += " " + text_field(d, "name");
  return name;
}

std::string device_line(const nlohmann::json& d) {
  if (!d.is_object()) return "(unreadable device description)";
  const auto bytes = [&](const char* key) {
    const auto it = d.find(key);
    return it != d.end() && it->is_number_unsigned() ? it->get<uint64_t>() : uint64_t{0};
  };
  std::string line = device_name(d);
  if (bytes("memory_total_bytes") > 0) {
    line += fmt::format(", {} ({} free)", format_bytes(bytes("memory_total_bytes")), format_bytes(bytes("memory_free_bytes")));
  }
  if (const auto props = d.find("properties"); props != d.end() && props->is_object()) {
    for (const auto& [key, value] : props->items()) {
      if (value.is_string()) line += fmt::format(", {} {}", key, value.get<std::string>());
    }
  }
  if (const auto bw = d.find("bandwidth_gbps"); bw != d.end() && bw->is_number()) {
    line += fmt::format(", {:.1f} GB/s", bw->get<double>());
  }
  return line;
}

}  // namespace hearth::shard
