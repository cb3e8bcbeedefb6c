// The cluster the planner plans over: nodes, links, and the nodes file (parse_cluster_json).
#include "shard/plan.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "engine/model/tensor_map.h"
#include "shard/plan_internal.h"

namespace hearth::shard {

using namespace plan_detail;

namespace {

std::string host_of(std::string_view address) {
  if (address.starts_with('[')) {  // [v6]:port
    const size_t close = address.find(']');
    return std::string(address.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1));
  }
  const size_t colon = address.rfind(':');
  if (colon != std::string_view::npos && address.find(':') == colon) address = address.substr(0, colon);
  return std::string(address);
}

bool is_loopback(std::string_view host) { return host == "localhost" || host == "127.0.0.1" || host == "::1"; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Cluster

double default_layer_overhead_ms(std::string_view backend) {
  if (backend == "cuda") return 0.10;    // ~15 kernel launches per layer without graphs
  if (backend == "vulkan") return 0.15;  // dispatches + barriers
  return 0.03;                           // ~15 thread-pool wake-ups per layer
}

void ClusterSpec::add_link(const std::string& a, const std::string& b, LinkSpec spec) {
  links[std::minmax(a, b)] = spec;
}

bool ClusterSpec::same_host(size_t a, size_t b) const {
  const std::string& ha = nodes[a].host;
  const std::string& hb = nodes[b].host;
  if (ha.empty() || hb.empty()) return false;  // hypothetical nodes without a host: separate machines
  return ha == hb || (is_loopback(ha) && is_loopback(hb));
}

LinkSpec ClusterSpec::link(size_t a, size_t b) const {
  const auto it = links.find(std::minmax(nodes[a].name, nodes[b].name));
  if (it != links.end()) return it->second;
  return same_host(a, b) ? local_link : default_link;
}

LinkSpec ClusterSpec::coordinator_link(size_t n) const {
  for (size_t c = 0; c < nodes.size(); ++c) {
    if (nodes[c].name != coordinator) continue;
    if (c == n) return LinkSpec{kInf, 0.0};
    return link(c, n);
  }
  return default_link;  // a coordinator outside the node list: an ordinary link away
}

void validate_cluster(const ClusterSpec& cluster) {
  if (cluster.nodes.empty()) throw Error("the cluster has no nodes");
  std::map<std::string, size_t> seen;
  for (size_t i = 0; i < cluster.nodes.size(); ++i) {
    const NodeSpec& n = cluster.nodes[i];
    if (n.name.empty()) throw Error(fmt::format("node {}: the name is empty", i));
    if (!seen.emplace(n.name, i).second) throw Error(fmt::format("node {}: the name appears twice", n.name));
    if (n.backend != "cpu" && n.backend != "cuda" && n.backend != "vulkan") {
      throw Error(fmt::format("node {}: unknown backend '{}' (cpu, cuda, vulkan)", n.name, n.backend));
    }
    if (n.memory_bytes == 0) throw Error(fmt::format("node {}: memory must be more than 0 bytes", n.name));
    if (!(n.bandwidth_gbps > 0) || !std::isfinite(n.bandwidth_gbps)) {
      throw Error(fmt::format("node {}: bandwidth_gbps must be a positive number of GB/s", n.name));
    }
    if (!std::isfinite(n.layer_overhead_ms)) throw Error(fmt::format("node {}: layer_overhead_ms is not finite", n.name));
  }
  auto check_link = [](const LinkSpec& l, const std::string& what) {
    if (!(l.gbit_per_s > 0) || !(l.latency_ms >= 0) || !std::isfinite(l.latency_ms)) {
      throw Error(fmt::format("{}: a link needs gbps > 0 and latency_ms >= 0", what));
    }
  };
  check_link(cluster.default_link, "default_link");
  check_link(cluster.local_link, "local_link");
  for (const auto& [pair, l] : cluster.links) {
    for (const std::string& end : {pair.first, pair.second}) {
      if (!seen.contains(end)) throw Error(fmt::format("link {} - {}: no node is named '{}'", pair.first, pair.second, end));
    }
    check_link(l, fmt::format("link {} - {}", pair.first, pair.second));
  }
  if (!cluster.coordinator.empty() && !seen.contains(cluster.coordinator)) {
    throw Error(fmt::format("coordinator '{}' is not one of the nodes", cluster.coordinator));
  }
}

uint64_t parse_size(std::string_view text) {
  const std::string original(text);
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  while (!text.empty() && text.back() == ' ') text.remove_suffix(1);
  size_t num_end = 0;
  while (num_end < text.size() && (std::isdigit(static_cast<unsigned char>(text[num_end])) || text[num_end] == '.')) {
    ++num_end;
  }
  if (num_end == 0) {
    throw Error(fmt::format("'{}' is not a size (a number with an optional unit: 16GiB, 512MiB, 1.5GB)", original));
  }
  double value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + num_end, value);
  if (ec != std::errc() || ptr != text.data() + num_end) throw Error(fmt::format("'{}' is not a size", original));
  std::string_view unit = text.substr(num_end);
  while (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  std::string u(unit);
  for (char& ch : u) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  double scale = 0;
  if (u.empty() || u == "b") scale = 1;
  else if (u == "k" || u == "kib") scale = 1024.0;
  else if (u == "m" || u == "mib") scale = 1024.0 * 1024;
  else if (u == "g" || u == "gib") scale = kGiB;
  else if (u == "t" || u == "tib") scale = kGiB * 1024;
  else if (u == "kb") scale = 1e3;
  else if (u == "mb") scale = 1e6;
  else if (u == "gb") scale = 1e9;
  else if (u == "tb") scale = 1e12;
  else throw Error(fmt::format("'{}': unknown size unit '{}' (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)", original, unit));
  const double bytes = value * scale;
  if (!(bytes < 1.8e19)) throw Error(fmt::format("'{}' is too large", original));
  return static_cast<uint64_t>(std::llround(bytes));
}

std::string format_bytes(uint64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (bytes >= (uint64_t{1} << 30)) return fmt::format("{:.2f} GiB", b / kGiB);
  if (bytes >= (uint64_t{1} << 20)) return fmt::format("{:.1f} MiB", b / (1024.0 * 1024));
  if (bytes >= (uint64_t{1} << 10)) return fmt::format("{:.1f} KiB", b / 1024.0);
  return fmt::format("{} B", bytes);
}

namespace {

double json_number(const nlohmann::json& j, const std::string& where, const char* field) {
  if (!j.is_number()) throw Error(fmt::format("{}: '{}' must be a number", where, field));
  return j.get<double>();
}

LinkSpec parse_link(const nlohmann::json& j, const std::string& where, LinkSpec fallback) {
  if (!j.is_object()) throw Error(fmt::format("{}: a link must be an object", where));
  LinkSpec l = fallback;
  if (j.contains("gbps")) l.gbit_per_s = json_number(j["gbps"], where, "gbps");
  if (j.contains("latency_ms")) l.latency_ms = json_number(j["latency_ms"], where, "latency_ms");
  if (!(l.gbit_per_s > 0)) throw Error(fmt::format("{}: gbps must be positive", where));
  if (!(l.latency_ms >= 0)) throw Error(fmt::format("{}: latency_ms must not be negative", where));
  return l;
}

}  // namespace

ClusterSpec parse_cluster_json(const nlohmann::json& json, const std::string& source) {
  ClusterSpec cluster;
  const nlohmann::json* nodes = &json;
  if (json.is_object()) {
    if (!json.contains("nodes")) throw Error(fmt::format("{}: no \"nodes\" list", source));
    nodes = &json["nodes"];
    for (const auto& [key, value] : json.items()) {
      if (key != "nodes" && key != "links" && key != "default_link" && key != "local_link" && key != "coordinator") {
        throw Error(fmt::format("{}: unknown field '{}'", source, key));
      }
    }
  }
  if (!nodes->is_array()) throw Error(fmt::format("{}: the nodes must be a JSON list", source));
  if (nodes->empty()) throw Error(fmt::format("{}: the node list is empty", source));
  size_t index = 0;
  for (const nlohmann::json& j : *nodes) {
    const std::string where = fmt::format("{}: node {}", source, index++);
    if (!j.is_object()) throw Error(fmt::format("{}: must be an object", where));
    NodeSpec n;
    if (!j.contains("name") || !j["name"].is_string()) throw Error(fmt::format("{}: missing field 'name' (a string)", where));
    n.name = j["name"].get<std::string>();
    const std::string at = fmt::format("{}: node {}", source, n.name);
    for (const auto& [key, value] : j.items()) {
      static const char* known[] = {"name", "host", "address", "backend", "memory", "bandwidth_gbps",
                                    "layer_overhead_ms", "prefill_tflops"};
      if (std::find(std::begin(known), std::end(known), key) == std::end(known)) {
        throw Error(fmt::format("{}: unknown field '{}'", at, key));
      }
    }
    for (const char* field : {"host", "address"}) {
      if (!j.contains(field)) continue;
      if (!j[field].is_string()) throw Error(fmt::format("{}: '{}' must be a string (host or host:port)", at, field));
      n.address = j[field].get<std::string>();
      n.host = host_of(n.address);
    }
    if (j.contains("backend")) {
      if (!j["backend"].is_string()) throw Error(fmt::format("{}: 'backend' must be a string", at));
      n.backend = j["backend"].get<std::string>();
    }
    if (!j.contains("memory")) throw Error(fmt::format("{}: missing field 'memory' (bytes or \"16GiB\")", at));
    const nlohmann::json& mem = j["memory"];
    if (mem.is_string()) {
      try {
        n.memory_bytes = parse_size(mem.get<std::string>());
      } catch (const Error& e) {
        throw Error(fmt::format("{}: memory: {}", at, e.what()));
      }
    } else if (mem.is_number()) {
      const double v = mem.get<double>();
      if (v < 0) throw Error(fmt::format("{}: memory must not be negative", at));
      if (!(v < 1.8e19)) throw Error(fmt::format("{}: memory is too large", at));
      n.memory_bytes = static_cast<uint64_t>(v);
    } else {
      throw Error(fmt::format("{}: memory must be a number of bytes or a size string", at));
    }
    if (!j.contains("bandwidth_gbps")) throw Error(fmt::format("{}: missing field 'bandwidth_gbps' (GB/s)", at));
    n.bandwidth_gbps = json_number(j["bandwidth_gbps"], at, "bandwidth_gbps");
    if (j.contains("layer_overhead_ms")) {
      n.layer_overhead_ms = json_number(j["layer_overhead_ms"], at, "layer_overhead_ms");
      if (n.layer_overhead_ms < 0) throw Error(fmt::format("{}: layer_overhead_ms must not be negative", at));
    }
    if (j.contains("prefill_tflops")) n.prefill_tflops = json_number(j["prefill_tflops"], at, "prefill_tflops");
    cluster.nodes.push_back(std::move(n));
  }
  if (json.is_object()) {
    if (json.contains("default_link")) {
      cluster.default_link = parse_link(json["default_link"], source + ": default_link", kDefaultLink);
    }
    if (json.contains("local_link")) {
      cluster.local_link = parse_link(json["local_link"], source + ": local_link", kDefaultLocalLink);
    }
    if (json.contains("coordinator")) {
      if (!json["coordinator"].is_string()) throw Error(fmt::format("{}: coordinator must be a node name", source));
      cluster.coordinator = json["coordinator"].get<std::string>();
    }
    if (json.contains("links")) {
      if (!json["links"].is_array()) throw Error(fmt::format("{}: links must be a list", source));
      for (const nlohmann::json& l : json["links"]) {
        if (!l.is_object() || !l.contains("a") || !l.contains("b") || !l["a"].is_string() || !l["b"].is_string()) {
          throw Error(fmt::format("{}: each link needs node names \"a\" and \"b\"", source));
        }
        const std::string a = l["a"].get<std::string>(), b = l["b"].get<std::string>();
        cluster.add_link(a, b, parse_link(l, fmt::format("{}: link {} - {}", source, a, b), cluster.default_link));
      }
    }
  }
  try {
    validate_cluster(cluster);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", source, e.what()));
  }
  return cluster;
}

ClusterSpec load_cluster_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: cannot open the nodes file", path));
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
  return parse_cluster_json(json, path);
}

}  // namespace hearth::shard
