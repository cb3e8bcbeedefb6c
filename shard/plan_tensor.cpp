// The planner's view of tensor parallelism: whether a group of nodes should run as one
// tensor-parallel stage or as pipeline stages (the cost model is in plan.h).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "core/error.h"
#include "shard/plan.h"
#include "shard/plan_internal.h"

namespace hearth::shard {

namespace {

using plan_detail::link_ms;

double overhead_ms(const NodeSpec& n) {
  return n.layer_overhead_ms >= 0 ? n.layer_overhead_ms : default_layer_overhead_ms(n.backend);
}

TensorGroupAdvice estimate(const ModelCost& cost, const ClusterSpec& cluster, const std::vector<size_t>& members) {
  TensorGroupAdvice a;
  std::vector<double> bandwidth;
  double overhead = 0.0, sum_bw = 0.0;
  for (size_t m : members) {
    const NodeSpec& n = cluster.nodes[m];
    a.members.push_back(n.name);
    bandwidth.push_back(n.bandwidth_gbps);
    sum_bw += n.bandwidth_gbps;
    overhead = std::max(overhead, overhead_ms(n));
  }
  a.shares = whole_shares(bandwidth);
  a.slowest_link = cluster.link(members[0], members[1]);
  double hops_ms = 0.0;
  for (size_t i = 0; i < members.size(); ++i) {
    for (size_t j = i + 1; j < members.size(); ++j) {
      const LinkSpec l = cluster.link(members[i], members[j]);
      if (l.gbit_per_s < a.slowest_link.gbit_per_s ||
          (l.gbit_per_s == a.slowest_link.gbit_per_s && l.latency_ms > a.slowest_link.latency_ms)) {
        a.slowest_link = l;
      }
    }
    if (i + 1 < members.size()) {
      hops_ms += link_ms(cluster.link(members[i], members[i + 1]), activation_bytes_per_token(cost.n_embd, DType::F16));
    }
  }
  const auto t = static_cast<double>(members.size());
  const double bytes = static_cast<double>(cost.read_bytes_per_token(0, cost.n_layer));
  const double read_ms = bytes / (sum_bw * 1e9) * 1e3;
  a.all_reduce_ms = link_ms(a.slowest_link, static_cast<uint64_t>((t - 1.0) * cost.n_embd * sizeof(float)));
  a.tp_ms = read_ms + cost.n_layer * overhead + 2.0 * cost.n_layer * a.all_reduce_ms;
  a.pp_ms = t * read_ms + cost.n_layer * overhead + hops_ms;
  a.tensor_parallel = a.tp_ms < a.pp_ms;
  a.why = fmt::format(
      "reading the weights at once saves {:.2f} ms a token; {} all-reduces over a {:g} Gbit/s, {:g} ms link cost {:.2f} "
      "ms",
      (t - 1.0) * read_ms + hops_ms, 2 * cost.n_layer, a.slowest_link.gbit_per_s, a.slowest_link.latency_ms,
      2.0 * cost.n_layer * a.all_reduce_ms);
  return a;
}

}  // namespace

std::vector<double> whole_shares(const std::vector<double>& speeds) {
  HEARTH_CHECK(!speeds.empty(), "no speeds to share by");
  for (double b : speeds) HEARTH_CHECK(b > 0.0 && std::isfinite(b), "speed {} is not positive", b);
  const double low = *std::min_element(speeds.begin(), speeds.end());
  for (int scale = 1; scale <= 8; ++scale) {
    std::vector<double> shares;
    bool close = true;
    for (double b : speeds) {
      const double exact = b / low * scale;
      shares.push_back(std::max(1.0, std::round(exact)));
      close = close && std::abs(shares.back() - exact) <= 0.1 * exact;
    }
    if (close) return shares;
  }
  std::vector<double> shares;
  for (double b : speeds) shares.push_back(std::round(b / low * 100.0) / 100.0);
  return shares;
}

std::vector<TensorGroupAdvice> advise_tensor_groups(const ModelCost& cost, const ClusterSpec& cluster) {
  std::vector<std::vector<size_t>> groups;
  std::set<std::vector<size_t>> seen;
  const auto add = [&](std::vector<size_t> g) {
    if (g.size() >= 2 && seen.insert(g).second) groups.push_back(std::move(g));
  };
  for (size_t a = 0; a < cluster.nodes.size(); ++a) {
    std::vector<size_t> host;
    for (size_t b = 0; b < cluster.nodes.size(); ++b) {
      if (b == a || cluster.same_host(a, b)) host.push_back(b);
    }
    if (host.front() == a) add(host);  // once per host, from its first node
  }
  for (const auto& [pair, link] : cluster.links) {
    std::vector<size_t> g;
    for (size_t n = 0; n < cluster.nodes.size(); ++n) {
      if (cluster.nodes[n].name == pair.first || cluster.nodes[n].name == pair.second) g.push_back(n);
    }
    add(g);
  }
  std::vector<TensorGroupAdvice> out;
  for (const auto& g : groups) out.push_back(estimate(cost, cluster, g));
  return out;
}

std::string tensor_groups_markdown(const std::vector<TensorGroupAdvice>& groups) {
  if (groups.empty()) return {};
  std::string out = "\ntensor-parallel groups (one sequence, the whole model on the group):\n";
  for (const TensorGroupAdvice& a : groups) {
    std::string names, shares;
    for (size_t i = 0; i < a.members.size(); ++i) {
      names += (i > 0 ? " + " : "") + a.members[i];
      shares += (i > 0 ? ":" : "") + fmt::format("{:g}", a.shares[i]);
    }
    out += fmt::format("- {}, shares {}: tensor-parallel {:.2f} ms/token, pipeline {:.2f} ms/token -> {} ({})\n", names,
                       shares, a.tp_ms, a.pp_ms, a.tensor_parallel ? "tensor-parallel" : "pipeline", a.why);
  }
  return out;
}

}  // namespace hearth::shard
