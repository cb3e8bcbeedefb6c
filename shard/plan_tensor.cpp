// The planner's view of tensor parallelism: whether a group of nodes should run as one
// tensor-parallel stage or as pipeline stages (the cost model is in plan.h).
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "core/error.h"
#include "shard/plan.h"
#include "shard/plan_internal.h"

namespace hearth::shard {

namespace {

using plan_detail::link_ms;

std::string joined(const std::vector<std::string>& names, const char* separator) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i > 0 ? separator : "") + names[i];
  return out;
}

std::string shares_text(const std::vector<double>& shares) {
  std::string out;
  for (size_t i = 0; i < shares.size(); ++i) out += fmt::format("{}{:g}", i > 0 ? ":" : "", shares[i]);
  return out;
}

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

namespace plan_detail {

PipelinePlan with_tensor_groups(const ModelCost& cost, const ClusterSpec& cluster, const PlanOptions& options,
                                PipelinePlan plain) {
  std::vector<TensorGroupAdvice> advice = advise_tensor_groups(cost, cluster);
  // Disjoint groups, the largest saving first.
  std::stable_sort(advice.begin(), advice.end(), [](const TensorGroupAdvice& a, const TensorGroupAdvice& b) {
    return a.pp_ms - a.tp_ms > b.pp_ms - b.tp_ms;
  });
  std::vector<const TensorGroupAdvice*> chosen;
  std::set<std::string> taken;
  for (const TensorGroupAdvice& a : advice) {
    const std::string name = joined(a.members, " + ");
    if (!a.tensor_parallel) {
      plain.why.push_back(fmt::format("{} stay separate nodes: as pipeline stages {:.2f} ms/token, as one "
                                      "tensor-parallel group {:.2f} ({})",
                                      name, a.pp_ms, a.tp_ms, a.why));
      continue;
    }
    if (std::any_of(a.members.begin(), a.members.end(), [&](const std::string& m) { return taken.contains(m); })) {
      plain.why.push_back(fmt::format("{}: not a group, a member already joins a group that saves more", name));
      continue;
    }
    taken.insert(a.members.begin(), a.members.end());
    chosen.push_back(&a);
  }
  if (chosen.empty()) return plain;

  // The cluster with each group as one node, at its first member's place.
  ClusterSpec merged;
  merged.default_link = cluster.default_link;
  merged.local_link = cluster.local_link;
  merged.coordinator = cluster.coordinator;
  std::map<std::string, std::string> node_of;  // original name -> merged node's name ("" for non-leading members)
  for (const NodeSpec& n : cluster.nodes) {
    const auto group = std::find_if(chosen.begin(), chosen.end(), [&](const TensorGroupAdvice* a) {
      return std::find(a->members.begin(), a->members.end(), n.name) != a->members.end();
    });
    if (group == chosen.end()) {
      merged.nodes.push_back(n);
      node_of[n.name] = n.name;
      continue;
    }
    const TensorGroupAdvice& a = **group;
    const std::string name = joined(a.members, "+");
    if (cluster.coordinator == n.name) merged.coordinator = name;
    if (a.members.front() != n.name) {
      node_of[n.name] = "";
      continue;
    }
    node_of[n.name] = name;
    NodeSpec g = n;
    g.name = name;
    g.memory_bytes = 0;
    g.bandwidth_gbps = 0;
    double overhead = 0.0;
    for (const std::string& m : a.members) {
      const NodeSpec& member = *std::find_if(cluster.nodes.begin(), cluster.nodes.end(),
                                             [&](const NodeSpec& x) { return x.name == m; });
      g.memory_bytes += member.memory_bytes;
      g.bandwidth_gbps += member.bandwidth_gbps;
      overhead = std::max(overhead, overhead_ms(member));
    }
    g.layer_overhead_ms = overhead + 2.0 * a.all_reduce_ms;
    merged.nodes.push_back(std::move(g));
  }
  // Hops leave and reach a group at its first member.
  for (const auto& [pair, link] : cluster.links) {
    const std::string& a = node_of[pair.first];
    const std::string& b = node_of[pair.second];
    if (!a.empty() && !b.empty() && a != b) merged.add_link(a, b, link);
  }

  PlanOptions plain_options = options;
  plain_options.form_tensor_groups = false;
  PipelinePlan grouped;
  try {
    grouped = make_plan(cost, merged, plain_options);
  } catch (const Error& e) {
    plain.why.push_back(fmt::format("no plan with the tensor-parallel groups: {}", e.what()));
    return plain;
  }
  for (StagePlan& st : grouped.stages) {
    for (const TensorGroupAdvice* a : chosen) {
      if (st.node == joined(a->members, "+")) st.members = a->members, st.shares = a->shares;
    }
  }
  const bool better = grouped.parallel_tokens_per_s() > plain.parallel_tokens_per_s() * (1.0 + 1e-9);
  PipelinePlan& kept = better ? grouped : plain;
  std::vector<std::string> why;
  for (const TensorGroupAdvice* a : chosen) {
    why.push_back(fmt::format("{} {} one tensor-parallel stage, shares {}: as one group {:.2f} ms/token, as "
                              "pipeline stages {:.2f} ({})",
                              joined(a->members, " + "), better ? "form" : "would form", shares_text(a->shares),
                              a->tp_ms, a->pp_ms, a->why));
  }
  why.push_back(fmt::format("{} the groups: {:.1f} tokens/s with {} sequence{} in flight, against {:.1f} {}",
                            better ? "with" : "without", kept.parallel_tokens_per_s(), options.n_seq,
                            options.n_seq == 1 ? "" : "s",
                            (better ? plain : grouped).parallel_tokens_per_s(),
                            better ? "without them" : "with them"));
  why.insert(why.end(), plain.why.begin(), plain.why.end());
  kept.why = std::move(why);
  return std::move(kept);
}

}  // namespace plan_detail

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
