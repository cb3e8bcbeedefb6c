// The planner: which node runs which contiguous range of layers, computed from what a model
// costs (bytes of weights per layer, KV cache per token, activations per hop) and what each node
// offers (memory, matvec bandwidth, links). Decode at batch 1 is bound by memory bandwidth, so a
// stage's time per token is modelled as
//
//     stage_ms = bytes of weights read per token / bandwidth + n_layers * layer_overhead_ms
//              + outgoing hop (link latency + bytes per token / link bandwidth)
//
// and the planner minimises the slowest stage (the pipelined throughput bound), then the sum of
// stage times (one sequence's latency), then the number of links between hosts. Every stage must
// fit its node's memory: weights + KV cache for n_ctx x n_seq + compute buffers + a reserve.
// Plans are serializable (JSON), printable (markdown) and validated before any weight moves.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "engine/format/gguf.h"
#include "engine/model/model_config.h"

namespace hearth::shard {

// ---------------------------------------------------------------------------------------------
// What the model costs

struct ModelCost {
  std::string name;           // general.name, or the file name
  int32_t n_layer = 0;
  int32_t n_embd = 0;
  int32_t n_ff = 0;
  int32_t n_vocab = 0;
  bool tied_output = false;   // the head is token_embd: the last stage holds the table too
  std::vector<uint64_t> layer_bytes;     // [n_layer]: bytes of the tensors named for layer N (engine::tensor_layer)
  std::vector<int64_t> layer_kv_values;  // [n_layer]: K + V values per token (n_head_kv * head_dim * 2)
  uint64_t embedding_bytes = 0;          // token_embd.weight: held by the first stage (and the last if tied)
  uint64_t embedding_row_bytes = 0;      // what the first stage reads of it per token
  uint64_t head_bytes = 0;               // output_norm + output (without token_embd when tied)
  uint64_t shared_bytes = 0;             // other tensors (rope_freqs...): every stage holds them
  uint64_t total_bytes = 0;              // every tensor of the file

  // Reads every tensor size from the file; `config` says n_head_kv, head_dim, tied output.
  static ModelCost from_gguf(const gguf::GgufFile& file, const engine::ModelConfig& config);

  uint64_t kv_bytes_per_token(int32_t layer, DType kv_type) const;  // one sequence, one position
  // Bytes a stage reads per decoded token: its layers, one embedding row (first), the head (last).
  uint64_t read_bytes_per_token(int32_t first, int32_t last) const;
  // Bytes a stage holds: its layers, the table (first, or last when tied), the head (last), shared.
  uint64_t weight_bytes(int32_t first, int32_t last) const;
};

// Hidden states of one token on a link: n_embd values in the wire type (f32 4 B, f16 2 B, q8_0 34/32 B).
uint64_t activation_bytes_per_token(int32_t n_embd, DType wire_dtype);

// ---------------------------------------------------------------------------------------------
// What the cluster offers

struct LinkSpec {
  double gbit_per_s = 1.0;
  double latency_ms = 0.2;
  friend bool operator==(const LinkSpec&, const LinkSpec&) = default;
};

// Links between two nodes of one host (loopback / shared memory) unless the file says otherwise.
inline constexpr LinkSpec kDefaultLink{1.0, 0.2};
inline constexpr LinkSpec kDefaultLocalLink{40.0, 0.02};

struct NodeSpec {
  std::string name;
  std::string address;     // host:port, or empty for a hypothetical node
  std::string host;        // the machine (address without port); nodes of one host use the local link
  std::string backend = "cpu";  // cpu, cuda, vulkan
  std::string device;           // the device its stages run on, "cpu:0 NAME" (shard/devices.h); empty: unknown
  std::vector<std::string> devices;  // every device the node advertised, one line each
  uint64_t memory_bytes = 0;    // what hearth may use on this node
  double bandwidth_gbps = 0;    // measured matvec bandwidth, GB/s (1e9 bytes/s)
  double layer_overhead_ms = -1;  // fixed cost per layer per token; < 0: the backend's default
  double prefill_tflops = 0;      // compute throughput for prefill (0: unknown; not used yet)
  friend bool operator==(const NodeSpec&, const NodeSpec&) = default;
};

// Assumed per-layer overhead per token: kernel launches / thread wake-ups of ~15 ops per layer.
double default_layer_overhead_ms(std::string_view backend);

struct ClusterSpec {
  std::vector<NodeSpec> nodes;
  std::map<std::pair<std::string, std::string>, LinkSpec> links;  // symmetric; key (min, max) by name
  LinkSpec default_link = kDefaultLink;
  LinkSpec local_link = kDefaultLocalLink;
  std::string coordinator;  // the node that also runs tokenizer/sampler/server; empty: none of them

  // The link between two nodes (by index): explicit, else local (same host), else default.
  LinkSpec link(size_t a, size_t b) const;
  // The link from the coordinator to node `n` (the coordinator itself: free).
  LinkSpec coordinator_link(size_t n) const;
  bool same_host(size_t a, size_t b) const;
  void add_link(const std::string& a, const std::string& b, LinkSpec link);
};

// Checks names (unique, non-empty), backends, memory and bandwidth (> 0), links (known nodes,
// positive bandwidth, non-negative latency) and the coordinator. Throws hearth::Error naming
// the node and the field.
void validate_cluster(const ClusterSpec& cluster);

// The nodes file (JSON): either a list of nodes, or an object
//   { "nodes": [ {"name": "desktop", "host": "192.168.1.10:7070", "backend": "cuda",
//                 "memory": "10GiB", "bandwidth_gbps": 300, "layer_overhead_ms": 0.1}, ... ],
//     "links": [ {"a": "desktop", "b": "laptop", "gbps": 1, "latency_ms": 0.3}, ... ],
//     "default_link": {"gbps": 1, "latency_ms": 0.2}, "local_link": {...},
//     "coordinator": "desktop" }
// memory: a number of bytes or a size string ("16GiB", "512 MiB", "1.5GB", "8G" = GiB).
// Throws hearth::Error naming the file, the node and what is wrong.
ClusterSpec parse_cluster_json(const nlohmann::json& json, const std::string& source = "<nodes>");
ClusterSpec load_cluster_file(const std::string& path);

// "16GiB", "16 GiB", "512MiB", "1.5GB" (decimal), "8G" (binary), "123" (bytes). Throws hearth::Error.
uint64_t parse_size(std::string_view text);
std::string format_bytes(uint64_t bytes);  // "1.5 GiB", "412.0 MiB", "35.2 KiB", "12 B"

// ---------------------------------------------------------------------------------------------
// Tensor parallelism: which nodes to join into one tensor-parallel group
//
// For one sequence a pipeline is no faster than its nodes one after the other: with layers split
// by bandwidth every stage takes bytes / sum(bandwidth), and the n stages add up. A tensor-parallel
// group of the same nodes reads its shares at once (bytes / sum(bandwidth), shares proportional
// to bandwidth) but joins every layer with two collectives over its slowest link. Per token:
//
//     pp_ms = n * bytes / sum(bw) + n_layer * overhead + (n - 1) hops (latency + hidden / link bw)
//     tp_ms = bytes / sum(bw) + n_layer * overhead + 2 * n_layer * all_reduce_ms
//     all_reduce_ms = latency + (n - 1) * n_embd * 4 bytes / link bw   (an all-gather of f32 sums)
//
// so a group pays inside a box or over a fast link (a few us of latency) and not across 1 GbE or
// Wi-Fi, where 2 * n_layer latencies outweigh what the shared read saves.
struct TensorGroupAdvice {
  std::vector<std::string> members;  // node names, the group's order
  std::vector<double> shares;        // each member's share, proportional to its bandwidth
  LinkSpec slowest_link;             // the slowest link between two members
  double all_reduce_ms = 0;          // one all-reduce of a hidden state over it
  double tp_ms = 0, pp_ms = 0;       // per token, the whole model, as above
  bool tensor_parallel = false;      // tp_ms < pp_ms
  std::string why;                   // one sentence with the figures
};

// The groups worth asking about: the nodes of each host with several, and each pair of nodes an
// explicit link joins; each estimated as above. Empty when no two nodes share a host or a link.
std::vector<TensorGroupAdvice> advise_tensor_groups(const ModelCost& cost, const ClusterSpec& cluster);
// Markdown: one line per group with its shares, both estimates and the choice.
std::string tensor_groups_markdown(const std::vector<TensorGroupAdvice>& groups);

// Tensor-parallel shares for members of these speeds (bandwidths, any unit, > 0): the smallest
// whole numbers within 10% of the ratios (2:1 rather than 0.667:0.333, 4:5 for 1:1.15), so speeds
// within 10% of each other give even shares (1:1) — measurement noise must not cost a rounding of
// heads and quant blocks. Beyond 8:8 scales, the ratios to 1/100.
std::vector<double> whole_shares(const std::vector<double>& speeds);

// ---------------------------------------------------------------------------------------------
// The plan

struct PlanOptions {
  int32_t n_ctx = 4096;            // positions per sequence
  int32_t n_seq = 1;               // parallel sequences (KV slots on every stage)
  int32_t n_batch = 512;           // prompt tokens per forward pass (sizes the compute buffers)
  DType kv_type = DType::F16;      // F16, F32 or Q8_0
  DType wire_dtype = DType::F16;   // F32, F16 or Q8_0
  bool allow_drop_nodes = true;    // a node may get no layers (too small, or not worth a hop)
  uint64_t reserve_bytes = uint64_t{64} << 20;  // per used node: runtime, allocator slack
  size_t exhaustive_order_limit = 8;  // up to this many nodes every order is tried; beyond, one greedy order
  // Let a stage be a tensor-parallel group (`hearth plan`; off for the runtimes that build TCP
  // pipelines from a plan, which cannot run one): see make_plan.
  bool form_tensor_groups = false;
};

// Compute buffers of a stage (estimate): n_batch tokens of f32 activations through a layer
// (4 * n_embd + 3 * n_ff values each) plus, on the last stage, n_seq rows of logits.
uint64_t compute_buffer_bytes(const ModelCost& cost, const PlanOptions& options, bool last_stage);

struct LayerRange {
  int32_t first = 0, last = 0;  // [first, last)
  friend bool operator==(const LayerRange&, const LayerRange&) = default;
};

struct HopEstimate {
  std::string to;             // next node, or "coordinator" for the last stage's sampled tokens
  uint64_t bytes_per_token = 0;
  double ms = 0;
  friend bool operator==(const HopEstimate&, const HopEstimate&) = default;
};

struct StagePlan {
  std::string node;
  std::string address;
  std::string backend;
  std::string device;           // the node's device, when it said (empty for a described node)
  int32_t first = 0, last = 0;  // layers [first, last)
  uint64_t weight_bytes = 0;
  uint64_t kv_bytes = 0;
  uint64_t compute_bytes = 0;   // compute buffers + reserve
  uint64_t memory_bytes = 0;    // weights + KV + compute
  uint64_t memory_budget = 0;
  uint64_t read_bytes_per_token = 0;
  double compute_ms = 0;        // per token, without the hop
  HopEstimate hop;              // to the next stage (or the coordinator)
  // A tensor-parallel stage: its nodes (the group's order; `node` is their names joined by "+",
  // `address` the first's, which leads and hops) and each one's share; empty for one node.
  std::vector<std::string> members;
  std::vector<double> shares;
  double stage_ms() const { return compute_ms + hop.ms; }
  friend bool operator==(const StagePlan&, const StagePlan&) = default;
};

struct DroppedNode {
  std::string node;
  std::string reason;
  friend bool operator==(const DroppedNode&, const DroppedNode&) = default;
};

struct PipelinePlan {
  std::string model;
  int32_t n_layer = 0;
  int32_t n_ctx = 0;
  int32_t n_seq = 0;
  std::string kv_type;
  std::string wire_dtype;
  std::string coordinator;       // empty: outside the plan's nodes
  HopEstimate feed;              // coordinator -> first stage (token ids)
  std::vector<StagePlan> stages;
  std::vector<DroppedNode> dropped;
  bool manual = false;           // the split was given by the user, not optimised
  // Why each tensor-parallel group was formed or not (form_tensor_groups), one sentence each.
  std::vector<std::string> why;

  double token_ms() const;                 // one sequence: feed + every stage + every hop
  double tokens_per_s() const;             // 1000 / token_ms
  double bottleneck_ms() const;            // the slowest stage (with its outgoing hop)
  double pipelined_tokens_per_s() const;   // 1000 / bottleneck_ms: >= stages sequences in flight
  double parallel_tokens_per_s() const;    // with n_seq in flight: min(n_seq * one, pipelined)
  // The ranks mpirun would run this plan with: stages of equal size T (1: no group) make
  // `mpirun -np P*T hearth serve -m MODEL --tp T --pp P` (world rank r = shard r % T of stage
  // r / T); `note` says what mpirun does differently from the plan (it splits layers evenly and
  // measures shares), or why it cannot run it (stages of different sizes). `command` is empty then.
  struct MpirunForm {
    std::string command;
    std::string ranks;  // "0-1: socket0, socket1; 2: desktop"
    std::string note;
  };
  MpirunForm mpirun_form() const;

  nlohmann::ordered_json to_json() const;
  static PipelinePlan from_json(const nlohmann::json& json);  // throws hearth::Error
  std::string to_markdown() const;
  friend bool operator==(const PipelinePlan&, const PipelinePlan&) = default;
};

// The best plan: for each order of the nodes (every order when there are <= 8 nodes, pruned by a
// bound; otherwise one greedy order: the coordinator's host first, hosts together, faster nodes
// first), an exact dynamic program over contiguous splits minimises the slowest stage time, then
// the one-sequence token time, then the number of links between hosts. Throws hearth::Error
// naming what does not fit when no plan exists.
//
// With `form_tensor_groups`, the groups advise_tensor_groups finds faster as tensor-parallel
// (disjoint, the largest saving first) each become one stage candidate — a node with the summed
// bandwidth and memory, a per-layer overhead of its slowest member's plus 2 all-reduces over its
// slowest link, its first member's links — and the split is searched over those as above. The
// plan with the groups is kept when it gives more tokens/s with n_seq sequences in flight
// (parallel_tokens_per_s; one sequence by default) than the plain one; `why` says which and why.
PipelinePlan make_plan(const ModelCost& cost, const ClusterSpec& cluster, const PlanOptions& options);

// The one order tried beyond `exhaustive_order_limit` nodes: the coordinator's host first, the
// nodes of one host together, hosts and nodes by bandwidth (fastest first). Indices into nodes.
std::vector<size_t> greedy_node_order(const ClusterSpec& cluster);

// A split forced by the user, one entry per node in cluster order (an empty range drops that
// node), checked against memory like any plan. Throws hearth::Error naming the node that does not fit.
PipelinePlan make_manual_plan(const ModelCost& cost, const ClusterSpec& cluster, const PlanOptions& options,
                              const std::vector<LayerRange>& split);

// "0-10,10-24" (half-open ranges) or "10,14" (layer counts, 0 drops a node): one entry per node.
std::vector<LayerRange> parse_split(std::string_view text, int32_t n_layer, size_t n_nodes);

// For tests and tools: the time and feasibility model the planner optimises.
struct PlanModel {
  const ModelCost& cost;
  const ClusterSpec& cluster;
  const PlanOptions& options;

  uint64_t stage_memory(int32_t first, int32_t last) const;  // weights + KV + compute + reserve
  bool fits(size_t node, int32_t first, int32_t last) const;
  double compute_ms(size_t node, int32_t first, int32_t last) const;
  double hop_ms(size_t from, size_t to) const;                 // activations between two nodes
  double return_ms(size_t node) const;                         // sampled tokens to the coordinator
  double feed_ms(size_t node) const;                           // token ids from the coordinator
};

// Parses "f32", "f16", "q8_0" (any case) for --kv-type / --wire-dtype. Throws hearth::Error.
DType parse_plan_dtype(std::string_view text, std::string_view what);

}  // namespace hearth::shard
