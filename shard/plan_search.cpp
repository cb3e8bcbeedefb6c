// The planner's search: the best contiguous split over an order of nodes (make_plan), manual
// splits (make_manual_plan, parse_split), and why no plan exists.
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
  PipelinePlan plan = build_plan(model, best.order, best.ranges, false);
  if (options.form_tensor_groups) return with_tensor_groups(cost, cluster, options, std::move(plan));
  return plan;
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

}  // namespace hearth::shard
