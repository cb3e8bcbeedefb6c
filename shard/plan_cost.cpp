// The planner's cost model: bytes a model reads and holds per layer (ModelCost) and the time
// and memory of a stage on a node (PlanModel).
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

}  // namespace hearth::shard
