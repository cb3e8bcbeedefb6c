// Devices as a node advertises them: the JSON a worker puts in its handshake capabilities and
// `hearth info --system --json` prints, and the one-line text `hearth plan` shows.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/registry.h"

namespace hearth::shard {

// {"backend", "index", "spec", "name", "memory_total_bytes", "memory_free_bytes",
//  "properties": {...}, "bandwidth_gbps" (when measured, > 0)}
nlohmann::ordered_json device_json(const kernels::DeviceInfo& device, double bandwidth_gbps = 0);
// Every backend kind with its devices: [{"backend", "compiled", "devices": [...], "note"}].
// `cpu_bandwidth_gbps` (> 0) is attached to the CPU device.
nlohmann::ordered_json backends_json(const std::vector<kernels::BackendReport>& reports, double cpu_bandwidth_gbps = 0);
// "cpu:0 AMD EPYC 9R14, 23.4 GiB (20.1 GiB free), simd avx512, threads 2, 14.8 GB/s" from
// device_json's form; tolerant of missing fields (it reads what a peer sent).
std::string device_line(const nlohmann::json& device);
// "cpu:0 AMD EPYC 9R14": which device, without its facts (a plan's table cell).
std::string device_name(const nlohmann::json& device);

}  // namespace hearth::shard
