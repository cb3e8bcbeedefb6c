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

namespace hearth::shard {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// Bytes of one step's message without hidden states: token id, position, sequence id (feed);
// sampled token id (return). Their cost is the link's latency.
constexpr uint64_t kTokenMessageBytes = 16;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Bytes of n values in a plan dtype, rounding a partial q8_0 block up.
uint64_t values_bytes(int64_t n, DType type) {
  switch (type) {
    case DType::F32: return static_cast<uint64_t>(n) * 4;
    case DType::F16: return static_cast<uint64_t>(n) * 2;
    case DType::Q8_0: return static_cast<uint64_t>((n + 31) / 32) * 34;
    default: break;
  }
  throw Error(fmt::format("type {} is not a KV-cache or wire type (f32, f16, q8_0)", dtype_name(type)));
}

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

double link_ms(const LinkSpec& link, uint64_t bytes) {
  return link.latency_ms + static_cast<double>(bytes) * 8.0 / (link.gbit_per_s * 1e9) * 1e3;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// ModelCost

ModelCost ModelCost::from_gguf(const gguf::GgufFile& file, const engine::ModelConfig& config) {
  ModelCost c;
  c.name = file.contains("general.name") ? file.get<std::string>("general.name")
                                         : std::filesystem::path(file.path()).filename().string();
  c.n_layer = config.n_layer;
  c.n_embd = config.n_embd;
  c.n_ff = config.n_ff;
  c.n_vocab = config.n_vocab;
  c.tied_output = config.tied_output;
  c.layer_bytes.assign(static_cast<size_t>(config.n_layer), 0);
  c.layer_kv_values.assign(static_cast<size_t>(config.n_layer),
                           int64_t{config.n_head_kv} * (config.head_dim + config.head_dim_v));
  for (const gguf::TensorInfo& t : file.tensors()) {
    c.total_bytes += t.n_bytes;
    if (const std::optional<int32_t> layer = engine::tensor_layer(t.name)) {
      if (*layer >= config.n_layer) {
        throw Error(fmt::format("{}: tensor '{}' names layer {} of a {}-layer model", file.path(), t.name, *layer,
                                config.n_layer));
      }
      c.layer_bytes[static_cast<size_t>(*layer)] += t.n_bytes;
    } else if (t.name == engine::global_tensor_name(engine::GlobalTensor::TokenEmbd)) {
      c.embedding_bytes = t.n_bytes;
      c.embedding_row_bytes = t.n_bytes / static_cast<uint64_t>(std::max<int64_t>(1, t.ne[1]));
    } else if (t.name == engine::global_tensor_name(engine::GlobalTensor::OutputNorm) ||
               t.name == engine::global_tensor_name(engine::GlobalTensor::Output)) {
      c.head_bytes += t.n_bytes;
    } else {
      c.shared_bytes += t.n_bytes;
    }
  }
  return c;
}

uint64_t ModelCost::kv_bytes_per_token(int32_t layer, DType kv_type) const {
  const int64_t values = layer_kv_values.at(static_cast<size_t>(layer));
  return 2 * values_bytes(values / 2, kv_type);  // K and V rows are quantized separately
}

uint64_t ModelCost::read_bytes_per_token(int32_t first, int32_t last) const {
  uint64_t bytes = shared_bytes;
  for (int32_t l = first; l < last; ++l) bytes += layer_bytes[static_cast<size_t>(l)];
  if (first == 0) bytes += embedding_row_bytes;
  if (last == n_layer) bytes += head_bytes + (tied_output ? embedding_bytes : 0);
  return bytes;
}

uint64_t ModelCost::weight_bytes(int32_t first, int32_t last) const {
  uint64_t bytes = shared_bytes;
  for (int32_t l = first; l < last; ++l) bytes += layer_bytes[static_cast<size_t>(l)];
  if (first == 0 || (last == n_layer && tied_output)) bytes += embedding_bytes;
  if (last == n_layer) bytes += head_bytes;
  return bytes;
}

uint64_t activation_bytes_per_token(int32_t n_embd, DType wire_dtype) { return values_bytes(n_embd, wire_dtype); }

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

// ---------------------------------------------------------------------------------------------
// The model the planner optimises

uint64_t compute_buffer_bytes(const ModelCost& cost, const PlanOptions& options, bool last_stage) {
  const uint64_t per_token = (4 * static_cast<uint64_t>(cost.n_embd) + 3 * static_cast<uint64_t>(cost.n_ff)) * 4;
  uint64_t bytes = static_cast<uint64_t>(options.n_batch) * per_token;
  if (last_stage) bytes += static_cast<uint64_t>(options.n_seq) * static_cast<uint64_t>(cost.n_vocab) * 4;
  return bytes;
}

uint64_t PlanModel::stage_memory(int32_t first, int32_t last) const {
  uint64_t kv = 0;
  for (int32_t l = first; l < last; ++l) kv += cost.kv_bytes_per_token(l, options.kv_type);
  kv *= static_cast<uint64_t>(options.n_ctx) * static_cast<uint64_t>(options.n_seq);
  return cost.weight_bytes(first, last) + kv + compute_buffer_bytes(cost, options, last == cost.n_layer) +
         options.reserve_bytes;
}

bool PlanModel::fits(size_t node, int32_t first, int32_t last) const {
  return stage_memory(first, last) <= cluster.nodes[node].memory_bytes;
}

double PlanModel::compute_ms(size_t node, int32_t first, int32_t last) const {
  const NodeSpec& n = cluster.nodes[node];
  const double overhead = n.layer_overhead_ms >= 0 ? n.layer_overhead_ms : default_layer_overhead_ms(n.backend);
  return static_cast<double>(cost.read_bytes_per_token(first, last)) / (n.bandwidth_gbps * 1e9) * 1e3 +
         (last - first) * overhead;
}

double PlanModel::hop_ms(size_t from, size_t to) const {
  return link_ms(cluster.link(from, to), activation_bytes_per_token(cost.n_embd, options.wire_dtype));
}
double PlanModel::return_ms(size_t node) const { return link_ms(cluster.coordinator_link(node), kTokenMessageBytes); }
double PlanModel::feed_ms(size_t node) const { return link_ms(cluster.coordinator_link(node), kTokenMessageBytes); }

DType parse_plan_dtype(std::string_view text, std::string_view what) {
  std::string t(text);
  for (char& ch : t) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (t == "f32") return DType::F32;
  if (t == "f16") return DType::F16;
  if (t == "q8_0") return DType::Q8_0;
  throw Error(fmt::format("{} '{}' is not one of f32, f16, q8_0", what, text));
}

// ---------------------------------------------------------------------------------------------
// Search

namespace {

std::string lower_name(DType t) {
  std::string s(dtype_name(t));
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

void check_options(const ModelCost& cost, const PlanOptions& options) {
  if (cost.n_layer <= 0 || cost.layer_bytes.size() != static_cast<size_t>(cost.n_layer) ||
      cost.layer_kv_values.size() != static_cast<size_t>(cost.n_layer)) {
    throw Error("the model has no layers to plan");
  }
  if (options.n_ctx <= 0) throw Error("the context size must be positive");
  if (options.n_seq <= 0) throw Error("the number of parallel sequences must be positive");
  if (options.n_batch <= 0) throw Error("the batch size must be positive");
  values_bytes(1, options.kv_type);
  values_bytes(1, options.wire_dtype);
}

// Stage times (compute + memory check) for every node and layer range, O(1) to look up.
struct CostTable {
  size_t n_nodes = 0;
  int32_t n_layer = 0;
  std::vector<double> time;  // [node][first][last]: compute ms, inf when it does not fit
  std::vector<double> hop;   // [from][to]
  std::vector<double> ret, feed;
  std::vector<uint8_t> cross_host;  // [from][to]

  double t(size_t node, int32_t first, int32_t last) const {
    const size_t l1 = static_cast<size_t>(n_layer) + 1;
    return time[(node * l1 + static_cast<size_t>(first)) * l1 + static_cast<size_t>(last)];
  }

  explicit CostTable(const PlanModel& m) : n_nodes(m.cluster.nodes.size()), n_layer(m.cost.n_layer) {
    const size_t l1 = static_cast<size_t>(n_layer) + 1;
    time.assign(n_nodes * l1 * l1, kInf);
    std::vector<uint64_t> kv_prefix(l1, 0), w_prefix(l1, 0);
    for (int32_t l = 0; l < n_layer; ++l) {
      kv_prefix[static_cast<size_t>(l) + 1] = kv_prefix[static_cast<size_t>(l)] +
                                              m.cost.kv_bytes_per_token(l, m.options.kv_type);
      w_prefix[static_cast<size_t>(l) + 1] = w_prefix[static_cast<size_t>(l)] + m.cost.layer_bytes[static_cast<size_t>(l)];
    }
    const uint64_t positions = static_cast<uint64_t>(m.options.n_ctx) * static_cast<uint64_t>(m.options.n_seq);
    for (size_t n = 0; n < n_nodes; ++n) {
      const NodeSpec& node = m.cluster.nodes[n];
      const double overhead = node.layer_overhead_ms >= 0 ? node.layer_overhead_ms : default_layer_overhead_ms(node.backend);
      for (int32_t a = 0; a < n_layer; ++a) {
        for (int32_t b = a + 1; b <= n_layer; ++b) {
          const uint64_t layers = w_prefix[static_cast<size_t>(b)] - w_prefix[static_cast<size_t>(a)];
          const bool last = b == n_layer;
          uint64_t weights = layers + m.cost.shared_bytes;
          uint64_t read = weights;
          if (a == 0) weights += m.cost.embedding_bytes, read += m.cost.embedding_row_bytes;
          if (last) {
            weights += m.cost.head_bytes + (m.cost.tied_output && a != 0 ? m.cost.embedding_bytes : 0);
            read += m.cost.head_bytes + (m.cost.tied_output ? m.cost.embedding_bytes : 0);
          }
          const uint64_t kv = (kv_prefix[static_cast<size_t>(b)] - kv_prefix[static_cast<size_t>(a)]) * positions;
          const uint64_t memory = weights + kv + compute_buffer_bytes(m.cost, m.options, last) + m.options.reserve_bytes;
          if (memory > node.memory_bytes) continue;
          time[(n * l1 + static_cast<size_t>(a)) * l1 + static_cast<size_t>(b)] =
              static_cast<double>(read) / (node.bandwidth_gbps * 1e9) * 1e3 + (b - a) * overhead;
        }
      }
    }
    hop.assign(n_nodes * n_nodes, 0);
    cross_host.assign(n_nodes * n_nodes, 0);
    for (size_t a = 0; a < n_nodes; ++a) {
      ret.push_back(m.return_ms(a));
      feed.push_back(m.feed_ms(a));
      for (size_t b = 0; b < n_nodes; ++b) {
        if (a == b) continue;
        hop[a * n_nodes + b] = m.hop_ms(a, b);
        cross_host[a * n_nodes + b] = m.cluster.same_host(a, b) ? 0 : 1;
      }
    }
  }
};

struct Candidate {
  std::vector<size_t> order;
  std::vector<LayerRange> ranges;
  double bottleneck = kInf;
  double sum = kInf;
  int cross_hosts = 0;
  bool coordinator_first = false;
};

bool close(double a, double b) { return std::abs(a - b) <= 1e-9 * std::max({1.0, std::abs(a), std::abs(b)}); }

// Depth-first search over ordered sequences of distinct nodes (each prefix is itself a candidate
// when nodes may be dropped). A DFS level holds one row over the first layer of the current
// node: phase 1 the best bottleneck of the stages before it, phase 2 the least sum of their
// times with every stage under the phase-1 optimum. Rows are shared by every order with that
// prefix, so all orders of 8 nodes cost ~110 000 rows, not 40 320 full DPs.
class Search {
 public:
  Search(const CostTable& table, const PlanOptions& options, std::vector<std::vector<size_t>> successors,
         std::vector<size_t> starts, int coordinator)
      : t_(table), options_(options), successors_(std::move(successors)), starts_(std::move(starts)),
        coordinator_(coordinator), L_(table.n_layer) {}

  Candidate run() {
    phase_ = 1;
    for (size_t s : starts_) {
      std::vector<double> row(static_cast<size_t>(L_) + 1, kInf);
      row[0] = 0;
      seq_ = {s};
      dfs(row);
    }
    if (!std::isfinite(best_t_)) return {};
    limit_ = best_t_ + 1e-9 * std::max(1.0, best_t_);
    phase_ = 2;
    for (size_t s : starts_) {
      std::vector<double> row(static_cast<size_t>(L_) + 1, kInf);
      row[0] = t_.feed[s];
      seq_ = {s};
      parents_.clear();
      dfs(row);
    }
    return best_;
  }

 private:
  void dfs(const std::vector<double>& row) {
    const size_t p = seq_.back();
    const size_t L = static_cast<size_t>(L_);
    double lower = kInf;
    for (size_t i = 0; i < L; ++i) lower = std::min(lower, row[i]);
    if (phase_ == 1 ? lower >= best_t_ : lower > best_.sum + 1e-9 * std::max(1.0, best_.sum)) return;

    if (options_.allow_drop_nodes || seq_.size() == t_.n_nodes) finish(row);

    for (size_t q : successors_[p]) {
      if (std::find(seq_.begin(), seq_.end(), q) != seq_.end()) continue;
      const double hop = t_.hop[p * t_.n_nodes + q];
      std::vector<double> next(L + 1, kInf);
      std::vector<int32_t> parent(L + 1, -1);
      for (size_t j = 1; j < L; ++j) {
        for (size_t i = 0; i < j; ++i) {
          if (!std::isfinite(row[i])) continue;
          const double stage = t_.t(p, static_cast<int32_t>(i), static_cast<int32_t>(j)) + hop;
          double v;
          if (phase_ == 1) {
            v = std::max(row[i], stage);
          } else {
            if (!(stage <= limit_)) continue;
            v = row[i] + stage;
          }
          if (v < next[j]) next[j] = v, parent[j] = static_cast<int32_t>(i);
        }
      }
      seq_.push_back(q);
      if (phase_ == 2) parents_.push_back(std::move(parent));
      dfs(next);
      if (phase_ == 2) parents_.pop_back();
      seq_.pop_back();
    }
  }

  // The current node takes the remaining layers.
  void finish(const std::vector<double>& row) {
    const size_t p = seq_.back();
    double best = kInf;
    int32_t best_i = -1;
    for (int32_t i = 0; i < L_; ++i) {
      if (!std::isfinite(row[static_cast<size_t>(i)])) continue;
      const double stage = t_.t(p, i, L_) + t_.ret[p];
      double v;
      if (phase_ == 1) {
        v = std::max(row[static_cast<size_t>(i)], stage);
      } else {
        if (!(stage <= limit_)) continue;
        v = row[static_cast<size_t>(i)] + stage;
      }
      if (v < best) best = v, best_i = i;
    }
    if (phase_ == 1) {
      best_t_ = std::min(best_t_, best);
      return;
    }
    if (best_i < 0) return;
    Candidate c;
    c.order = seq_;
    c.sum = best;
    c.ranges.resize(seq_.size());
    int32_t end = L_, start = best_i;
    for (size_t k = seq_.size(); k-- > 0;) {
      c.ranges[k] = {start, end};
      end = start;
      if (k > 0) start = parents_[k - 1][static_cast<size_t>(start)];
    }
    c.bottleneck = 0;
    for (size_t k = 0; k < seq_.size(); ++k) {
      const double out = k + 1 < seq_.size() ? t_.hop[seq_[k] * t_.n_nodes + seq_[k + 1]] : t_.ret[seq_[k]];
      c.bottleneck = std::max(c.bottleneck, t_.t(seq_[k], c.ranges[k].first, c.ranges[k].last) + out);
      if (k + 1 < seq_.size()) c.cross_hosts += t_.cross_host[seq_[k] * t_.n_nodes + seq_[k + 1]];
    }
    c.coordinator_first = coordinator_ >= 0 && seq_.front() == static_cast<size_t>(coordinator_);
    if (better(c, best_)) best_ = std::move(c);
  }

  static bool better(const Candidate& a, const Candidate& b) {
    if (b.order.empty()) return true;
    if (!close(a.sum, b.sum)) return a.sum < b.sum;
    if (a.cross_hosts != b.cross_hosts) return a.cross_hosts < b.cross_hosts;
    if (a.coordinator_first != b.coordinator_first) return a.coordinator_first;
    return false;
  }

  const CostTable& t_;
  const PlanOptions& options_;
  std::vector<std::vector<size_t>> successors_;
  std::vector<size_t> starts_;
  int coordinator_;
  int32_t L_;
  int phase_ = 1;
  double best_t_ = kInf;
  double limit_ = kInf;
  Candidate best_;
  std::vector<size_t> seq_;
  std::vector<std::vector<int32_t>> parents_;  // parents_[k][j]: first layer of stage k given stage k+1 starts at j
};

int coordinator_index(const ClusterSpec& cluster) {
  for (size_t i = 0; i < cluster.nodes.size(); ++i) {
    if (cluster.nodes[i].name == cluster.coordinator) return static_cast<int>(i);
  }
  return -1;
}

}  // namespace

std::vector<size_t> greedy_node_order(const ClusterSpec& cluster) {
  const int coord = coordinator_index(cluster);
  std::vector<size_t> order(cluster.nodes.size());
  std::iota(order.begin(), order.end(), size_t{0});
  auto host_key = [&](size_t i) { return cluster.nodes[i].host.empty() ? "#" + cluster.nodes[i].name : cluster.nodes[i].host; };
  std::map<std::string, double> host_bw;
  for (size_t i : order) host_bw[host_key(i)] += cluster.nodes[i].bandwidth_gbps;
  const std::string coord_host = coord >= 0 ? host_key(static_cast<size_t>(coord)) : std::string();
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const std::string ha = host_key(a), hb = host_key(b);
    if (ha != hb) {
      if ((ha == coord_host) != (hb == coord_host)) return ha == coord_host;
      if (host_bw[ha] != host_bw[hb]) return host_bw[ha] > host_bw[hb];
      return ha < hb;
    }
    if ((static_cast<int>(a) == coord) != (static_cast<int>(b) == coord)) return static_cast<int>(a) == coord;
    return cluster.nodes[a].bandwidth_gbps > cluster.nodes[b].bandwidth_gbps;
  });
  return order;
}

namespace {

// One order of the nodes, any of them skipped (when allowed): V[k][i] is the best value of the
// stages before node order[k] given that it starts at layer i (phase 1: the slowest stage;
// phase 2: the sum of stage times with every stage under the phase-1 optimum). O(K^2 L^2).
Candidate solve_fixed_order(const CostTable& t, const PlanOptions& options, const std::vector<size_t>& order) {
  const size_t K = order.size();
  const size_t L = static_cast<size_t>(t.n_layer);
  struct Cell {
    double value = kInf;
    int32_t parent_k = -1, parent_i = -1;
  };
  std::vector<Cell> V;
  size_t end_k = 0, end_i = 0;
  const auto run = [&](int phase, double limit) {
    V.assign(K * (L + 1), Cell{});
    for (size_t k = 0; k < K; ++k) {
      if (options.allow_drop_nodes || k == 0) V[k * (L + 1)].value = phase == 1 ? 0.0 : t.feed[order[k]];
    }
    const auto combine = [&](double before, double stage) {
      if (phase == 1) return std::max(before, stage);
      return stage <= limit ? before + stage : kInf;
    };
    double best = kInf;
    for (size_t k = 0; k < K; ++k) {
      const size_t p = order[k];
      for (size_t i = 0; i < L; ++i) {
        const double before = V[k * (L + 1) + i].value;
        if (!std::isfinite(before)) continue;
        if (options.allow_drop_nodes || k + 1 == K) {
          const double v = combine(before, t.t(p, static_cast<int32_t>(i), t.n_layer) + t.ret[p]);
          if (v < best) best = v, end_k = k, end_i = i;
        }
        const size_t k2_end = options.allow_drop_nodes ? K : std::min(K, k + 2);
        for (size_t k2 = k + 1; k2 < k2_end; ++k2) {
          const double hop = t.hop[p * t.n_nodes + order[k2]];
          for (size_t j = i + 1; j < L; ++j) {
            const double v = combine(before, t.t(p, static_cast<int32_t>(i), static_cast<int32_t>(j)) + hop);
            Cell& cell = V[k2 * (L + 1) + j];
            if (v < cell.value) cell = {v, static_cast<int32_t>(k), static_cast<int32_t>(i)};
          }
        }
      }
    }
    return best;
  };
  const double best_t = run(1, kInf);
  Candidate c;
  if (!std::isfinite(best_t)) return c;
  c.bottleneck = best_t;
  c.sum = run(2, best_t + 1e-9 * std::max(1.0, best_t));
  HEARTH_CHECK(std::isfinite(c.sum), "phase 2 lost the phase-1 optimum {}", best_t);
  int32_t k = static_cast<int32_t>(end_k), i = static_cast<int32_t>(end_i), end = t.n_layer;
  while (k >= 0) {
    c.order.insert(c.order.begin(), order[static_cast<size_t>(k)]);
    c.ranges.insert(c.ranges.begin(), LayerRange{i, end});
    end = i;
    const Cell& cell = V[static_cast<size_t>(k) * (L + 1) + static_cast<size_t>(i)];
    k = cell.parent_k;
    i = cell.parent_i;
  }
  return c;
}

PipelinePlan build_plan(const PlanModel& m, const std::vector<size_t>& order, const std::vector<LayerRange>& ranges,
                        bool manual) {
  PipelinePlan plan;
  plan.model = m.cost.name;
  plan.n_layer = m.cost.n_layer;
  plan.n_ctx = m.options.n_ctx;
  plan.n_seq = m.options.n_seq;
  plan.kv_type = lower_name(m.options.kv_type);
  plan.wire_dtype = lower_name(m.options.wire_dtype);
  plan.coordinator = m.cluster.coordinator;
  plan.manual = manual;
  plan.feed = {order.front() < m.cluster.nodes.size() ? m.cluster.nodes[order.front()].name : "", kTokenMessageBytes,
               m.feed_ms(order.front())};
  const uint64_t positions = static_cast<uint64_t>(m.options.n_ctx) * static_cast<uint64_t>(m.options.n_seq);
  for (size_t k = 0; k < order.size(); ++k) {
    const NodeSpec& n = m.cluster.nodes[order[k]];
    const LayerRange r = ranges[k];
    StagePlan s;
    s.node = n.name;
    s.address = n.address;
    s.backend = n.backend;
    s.device = n.device;
    s.first = r.first;
    s.last = r.last;
    s.weight_bytes = m.cost.weight_bytes(r.first, r.last);
    for (int32_t l = r.first; l < r.last; ++l) s.kv_bytes += m.cost.kv_bytes_per_token(l, m.options.kv_type) * positions;
    s.compute_bytes = compute_buffer_bytes(m.cost, m.options, r.last == m.cost.n_layer) + m.options.reserve_bytes;
    s.memory_bytes = s.weight_bytes + s.kv_bytes + s.compute_bytes;
    s.memory_budget = n.memory_bytes;
    s.read_bytes_per_token = m.cost.read_bytes_per_token(r.first, r.last);
    s.compute_ms = m.compute_ms(order[k], r.first, r.last);
    if (k + 1 < order.size()) {
      s.hop = {m.cluster.nodes[order[k + 1]].name, activation_bytes_per_token(m.cost.n_embd, m.options.wire_dtype),
               m.hop_ms(order[k], order[k + 1])};
    } else {
      s.hop = {"coordinator", kTokenMessageBytes, m.return_ms(order[k])};
    }
    plan.stages.push_back(std::move(s));
  }
  // Why each unused node was left out.
  for (size_t i = 0; i < m.cluster.nodes.size(); ++i) {
    if (std::find(order.begin(), order.end(), i) != order.end()) continue;
    const NodeSpec& n = m.cluster.nodes[i];
    bool any_fits = false;
    for (int32_t l = 0; l < m.cost.n_layer && !any_fits; ++l) any_fits = m.fits(i, l, l + 1);
    std::string reason;
    if (manual) {
      reason = "no layers in the given split";
    } else if (!any_fits) {
      uint64_t smallest = ~uint64_t{0};
      for (int32_t l = 0; l < m.cost.n_layer; ++l) smallest = std::min(smallest, m.stage_memory(l, l + 1));
      reason = fmt::format("too small: {} of memory, one layer needs {}", format_bytes(n.memory_bytes), format_bytes(smallest));
    } else {
      reason = "not worth a hop: the plan is as fast or faster without it";
    }
    plan.dropped.push_back({n.name, reason});
  }
  return plan;
}

// Why no plan exists: the first constraint that names the shortfall.
[[noreturn]] void throw_infeasible(const PlanModel& m) {
  const ModelCost& c = m.cost;
  const size_t N = m.cluster.nodes.size();
  uint64_t weights = c.weight_bytes(0, c.n_layer), kv = 0;
  for (int32_t l = 0; l < c.n_layer; ++l) kv += c.kv_bytes_per_token(l, m.options.kv_type);
  kv *= static_cast<uint64_t>(m.options.n_ctx) * static_cast<uint64_t>(m.options.n_seq);
  uint64_t total = 0, usable = 0;
  for (const NodeSpec& n : m.cluster.nodes) {
    total += n.memory_bytes;
    const uint64_t fixed = compute_buffer_bytes(c, m.options, false) + m.options.reserve_bytes;
    usable += n.memory_bytes > fixed ? n.memory_bytes - fixed : 0;
  }
  const std::string kv_what = fmt::format("{} positions x {} sequence{}, {}", m.options.n_ctx, m.options.n_seq,
                                          m.options.n_seq == 1 ? "" : "s", lower_name(m.options.kv_type));
  if (weights + kv > usable) {
    throw Error(fmt::format(
        "the model needs {} of weights + {} KV cache ({}); the {} node{} have {} together ({} after compute buffers "
        "and reserve)",
        format_bytes(weights), format_bytes(kv), kv_what, N, N == 1 ? "" : "s", format_bytes(total), format_bytes(usable)));
  }
  size_t largest = 0;
  for (size_t i = 1; i < N; ++i) {
    if (m.cluster.nodes[i].memory_bytes > m.cluster.nodes[largest].memory_bytes) largest = i;
  }
  const NodeSpec& big = m.cluster.nodes[largest];
  // One layer as a middle stage: without the embedding table or the head (checked next).
  const uint64_t positions = static_cast<uint64_t>(m.options.n_ctx) * static_cast<uint64_t>(m.options.n_seq);
  for (int32_t l = 0; l < c.n_layer; ++l) {
    const uint64_t layer = c.layer_bytes[static_cast<size_t>(l)];
    const uint64_t need = layer + c.shared_bytes + c.kv_bytes_per_token(l, m.options.kv_type) * positions +
                          compute_buffer_bytes(c, m.options, false) + m.options.reserve_bytes;
    if (need > big.memory_bytes) {
      throw Error(fmt::format(
          "layer {} alone ({} of weights; {} with its KV cache, compute buffers and reserve) exceeds every node's "
          "free memory (the largest, {}, has {})",
          l, format_bytes(layer), format_bytes(need), big.name, format_bytes(big.memory_bytes)));
    }
  }
  const auto first_fits = [&](bool first) {
    for (size_t n = 0; n < N; ++n) {
      if (first ? m.fits(n, 0, 1) : m.fits(n, c.n_layer - 1, c.n_layer)) return true;
    }
    return false;
  };
  if (!first_fits(true)) {
    throw Error(fmt::format("no node can hold the first stage: layer 0 with the embedding table ({}) needs {} (the "
                            "largest node, {}, has {})",
                            format_bytes(c.embedding_bytes), format_bytes(m.stage_memory(0, 1)), big.name,
                            format_bytes(big.memory_bytes)));
  }
  if (!first_fits(false)) {
    throw Error(fmt::format("no node can hold the last stage: layer {} with the output head ({}) needs {} (the largest "
                            "node, {}, has {})",
                            c.n_layer - 1, format_bytes(c.head_bytes + (c.tied_output ? c.embedding_bytes : 0)),
                            format_bytes(m.stage_memory(c.n_layer - 1, c.n_layer)), big.name,
                            format_bytes(big.memory_bytes)));
  }
  if (!m.options.allow_drop_nodes && N > static_cast<size_t>(c.n_layer)) {
    throw Error(fmt::format("{} nodes but only {} layers: every node needs at least one (allow dropping nodes)", N,
                            c.n_layer));
  }
  throw Error(fmt::format("no contiguous split of the {} layers fits these {} nodes' memory ({} of weights + {} KV "
                          "cache; the nodes have {} together){}",
                          c.n_layer, N, format_bytes(weights), format_bytes(kv), format_bytes(total),
                          m.options.allow_drop_nodes ? "" : "; every node must take layers"));
}

}  // namespace

PipelinePlan make_plan(const ModelCost& cost, const ClusterSpec& cluster, const PlanOptions& options) {
  validate_cluster(cluster);
  check_options(cost, options);
  const PlanModel model{cost, cluster, options};
  const CostTable table(model);
  const size_t N = cluster.nodes.size();
  Candidate best;
  if (N <= options.exhaustive_order_limit) {
    std::vector<std::vector<size_t>> successors(N);
    std::vector<size_t> starts;
    for (size_t a = 0; a < N; ++a) {
      starts.push_back(a);
      for (size_t b = 0; b < N; ++b) {
        if (a != b) successors[a].push_back(b);
      }
    }
    Search search(table, options, std::move(successors), std::move(starts), coordinator_index(cluster));
    best = search.run();
  } else {
    best = solve_fixed_order(table, options, greedy_node_order(cluster));
  }
  if (best.order.empty()) throw_infeasible(model);
  return build_plan(model, best.order, best.ranges, false);
}

PipelinePlan make_manual_plan(const ModelCost& cost, const ClusterSpec& cluster, const PlanOptions& options,
                              const std::vector<LayerRange>& split) {
  validate_cluster(cluster);
  check_options(cost, options);
  if (split.size() != cluster.nodes.size()) {
    throw Error(fmt::format("the split has {} entries for {} nodes", split.size(), cluster.nodes.size()));
  }
  const PlanModel model{cost, cluster, options};
  std::vector<size_t> order;
  std::vector<LayerRange> ranges;
  int32_t next = 0;
  for (size_t i = 0; i < split.size(); ++i) {
    const LayerRange r = split[i];
    const NodeSpec& n = cluster.nodes[i];
    if (r.first == r.last) continue;
    if (r.first != next || r.last < r.first || r.last > cost.n_layer) {
      throw Error(fmt::format("node {}: layers {}-{} do not continue the split at layer {} (of {})", n.name, r.first,
                              r.last, next, cost.n_layer));
    }
    const uint64_t need = model.stage_memory(r.first, r.last);
    if (need > n.memory_bytes) {
      throw Error(fmt::format("node {}: layers {}-{} need {} ({} weights + {} KV cache + compute), the node has {}",
                              n.name, r.first, r.last, format_bytes(need), format_bytes(cost.weight_bytes(r.first, r.last)),
                              format_bytes(need - cost.weight_bytes(r.first, r.last) -
                                           compute_buffer_bytes(cost, options, r.last == cost.n_layer) -
                                           options.reserve_bytes),
                              format_bytes(n.memory_bytes)));
    }
    order.push_back(i);
    ranges.push_back(r);
    next = r.last;
  }
  if (next != cost.n_layer) {
    throw Error(fmt::format("the split ends at layer {}; the model has {} layers", next, cost.n_layer));
  }
  return build_plan(model, order, ranges, true);
}

std::vector<LayerRange> parse_split(std::string_view text, int32_t n_layer, size_t n_nodes) {
  std::vector<std::string_view> parts;
  while (true) {
    const size_t comma = text.find(',');
    parts.push_back(text.substr(0, comma));
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  if (parts.size() != n_nodes) {
    throw Error(fmt::format("--split has {} entries; give one per node ({} nodes)", parts.size(), n_nodes));
  }
  auto number = [](std::string_view s, std::string_view part) {
    int32_t v = 0;
    const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || v < 0) {
      throw Error(fmt::format("--split: '{}' is not a layer range (first-last) or a layer count", part));
    }
    return v;
  };
  const bool ranges = parts.front().find('-') != std::string_view::npos;
  std::vector<LayerRange> out;
  int32_t next = 0;
  for (std::string_view part : parts) {
    const size_t dash = part.find('-');
    if ((dash != std::string_view::npos) != ranges) {
      throw Error("--split: give either ranges (0-10,10-24) or layer counts (10,14), not both");
    }
    LayerRange r;
    if (ranges) {
      r = {number(part.substr(0, dash), part), number(part.substr(dash + 1), part)};
      if (r.last < r.first) throw Error(fmt::format("--split: range '{}' ends before it starts", part));
    } else {
      const int32_t count = number(part, part);
      r = {next, next + count};
    }
    if (r.last > n_layer) throw Error(fmt::format("--split: '{}' goes past the model's {} layers", part, n_layer));
    if (r.first != r.last) next = r.last;
    out.push_back(r);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// PipelinePlan

double PipelinePlan::token_ms() const {
  double ms = feed.ms;
  for (const StagePlan& s : stages) ms += s.stage_ms();
  return ms;
}
double PipelinePlan::tokens_per_s() const { return 1000.0 / token_ms(); }
double PipelinePlan::bottleneck_ms() const {
  double ms = 0;
  for (const StagePlan& s : stages) ms = std::max(ms, s.stage_ms());
  return ms;
}
double PipelinePlan::pipelined_tokens_per_s() const { return 1000.0 / bottleneck_ms(); }
double PipelinePlan::parallel_tokens_per_s() const {
  return std::min(static_cast<double>(n_seq) * tokens_per_s(), pipelined_tokens_per_s());
}

namespace {
nlohmann::ordered_json hop_json(const HopEstimate& h) {
  return {{"to", h.to}, {"bytes_per_token", h.bytes_per_token}, {"ms", h.ms}};
}
HopEstimate hop_from(const nlohmann::json& j) {
  return {j.at("to").get<std::string>(), j.at("bytes_per_token").get<uint64_t>(), j.at("ms").get<double>()};
}
}  // namespace

nlohmann::ordered_json PipelinePlan::to_json() const {
  nlohmann::ordered_json j;
  j["model"] = model;
  j["n_layer"] = n_layer;
  j["n_ctx"] = n_ctx;
  j["n_seq"] = n_seq;
  j["kv_type"] = kv_type;
  j["wire_dtype"] = wire_dtype;
  j["coordinator"] = coordinator;
  j["manual"] = manual;
  j["feed"] = hop_json(feed);
  j["stages"] = nlohmann::ordered_json::array();
  for (const StagePlan& s : stages) {
    j["stages"].push_back({{"node", s.node},
                           {"address", s.address},
                           {"backend", s.backend},
                           {"device", s.device},
                           {"first_layer", s.first},
                           {"last_layer", s.last},
                           {"weight_bytes", s.weight_bytes},
                           {"kv_bytes", s.kv_bytes},
                           {"compute_bytes", s.compute_bytes},
                           {"memory_bytes", s.memory_bytes},
                           {"memory_budget", s.memory_budget},
                           {"read_bytes_per_token", s.read_bytes_per_token},
                           {"compute_ms", s.compute_ms},
                           {"hop", hop_json(s.hop)},
                           {"stage_ms", s.stage_ms()}});
  }
  j["dropped"] = nlohmann::ordered_json::array();
  for (const DroppedNode& d : dropped) j["dropped"].push_back({{"node", d.node}, {"reason", d.reason}});
  j["token_ms"] = token_ms();
  j["tokens_per_s"] = tokens_per_s();
  j["pipelined_tokens_per_s"] = pipelined_tokens_per_s();
  j["parallel_tokens_per_s"] = parallel_tokens_per_s();
  return j;
}

PipelinePlan PipelinePlan::from_json(const nlohmann::json& j) {
  try {
    PipelinePlan p;
    p.model = j.at("model").get<std::string>();
    p.n_layer = j.at("n_layer").get<int32_t>();
    p.n_ctx = j.at("n_ctx").get<int32_t>();
    p.n_seq = j.at("n_seq").get<int32_t>();
    p.kv_type = j.at("kv_type").get<std::string>();
    p.wire_dtype = j.at("wire_dtype").get<std::string>();
    p.coordinator = j.at("coordinator").get<std::string>();
    p.manual = j.at("manual").get<bool>();
    p.feed = hop_from(j.at("feed"));
    int32_t next = 0;
    for (const nlohmann::json& s : j.at("stages")) {
      StagePlan st;
      st.node = s.at("node").get<std::string>();
      st.address = s.at("address").get<std::string>();
      st.backend = s.at("backend").get<std::string>();
      st.device = s.value("device", std::string());
      st.first = s.at("first_layer").get<int32_t>();
      st.last = s.at("last_layer").get<int32_t>();
      if (st.first != next || st.last <= st.first) {
        throw Error(fmt::format("stage on {}: layers [{}, {}) do not continue at layer {}", st.node, st.first, st.last, next));
      }
      next = st.last;
      st.weight_bytes = s.at("weight_bytes").get<uint64_t>();
      st.kv_bytes = s.at("kv_bytes").get<uint64_t>();
      st.compute_bytes = s.at("compute_bytes").get<uint64_t>();
      st.memory_bytes = s.at("memory_bytes").get<uint64_t>();
      st.memory_budget = s.at("memory_budget").get<uint64_t>();
      st.read_bytes_per_token = s.at("read_bytes_per_token").get<uint64_t>();
      st.compute_ms = s.at("compute_ms").get<double>();
      st.hop = hop_from(s.at("hop"));
      p.stages.push_back(std::move(st));
    }
    if (p.stages.empty() || next != p.n_layer) {
      throw Error(fmt::format("the stages cover layers [0, {}) of {}", next, p.n_layer));
    }
    for (const nlohmann::json& d : j.at("dropped")) {
      p.dropped.push_back({d.at("node").get<std::string>(), d.at("reason").get<std::string>()});
    }
    return p;
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("not a pipeline plan: {}", e.what()));
  }
}

std::string PipelinePlan::to_markdown() const {
  std::string out = fmt::format("model {}: {} layers, context {} x {} sequence{}, KV cache {}, wire {}{}\n\n", model,
                                n_layer, n_ctx, n_seq, n_seq == 1 ? "" : "s", kv_type, wire_dtype,
                                manual ? " (split given by hand)" : "");
  out += "| stage | node | backend | layers | weights | KV cache | memory used / budget | ms/token | link to | bytes/token | link ms |\n";
  out += "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |\n";
  for (size_t k = 0; k < stages.size(); ++k) {
    const StagePlan& s = stages[k];
    out += fmt::format("| {} | {} | {} | {}-{} ({}) | {} | {} | {} / {} | {:.3f} | {} | {} | {:.3f} |\n", k, s.node,
                       s.device.empty() ? s.backend : fmt::format("{} ({})", s.backend, s.device), s.first, s.last, s.last - s.first, format_bytes(s.weight_bytes),
                       format_bytes(s.kv_bytes), format_bytes(s.memory_bytes), format_bytes(s.memory_budget),
                       s.compute_ms, s.hop.to, s.hop.bytes_per_token, s.hop.ms);
  }
  for (const DroppedNode& d : dropped) out += fmt::format("\nnode {} gets no layers: {}", d.node, d.reason);
  if (!dropped.empty()) out += "\n";
  size_t slowest = 0;
  for (size_t k = 1; k < stages.size(); ++k) {
    if (stages[k].stage_ms() > stages[slowest].stage_ms()) slowest = k;
  }
  double links = feed.ms;
  for (const StagePlan& s : stages) links += s.hop.ms;
  out += fmt::format("\none sequence: {:.1f} tokens/s ({:.3f} ms per token: {:.3f} ms compute + {:.3f} ms links)\n",
                     tokens_per_s(), token_ms(), token_ms() - links, links);
  out += fmt::format("pipelined bound: {:.1f} tokens/s with >= {} sequences in flight (slowest: stage {} on {}, {:.3f} ms)\n",
                     pipelined_tokens_per_s(), stages.size(), slowest, stages[slowest].node, stages[slowest].stage_ms());
  if (n_seq > 1) out += fmt::format("with {} sequences in flight: {:.1f} tokens/s\n", n_seq, parallel_tokens_per_s());
  return out;
}

}  // namespace hearth::shard
