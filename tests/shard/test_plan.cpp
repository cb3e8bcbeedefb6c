// The planner: its dynamic program against brute force over every contiguous split and node
// order, memory limits and the messages that name a shortfall, ordering, the nodes file, plan
// JSON, and ModelCost on the default model.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <numeric>
#include <random>
#include <set>

#include "core/error.h"
#include "engine/format/gguf.h"
#include "engine/model/model_config.h"
#include "shard/plan.h"
#include "shard/weights.h"
#include "shard/probe.h"
#include "shard/wire.h"
#include "shard/worker.h"
#include "transport/tcp_link.h"
#include "tests/support/gguf_builder.h"

#include <thread>

namespace hearth::shard {
namespace {

constexpr uint64_t MiB = uint64_t{1} << 20;

// A model of `layers` layers of the given sizes; activations and compute buffers small.
ModelCost model_of(const std::vector<uint64_t>& layers, uint64_t embedding = 0, uint64_t head = 0) {
  ModelCost c;
  c.name = "test";
  c.n_layer = static_cast<int32_t>(layers.size());
  c.n_embd = 64;
  c.n_ff = 0;
  c.n_vocab = 16;
  c.layer_bytes = layers;
  c.layer_kv_values.assign(layers.size(), 64);
  c.embedding_bytes = embedding;
  c.embedding_row_bytes = embedding / 16;
  c.head_bytes = head;
  c.total_bytes = std::accumulate(layers.begin(), layers.end(), embedding + head);
  return c;
}

NodeSpec node(std::string name, uint64_t memory, double bandwidth, std::string host = "") {
  NodeSpec n;
  n.name = std::move(name);
  n.host = std::move(host);
  n.memory_bytes = memory;
  n.bandwidth_gbps = bandwidth;
  n.layer_overhead_ms = 0.01;
  return n;
}

PlanOptions small_options() {
  PlanOptions o;
  o.n_ctx = 16;
  o.n_batch = 1;
  o.reserve_bytes = 0;
  return o;
}

struct BruteResult {
  double bottleneck = std::numeric_limits<double>::infinity();
  double token_ms = std::numeric_limits<double>::infinity();  // least among the optimal bottlenecks
};

// Every ordered choice of distinct nodes (all of them, or any non-empty subset when nodes may be
// dropped; or only subsequences of `only_order`) and every split of the layers into that many
// non-empty contiguous ranges. Straight from the cost model, no shared code with the planner.
BruteResult brute_force(const ModelCost& cost, const ClusterSpec& cluster, const PlanOptions& options,
                        const std::vector<size_t>* only_order = nullptr) {
  const PlanModel m{cost, cluster, options};
  const size_t N = cluster.nodes.size();
  const int32_t L = cost.n_layer;
  std::vector<std::pair<double, double>> found;  // (bottleneck, token ms)
  std::vector<size_t> seq;
  std::vector<bool> used(N, false);
  std::function<void()> choose_nodes;
  auto evaluate = [&] {
    const size_t k = seq.size();
    if (k == 0 || static_cast<int32_t>(k) > L) return;
    if (!options.allow_drop_nodes && k != N) return;
    if (only_order != nullptr) {  // must be a subsequence of the order
      size_t pos = 0;
      for (size_t s : seq) {
        while (pos < only_order->size() && (*only_order)[pos] != s) ++pos;
        if (pos == only_order->size()) return;
        ++pos;
      }
    }
    // cuts: k-1 distinct positions in 1..L-1, increasing
    std::vector<int32_t> cuts(k + 1);
    cuts[0] = 0;
    cuts[k] = L;
    std::function<void(size_t)> place = [&](size_t c) {
      if (c == k) {
        double worst = 0, total = m.feed_ms(seq[0]);
        for (size_t s = 0; s < k; ++s) {
          if (!m.fits(seq[s], cuts[s], cuts[s + 1])) return;
          const double t = m.compute_ms(seq[s], cuts[s], cuts[s + 1]) +
                           (s + 1 < k ? m.hop_ms(seq[s], seq[s + 1]) : m.return_ms(seq[s]));
          worst = std::max(worst, t);
          total += t;
        }
        found.emplace_back(worst, total);
        return;
      }
      for (int32_t at = cuts[c - 1] + 1; at <= L - static_cast<int32_t>(k - c); ++at) {
        cuts[c] = at;
        place(c + 1);
      }
    };
    place(1);
  };
  choose_nodes = [&] {
    evaluate();
    for (size_t n = 0; n < N; ++n) {
      if (used[n]) continue;
      used[n] = true;
      seq.push_back(n);
      choose_nodes();
      seq.pop_back();
      used[n] = false;
    }
  };
  choose_nodes();
  BruteResult r;
  for (const auto& [b, t] : found) r.bottleneck = std::min(r.bottleneck, b);
  for (const auto& [b, t] : found) {
    if (b <= r.bottleneck * (1 + 1e-9)) r.token_ms = std::min(r.token_ms, t);
  }
  return r;
}

void expect_valid(const PipelinePlan& plan, const ModelCost& cost, const ClusterSpec& cluster) {
  ASSERT_FALSE(plan.stages.empty());
  int32_t next = 0;
  for (const StagePlan& s : plan.stages) {
    EXPECT_EQ(s.first, next);
    EXPECT_GT(s.last, s.first);
    EXPECT_LE(s.memory_bytes, s.memory_budget) << s.node;
    const auto it = std::find_if(cluster.nodes.begin(), cluster.nodes.end(), [&](const NodeSpec& n) { return n.name == s.node; });
    ASSERT_NE(it, cluster.nodes.end());
    EXPECT_EQ(s.memory_budget, it->memory_bytes);
    next = s.last;
  }
  EXPECT_EQ(next, cost.n_layer);
  EXPECT_EQ(plan.stages.size() + plan.dropped.size(), cluster.nodes.size());
}

class PlanVsBruteForce : public ::testing::TestWithParam<int> {};

TEST_P(PlanVsBruteForce, SameOptimumOnRandomInstances) {
  std::mt19937 rng(static_cast<uint32_t>(GetParam()));
  int feasible = 0, infeasible = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const int32_t L = std::uniform_int_distribution<int32_t>(1, 9)(rng);
    const size_t N = std::uniform_int_distribution<size_t>(2, 5)(rng);
    std::vector<uint64_t> layers(static_cast<size_t>(L));
    for (uint64_t& b : layers) b = std::uniform_int_distribution<uint64_t>(1, 40)(rng) * MiB;
    const ModelCost cost = model_of(layers, std::uniform_int_distribution<uint64_t>(0, 30)(rng) * MiB,
                                    std::uniform_int_distribution<uint64_t>(0, 30)(rng) * MiB);
    const uint64_t total = cost.weight_bytes(0, L);
    ClusterSpec cluster;
    for (size_t n = 0; n < N; ++n) {
      // memory from a fraction of the model to all of it; a few hosts shared
      const uint64_t memory = total * std::uniform_int_distribution<uint64_t>(10, 120)(rng) / 100 + MiB;
      cluster.nodes.push_back(node(fmt::format("n{}", n), memory, std::uniform_real_distribution<double>(1, 200)(rng),
                                   fmt::format("h{}", std::uniform_int_distribution<int>(0, 2)(rng))));
      cluster.nodes.back().layer_overhead_ms = std::uniform_real_distribution<double>(0, 0.2)(rng);
    }
    cluster.default_link = {std::uniform_real_distribution<double>(0.1, 10)(rng), std::uniform_real_distribution<double>(0, 1)(rng)};
    if (rng() % 2) cluster.add_link("n0", "n1", {0.05, 2.0});
    if (rng() % 2) cluster.coordinator = "n1";
    PlanOptions options = small_options();
    options.allow_drop_nodes = rng() % 4 != 0;
    options.exhaustive_order_limit = rng() % 3 == 0 ? 0 : 8;
    const std::vector<size_t> greedy = greedy_node_order(cluster);
    const BruteResult want =
        brute_force(cost, cluster, options, options.exhaustive_order_limit == 0 ? &greedy : nullptr);
    SCOPED_TRACE(fmt::format("trial {}: {} layers, {} nodes, drop {}, exhaustive {}", trial, L, N,
                             options.allow_drop_nodes, options.exhaustive_order_limit));
    if (!std::isfinite(want.bottleneck)) {
      EXPECT_THROW(make_plan(cost, cluster, options), Error);
      ++infeasible;
      continue;
    }
    const PipelinePlan plan = make_plan(cost, cluster, options);
    expect_valid(plan, cost, cluster);
    EXPECT_NEAR(plan.bottleneck_ms(), want.bottleneck, 1e-9 * want.bottleneck);
    EXPECT_NEAR(plan.token_ms(), want.token_ms, 1e-9 * want.token_ms);
    ++feasible;
  }
  EXPECT_GT(feasible, 10);  // the generator makes both kinds
  EXPECT_GT(infeasible, 0);
}

INSTANTIATE_TEST_SUITE_P(Seeds, PlanVsBruteForce, ::testing::Values(1, 2, 3, 4));

TEST(Plan, FitsOnlyOneWay) {
  // Four 100 MiB layers; the fast node can hold one layer and the head only, so the slow node must
  // take layers 0-3 although the fast one would otherwise take more.
  const ModelCost cost = model_of({100 * MiB, 100 * MiB, 100 * MiB, 100 * MiB}, 10 * MiB, 10 * MiB);
  ClusterSpec cluster;
  cluster.nodes = {node("slow", 320 * MiB, 10), node("fast", 120 * MiB, 100)};
  const PipelinePlan plan = make_plan(cost, cluster, small_options());
  ASSERT_EQ(plan.stages.size(), 2u);
  EXPECT_EQ(plan.stages[0].node, "slow");
  EXPECT_EQ(plan.stages[0].last, 3);
  EXPECT_EQ(plan.stages[1].node, "fast");
  expect_valid(plan, cost, cluster);
}

TEST(Plan, RefusesAClusterTooSmallNamingTheShortfall) {
  const ModelCost cost = model_of(std::vector<uint64_t>(8, 100 * MiB));
  ClusterSpec cluster;
  cluster.nodes = {node("a", 300 * MiB, 10), node("b", 300 * MiB, 10), node("c", 150 * MiB, 10)};
  try {
    make_plan(cost, cluster, small_options());
    FAIL() << "planned a model larger than the cluster";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("the model needs 800.0 MiB of weights"), std::string::npos) << msg;
    EXPECT_NE(msg.find("the 3 nodes have 750.0 MiB together"), std::string::npos) << msg;
  }
}

TEST(Plan, RefusesALayerTooBigForEveryNode) {
  const ModelCost cost = model_of({50 * MiB, 50 * MiB, 412 * MiB, 50 * MiB});
  ClusterSpec cluster;
  cluster.nodes = {node("a", 400 * MiB, 10), node("b", 400 * MiB, 10)};
  try {
    make_plan(cost, cluster, small_options());
    FAIL() << "planned a layer larger than any node";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("layer 2 alone (412.0 MiB"), std::string::npos) << msg;
    EXPECT_NE(msg.find("exceeds every node's free memory"), std::string::npos) << msg;
  }
}

TEST(Plan, RefusesAnEmbeddingTableTooBigForEveryNode) {
  // Each layer fits anywhere, the total fits, but no node holds layer 0 with the 300 MiB table.
  const ModelCost cost = model_of({50 * MiB, 50 * MiB, 50 * MiB, 50 * MiB}, 300 * MiB);
  ClusterSpec cluster;
  cluster.nodes = {node("a", 340 * MiB, 10), node("b", 340 * MiB, 10)};
  try {
    make_plan(cost, cluster, small_options());
    FAIL() << "planned a first stage larger than any node";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no node can hold the first stage: layer 0 with the embedding table (300.0 MiB)"),
              std::string::npos)
        << e.what();
  }
  cluster.nodes[1].memory_bytes = 360 * MiB;
  EXPECT_EQ(make_plan(cost, cluster, small_options()).stages.front().node, "b");
}

TEST(Plan, KvCacheCountsAgainstMemory) {
  // 2 layers x 64 KV values x 2 bytes x n_ctx: with a large context they no longer fit one node.
  const ModelCost cost = model_of({10 * MiB, 10 * MiB});
  ClusterSpec cluster;
  cluster.nodes = {node("a", 30 * MiB, 10)};
  PlanOptions options = small_options();
  EXPECT_NO_THROW(make_plan(cost, cluster, options));
  options.n_ctx = 64 * 1024;
  options.n_seq = 2;  // 2 * 64 * 2 * 65536 * 2 = 32 MiB of KV cache
  try {
    make_plan(cost, cluster, options);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("+ 32.0 MiB KV cache (65536 positions x 2 sequences, f16)"), std::string::npos)
        << e.what();
  }
  options.kv_type = DType::Q8_0;  // 34/32 bytes per value: 17 MiB
  EXPECT_THROW(make_plan(cost, cluster, options), Error);
  options.n_seq = 1;  // 8.5 MiB
  EXPECT_NO_THROW(make_plan(cost, cluster, options));
}

TEST(Plan, FastNodeGetsProportionallyMoreLayers) {
  const ModelCost cost = model_of(std::vector<uint64_t>(40, 10 * MiB));
  ClusterSpec cluster;
  cluster.nodes = {node("slow", 10000 * MiB, 10), node("fast", 10000 * MiB, 30)};
  for (NodeSpec& n : cluster.nodes) n.layer_overhead_ms = 0;
  cluster.default_link = {100, 0};
  const PipelinePlan plan = make_plan(cost, cluster, small_options());
  ASSERT_EQ(plan.stages.size(), 2u);
  int32_t fast = 0, slow = 0;
  for (const StagePlan& s : plan.stages) (s.node == "fast" ? fast : slow) = s.last - s.first;
  EXPECT_EQ(fast, 30);
  EXPECT_EQ(slow, 10);
}

// A tensor-parallel group pays inside a box (20 us links), not over 1 GbE (0.3 ms): 2 * n_layer
// all-reduces a token outweigh reading the weights at once. Shares follow bandwidth.
TEST(Plan, TensorGroupsInsideABoxNotAcrossSlowLinks) {
  ModelCost cost = model_of(std::vector<uint64_t>(16, 40 * MiB));  // a llama-1b's 640 MiB
  cost.n_embd = 2048;
  ClusterSpec cluster;
  cluster.nodes = {node("gpu0", 4096 * MiB, 300, "box"), node("gpu1", 4096 * MiB, 150, "box"),
                   node("a", 4096 * MiB, 40, "a"), node("b", 4096 * MiB, 40, "b")};
  cluster.local_link = {40, 0.02};
  cluster.add_link("a", "b", {1, 0.3});
  const auto groups = advise_tensor_groups(cost, cluster);
  ASSERT_EQ(groups.size(), 2u);
  const TensorGroupAdvice& box = groups[0];
  EXPECT_EQ(box.members, (std::vector<std::string>{"gpu0", "gpu1"}));
  EXPECT_EQ(box.shares, (std::vector<double>{2, 1}));
  // By hand: 640 MiB read at 450 GB/s; 16 layers of 0.01 ms; 32 all-reduces of 0.02 ms + 8 KiB at
  // 40 Gbit/s; the pipeline reads twice as long and hops once (0.02 ms + 4 KiB of f16).
  const double read = 640.0 * MiB / 450e9 * 1e3;
  EXPECT_NEAR(box.tp_ms, read + 16 * 0.01 + 32 * (0.02 + 2048 * 4 * 8 / 40e9 * 1e3), 1e-9);
  EXPECT_NEAR(box.pp_ms, 2 * read + 16 * 0.01 + 0.02 + 2048 * 2 * 8 / 40e9 * 1e3, 1e-9);
  EXPECT_TRUE(box.tensor_parallel) << box.why;
  const TensorGroupAdvice& lan = groups[1];
  EXPECT_EQ(lan.members, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(lan.shares, (std::vector<double>{1, 1}));
  EXPECT_FALSE(lan.tensor_parallel) << lan.why;
  // The same two machines over a 25 Gbit/s, 5 us link: a group again.
  cluster.add_link("a", "b", {25, 0.005});
  EXPECT_TRUE(advise_tensor_groups(cost, cluster)[1].tensor_parallel);
  const std::string text = tensor_groups_markdown(groups);
  EXPECT_NE(text.find("- gpu0 + gpu1, shares 2:1: tensor-parallel"), std::string::npos) << text;
  EXPECT_NE(text.find("-> pipeline"), std::string::npos) << text;
}

// The search forms the groups: two boxes of two GPUs each over 1 GbE become two stages of two
// tensor-parallel shards (2:1), which one mpirun runs as --tp 2 --pp 2; each stage's time is its
// bytes at the summed bandwidth plus, per layer, the slower overhead and two all-reduces.
TEST(Plan, SearchFormsTensorParallelStages) {
  ModelCost cost = model_of(std::vector<uint64_t>(16, 40 * MiB));
  cost.n_embd = 2048;
  ClusterSpec cluster;
  cluster.nodes = {node("a0", 4096 * MiB, 300, "a"), node("a1", 4096 * MiB, 150, "a"),
                   node("b0", 4096 * MiB, 300, "b"), node("b1", 4096 * MiB, 150, "b")};
  cluster.local_link = {40, 0.02};
  PlanOptions options = small_options();
  const PipelinePlan plain = make_plan(cost, cluster, options);
  for (const StagePlan& st : plain.stages) EXPECT_TRUE(st.members.empty());
  options.form_tensor_groups = true;
  const PipelinePlan plan = make_plan(cost, cluster, options);
  ASSERT_EQ(plan.stages.size(), 2u) << plan.to_markdown();
  EXPECT_EQ(plan.stages[0].members, (std::vector<std::string>{"a0", "a1"}));
  EXPECT_EQ(plan.stages[0].shares, (std::vector<double>{2, 1}));
  EXPECT_EQ(plan.stages[0].node, "a0+a1");
  EXPECT_EQ(plan.stages[1].members, (std::vector<std::string>{"b0", "b1"}));
  EXPECT_EQ(plan.stages[0].last - plan.stages[0].first, 8);
  const double all_reduce = 0.02 + 2048 * 4 * 8 / 40e9 * 1e3;
  EXPECT_NEAR(plan.stages[0].compute_ms, 8 * 40.0 * MiB / 450e9 * 1e3 + 8 * (0.01 + 2 * all_reduce), 1e-9);
  EXPECT_GT(plan.parallel_tokens_per_s(), plain.parallel_tokens_per_s());
  ASSERT_FALSE(plan.why.empty());
  EXPECT_NE(plan.why[0].find("a0 + a1 form one tensor-parallel stage, shares 2:1"), std::string::npos) << plan.why[0];
  const PipelinePlan::MpirunForm mpirun = plan.mpirun_form();
  EXPECT_EQ(mpirun.command, "mpirun -np 4 hearth serve -m MODEL --tp 2 --pp 2");
  EXPECT_EQ(mpirun.ranks, "0-1: a0, a1; 2-3: b0, b1");
  EXPECT_EQ(PipelinePlan::from_json(plan.to_json()), plan);
  // Over 1 GbE inside the boxes, the groups do not pay: four nodes, one per stage.
  cluster.local_link = {1, 0.3};
  const PipelinePlan slow = make_plan(cost, cluster, options);
  for (const StagePlan& st : slow.stages) EXPECT_TRUE(st.members.empty()) << slow.to_markdown();
  EXPECT_EQ(slow.mpirun_form().command, "mpirun -np 4 hearth serve -m MODEL --tp 1 --pp 4");
}

// Measured speeds become --tp-shares: small whole numbers, and even when within 10% (noise).
TEST(Plan, WholeSharesFromSpeeds) {
  EXPECT_EQ(whole_shares({23.6, 22.4}), (std::vector<double>{1, 1}));
  EXPECT_EQ(whole_shares({20, 22}), (std::vector<double>{1, 1}));
  EXPECT_EQ(whole_shares({8, 4}), (std::vector<double>{2, 1}));
  EXPECT_EQ(whole_shares({3.8, 23.6}), (std::vector<double>{1, 6}));
  EXPECT_EQ(whole_shares({1, 1.15}), (std::vector<double>{4, 5}));
  EXPECT_EQ(whole_shares({5}), (std::vector<double>{1}));
}

TEST(Plan, NodesOfOneHostAreAdjacentAndTheCoordinatorFirst) {
  const ModelCost cost = model_of(std::vector<uint64_t>(16, 10 * MiB));
  ClusterSpec cluster;
  // Interleaved in the file: a1 b1 a2 b2 (hosts A and B), identical otherwise.
  cluster.nodes = {node("a1", 60 * MiB, 10, "hostA"), node("b1", 60 * MiB, 10, "hostB"),
                   node("a2", 60 * MiB, 10, "hostA"), node("b2", 60 * MiB, 10, "hostB")};
  cluster.coordinator = "b2";
  const PipelinePlan plan = make_plan(cost, cluster, small_options());
  ASSERT_EQ(plan.stages.size(), 4u);
  EXPECT_EQ(plan.stages[0].node, "b2");
  EXPECT_EQ(plan.stages[1].node, "b1");
  EXPECT_EQ(plan.stages[2].node.substr(0, 1), "a");
  EXPECT_EQ(plan.stages[3].node.substr(0, 1), "a");
  EXPECT_EQ(plan.stages[0].hop.ms, PlanModel({cost, cluster, small_options()}).hop_ms(3, 1));
  EXPECT_EQ(plan.feed.ms, 0.0);  // the coordinator feeds itself
}

TEST(Plan, DropsANodeTooSmallAndSaysWhy) {
  const ModelCost cost = model_of(std::vector<uint64_t>(6, 50 * MiB));
  ClusterSpec cluster;
  cluster.nodes = {node("big", 1000 * MiB, 20), node("tiny", 20 * MiB, 200)};
  const PipelinePlan plan = make_plan(cost, cluster, small_options());
  ASSERT_EQ(plan.stages.size(), 1u);
  ASSERT_EQ(plan.dropped.size(), 1u);
  EXPECT_EQ(plan.dropped[0].node, "tiny");
  EXPECT_NE(plan.dropped[0].reason.find("too small"), std::string::npos) << plan.dropped[0].reason;
  PlanOptions keep = small_options();
  keep.allow_drop_nodes = false;
  EXPECT_THROW(make_plan(cost, cluster, keep), Error);
}

TEST(Plan, ManyNodesUseTheGreedyOrder) {
  const ModelCost cost = model_of(std::vector<uint64_t>(32, 10 * MiB));
  ClusterSpec cluster;
  for (int i = 0; i < 12; ++i) {
    cluster.nodes.push_back(node(fmt::format("n{}", i), 100 * MiB, 10.0 + i, fmt::format("h{}", i % 3)));
  }
  cluster.coordinator = "n4";
  const std::vector<size_t> order = greedy_node_order(cluster);
  ASSERT_EQ(order.size(), 12u);
  EXPECT_EQ(order[0], 4u);
  for (size_t k = 0; k + 1 < order.size(); ++k) {  // hosts in runs of 4
    if (k % 4 != 3) {
      EXPECT_EQ(cluster.nodes[order[k]].host, cluster.nodes[order[k + 1]].host);
    }
  }
  const PipelinePlan plan = make_plan(cost, cluster, small_options());
  expect_valid(plan, cost, cluster);
}

TEST(Plan, ManualSplit) {
  const ModelCost cost = model_of(std::vector<uint64_t>(24, 10 * MiB));
  ClusterSpec cluster;
  cluster.nodes = {node("a", 200 * MiB, 10), node("b", 200 * MiB, 10)};
  EXPECT_EQ(parse_split("0-10,10-24", 24, 2), (std::vector<LayerRange>{{0, 10}, {10, 24}}));
  EXPECT_EQ(parse_split("10,14", 24, 2), (std::vector<LayerRange>{{0, 10}, {10, 24}}));
  EXPECT_EQ(parse_split("0,24", 24, 2), (std::vector<LayerRange>{{0, 0}, {0, 24}}));
  EXPECT_THROW(parse_split("0-10", 24, 2), Error);
  EXPECT_THROW(parse_split("0-10,10", 24, 2), Error);
  EXPECT_THROW(parse_split("0-10,10-25", 24, 2), Error);
  EXPECT_THROW(parse_split("x,10", 24, 2), Error);

  const PipelinePlan plan = make_manual_plan(cost, cluster, small_options(), parse_split("10,14", 24, 2));
  EXPECT_TRUE(plan.manual);
  ASSERT_EQ(plan.stages.size(), 2u);
  EXPECT_EQ(plan.stages[1].first, 10);
  try {
    make_manual_plan(cost, cluster, small_options(), parse_split("2,22", 24, 2));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("node b: layers 2-24 need 220.0 MiB"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_manual_plan(cost, cluster, small_options(), {{0, 10}, {12, 24}}), Error);  // a gap
  EXPECT_THROW(make_manual_plan(cost, cluster, small_options(), {{0, 10}, {10, 20}}), Error);  // short
}

TEST(Plan, JsonRoundTrip) {
  const ModelCost cost = model_of({30 * MiB, 20 * MiB, 40 * MiB, 10 * MiB, 25 * MiB}, 5 * MiB, 7 * MiB);
  ClusterSpec cluster;
  cluster.nodes = {node("a", 80 * MiB, 10, "x"), node("b", 90 * MiB, 30, "y"), node("c", 10 * MiB, 30, "y")};
  cluster.nodes[0].address = "x:7070";
  cluster.coordinator = "a";
  PlanOptions options = small_options();
  options.n_seq = 3;
  options.wire_dtype = DType::Q8_0;
  const PipelinePlan plan = make_plan(cost, cluster, options);
  ASSERT_FALSE(plan.dropped.empty());
  const PipelinePlan back = PipelinePlan::from_json(nlohmann::json::parse(plan.to_json().dump()));
  EXPECT_EQ(back, plan);
  EXPECT_EQ(back.wire_dtype, "q8_0");
  EXPECT_EQ(back.stages[0].hop.bytes_per_token, 68u);  // 64 values in q8_0: 2 blocks of 34 bytes
  nlohmann::json broken = plan.to_json();
  broken["stages"][0]["first_layer"] = 1;
  EXPECT_THROW(PipelinePlan::from_json(broken), Error);
  broken = plan.to_json();
  broken.erase("stages");
  EXPECT_THROW(PipelinePlan::from_json(broken), Error);
  EXPECT_NE(plan.to_markdown().find("| 0 | a | cpu | 0-"), std::string::npos) << plan.to_markdown();
}

TEST(Plan, ActivationAndKvBytes) {
  EXPECT_EQ(activation_bytes_per_token(576, DType::F32), 2304u);
  EXPECT_EQ(activation_bytes_per_token(576, DType::F16), 1152u);
  EXPECT_EQ(activation_bytes_per_token(576, DType::Q8_0), 612u);
  ModelCost c = model_of({1});
  c.layer_kv_values = {2 * 3 * 64};  // 3 KV heads of 64
  EXPECT_EQ(c.kv_bytes_per_token(0, DType::F16), 768u);
  EXPECT_EQ(c.kv_bytes_per_token(0, DType::F32), 1536u);
  EXPECT_EQ(c.kv_bytes_per_token(0, DType::Q8_0), 2u * 6 * 34);
}

// ---------------------------------------------------------------------------------------------
// Nodes file

std::string parse_error(const std::string& text) {
  try {
    parse_cluster_json(nlohmann::json::parse(text), "nodes.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(NodesFile, ParsesNodesLinksAndSizes) {
  const ClusterSpec c = parse_cluster_json(nlohmann::json::parse(R"({
    "coordinator": "pc",
    "nodes": [
      {"name": "pc", "host": "10.0.0.1:7070", "backend": "cuda", "memory": "10GiB", "bandwidth_gbps": 300},
      {"name": "pc2", "host": "10.0.0.1:7071", "memory": 1073741824, "bandwidth_gbps": 50, "layer_overhead_ms": 0.5},
      {"name": "mac", "memory": "1.5 GB", "bandwidth_gbps": 100}
    ],
    "links": [{"a": "mac", "b": "pc", "gbps": 10, "latency_ms": 0.1}],
    "default_link": {"gbps": 2.5}
  })"));
  ASSERT_EQ(c.nodes.size(), 3u);
  EXPECT_EQ(c.nodes[0].memory_bytes, 10ull << 30);
  EXPECT_EQ(c.nodes[0].host, "10.0.0.1");
  EXPECT_EQ(c.nodes[0].address, "10.0.0.1:7070");
  EXPECT_EQ(c.nodes[1].backend, "cpu");
  EXPECT_EQ(c.nodes[1].memory_bytes, 1ull << 30);
  EXPECT_EQ(c.nodes[2].memory_bytes, 1'500'000'000u);
  EXPECT_TRUE(c.same_host(0, 1));
  EXPECT_FALSE(c.same_host(0, 2));
  EXPECT_EQ(c.link(0, 1), kDefaultLocalLink);
  EXPECT_EQ(c.link(2, 0), (LinkSpec{10, 0.1}));
  EXPECT_EQ(c.link(1, 2), (LinkSpec{2.5, 0.2}));
  EXPECT_EQ(c.coordinator, "pc");
  // A bare list is a nodes file too.
  EXPECT_EQ(parse_cluster_json(nlohmann::json::parse(R"([{"name": "a", "memory": "1G", "bandwidth_gbps": 1}])")).nodes.size(), 1u);
}

TEST(NodesFile, RefusesBadFilesClearly) {
  EXPECT_EQ(parse_error(R"([{"name": "a", "bandwidth_gbps": 1}])"),
            "nodes.json: node a: missing field 'memory' (bytes or \"16GiB\")");
  EXPECT_EQ(parse_error(R"([{"memory": "1G", "bandwidth_gbps": 1}])"), "nodes.json: node 0: missing field 'name' (a string)");
  EXPECT_EQ(parse_error(R"([{"name": "a", "memory": "1G"}])"), "nodes.json: node a: missing field 'bandwidth_gbps' (GB/s)");
  EXPECT_EQ(parse_error(R"([{"name": "a", "memory": -5, "bandwidth_gbps": 1}])"), "nodes.json: node a: memory must not be negative");
  EXPECT_EQ(parse_error(R"([{"name": "a", "memory": "1G", "bandwidth_gbps": 1, "backend": "metal"}])"),
            "nodes.json: node a: unknown backend 'metal' (cpu, cuda, vulkan)");
  EXPECT_EQ(parse_error(R"([{"name": "a", "memory": "16 GiBs", "bandwidth_gbps": 1}])"),
            "nodes.json: node a: memory: '16 GiBs': unknown size unit 'GiBs' (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)");
  EXPECT_EQ(parse_error(R"([{"name": "a", "memory": "lots", "bandwidth_gbps": 1}])").substr(0, 37),
            "nodes.json: node a: memory: 'lots' is");
  EXPECT_EQ(parse_error(R"([{"name": "a", "memory": 1e30, "bandwidth_gbps": 1}])"), "nodes.json: node a: memory is too large");
  EXPECT_EQ(parse_error(R"([{"name": "a", "memory": 0, "bandwidth_gbps": 1}])"),
            "nodes.json: node a: memory must be more than 0 bytes");
  EXPECT_EQ(parse_error(R"([{"name": "a", "memory": "1G", "bandwidth_gbps": -3}])"),
            "nodes.json: node a: bandwidth_gbps must be a positive number of GB/s");
  EXPECT_EQ(parse_error(R"([{"name": "a", "memory": "1G", "bandwidth_gbps": 1, "bandwith": 2}])"),
            "nodes.json: node a: unknown field 'bandwith'");
  EXPECT_EQ(parse_error(R"([{"name": "a", "memory": "1G", "bandwidth_gbps": 1}, {"name": "a", "memory": "1G", "bandwidth_gbps": 1}])"),
            "nodes.json: node a: the name appears twice");
  EXPECT_EQ(parse_error(R"({"nodes": [{"name": "a", "memory": "1G", "bandwidth_gbps": 1}], "links": [{"a": "a", "b": "z"}]})"),
            "nodes.json: link a - z: no node is named 'z'");
  EXPECT_EQ(parse_error(R"({"nodes": [{"name": "a", "memory": "1G", "bandwidth_gbps": 1}], "coordinator": "q"})"),
            "nodes.json: coordinator 'q' is not one of the nodes");
  EXPECT_EQ(parse_error(R"({"nodes": []})"), "nodes.json: the node list is empty");
  EXPECT_EQ(parse_error(R"({"node": []})"), "nodes.json: no \"nodes\" list");
  EXPECT_THROW(load_cluster_file("/no/such/nodes.json"), Error);
}

TEST(NodesFile, SizeStrings) {
  EXPECT_EQ(parse_size("16GiB"), 16ull << 30);
  EXPECT_EQ(parse_size("16 GiB"), 16ull << 30);
  EXPECT_EQ(parse_size("8g"), 8ull << 30);
  EXPECT_EQ(parse_size("512MiB"), 512ull << 20);
  EXPECT_EQ(parse_size("1.5GB"), 1'500'000'000u);
  EXPECT_EQ(parse_size("123"), 123u);
  EXPECT_THROW(parse_size(""), Error);
  EXPECT_THROW(parse_size("-1G"), Error);
  EXPECT_THROW(parse_size("1..5G"), Error);
  EXPECT_THROW(parse_size("5 parsecs"), Error);
  EXPECT_THROW(parse_size("99999999999TiB"), Error);
}

TEST(Probe, AnUnreachableWorkerIsNamed) {
  // A port nobody listens on: bind one, then close it.
  std::string address;
  {
    transport::TcpListener listener(pipeline_frame_limits());
    address = listener.address();
  }
  try {
    probe_workers({address}, transport::generate_cluster_key());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("worker " + address), std::string::npos) << e.what();
  }
  EXPECT_THROW(probe_workers({}, transport::generate_cluster_key()), Error);
}

// A live worker advertises the device its stages run on and every device it has; the probe turns
// them into the node's lines, which `hearth plan --workers` prints and the plan's stages carry.
TEST(Probe, WorkersAdvertiseTheirDevices) {
  const transport::ClusterKey key = transport::generate_cluster_key();
  WorkerOptions o;
  o.threads = 1;
  o.bandwidth_gbps = 12.5;
  Worker worker(o, key);
  std::thread runner([&] { worker.run(); });
  ClusterSpec cluster;
  try {
    cluster = probe_workers({worker.address()}, key);
  } catch (...) {
    worker.stop();
    runner.join();
    throw;
  }
  worker.stop();
  runner.join();
  ASSERT_EQ(cluster.nodes.size(), 1u);
  const NodeSpec& node = cluster.nodes[0];
  EXPECT_EQ(node.backend, "cpu");
  EXPECT_TRUE(node.device.starts_with("cpu:0 ")) << node.device;
  ASSERT_FALSE(node.devices.empty());
  const std::string& cpu = node.devices.front();  // the CPU device, with its facts
  EXPECT_TRUE(cpu.starts_with(node.device + ", ")) << cpu;
  EXPECT_NE(cpu.find("threads 1"), std::string::npos) << cpu;
  EXPECT_NE(cpu.find("simd "), std::string::npos) << cpu;
  EXPECT_NE(cpu.find("12.5 GB/s"), std::string::npos) << cpu;

  ModelCost cost;
  cost.name = "m";
  cost.n_layer = 2;
  cost.n_embd = 64;
  cost.n_ff = 128;
  cost.n_vocab = 100;
  cost.layer_bytes = {1000, 1000};
  cost.layer_kv_values = {64, 64};
  cost.total_bytes = 2000;
  PlanOptions options;
  options.n_ctx = 64;
  const PipelinePlan plan = make_plan(cost, cluster, options);
  ASSERT_EQ(plan.stages.size(), 1u);
  EXPECT_EQ(plan.stages[0].device, node.device);
  EXPECT_NE(plan.to_markdown().find("| cpu (" + node.device + ") |"), std::string::npos) << plan.to_markdown();
  EXPECT_EQ(PipelinePlan::from_json(plan.to_json()), plan);
}

TEST(Probe, AWorkerRefusesABackendItDoesNotHave) {
  WorkerOptions o;
  o.backend = "nosuch";
  try {
    Worker worker(o, transport::generate_cluster_key());
    FAIL() << "a worker started on backend 'nosuch'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown backend 'nosuch'; available: cpu"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// The default model

TEST(ModelCost, AccountsForEveryTensorOfTheDefaultModel) {
  const std::filesystem::path path = std::filesystem::path(HEARTH_MODELS_DIR) / "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent (scripts/get-model.sh smollm2)";
  const gguf::GgufFile file = gguf::GgufFile::open(path);
  const engine::ModelConfig config = engine::ModelConfig::from_gguf(file);
  const ModelCost cost = ModelCost::from_gguf(file, config);
  uint64_t total = 0;
  for (const gguf::TensorInfo& t : file.tensors()) total += t.n_bytes;
  EXPECT_EQ(cost.total_bytes, total);
  const uint64_t layers = std::accumulate(cost.layer_bytes.begin(), cost.layer_bytes.end(), uint64_t{0});
  EXPECT_EQ(layers + cost.embedding_bytes + cost.head_bytes, total);
  EXPECT_EQ(cost.shared_bytes, 0u);
  EXPECT_EQ(cost.n_layer, 30);
  EXPECT_TRUE(cost.tied_output);
  EXPECT_EQ(cost.embedding_bytes, file.find_tensor("token_embd.weight")->n_bytes);
  for (uint64_t b : cost.layer_bytes) EXPECT_EQ(b, cost.layer_bytes[0]);  // every layer has the same shapes
  // 3 KV heads of 64: K and V, f16
  EXPECT_EQ(cost.kv_bytes_per_token(0, DType::F16), 3u * 64 * 2 * 2);
  // A single stage holds the whole file; a split holds the table twice (tied head on the last stage).
  EXPECT_EQ(cost.weight_bytes(0, 30), total);
  EXPECT_EQ(cost.weight_bytes(0, 15) + cost.weight_bytes(15, 30), total + cost.embedding_bytes);
}

// ---------------------------------------------------------------------------------------------
// Tensors by stage: what the tensor map describes, and tensors it does not

// Two layers of F32 tensors (256 bytes a vector, 1 KiB a matrix), with tensors the map does not
// describe: per layer (blk.N.mystery, and a q bias the config does not switch on), global, and
// a malformed layer name.
gguf::GgufFile two_layer_file(bool tied) {
  test::GgufSpec s;
  s.kvs = {test::kv_str("general.architecture", "llama"), test::kv_str("general.name", "two layers")};
  const std::vector<std::string> vectors = {"blk.0.attn_norm.weight", "blk.0.mystery.weight", "blk.1.attn_norm.weight",
                                            "blk.1.mystery.weight",   "blk.1.attn_q.bias",    "mystery_global.weight",
                                            "blk.x.odd.weight",       "output_norm.weight"};
  s.tensors.push_back({"token_embd.weight", {64, 4}, 0, std::nullopt, std::nullopt});
  for (const std::string& name : vectors) s.tensors.push_back({name, {64}, 0, std::nullopt, std::nullopt});
  if (!tied) s.tensors.push_back({"output.weight", {64, 4}, 0, std::nullopt, std::nullopt});
  return gguf::GgufFile::from_bytes(test::build_gguf(s));
}

engine::ModelConfig two_layer_config(bool tied) {
  engine::ModelConfig c;
  c.arch = "llama";
  c.n_embd = 64;
  c.n_vocab = 4;
  c.n_layer = 2;
  c.n_head = c.n_head_kv = 4;
  c.head_dim = c.head_dim_v = 16;
  c.n_ff = 64;
  c.n_rot = 16;
  c.tied_output = tied;
  return c;
}

// The names of the file's tensors whose bytes lie inside `ranges`.
std::set<std::string> tensors_in(const gguf::GgufFile& file, const std::vector<ByteRange>& ranges) {
  std::set<std::string> out;
  for (const gguf::TensorInfo& t : file.tensors()) {
    const uint64_t at = file.data_offset() + t.offset;
    for (const ByteRange& r : ranges) {
      if (at >= r.offset && at + t.n_bytes <= r.offset + r.length) out.insert(std::string(t.name));
    }
  }
  return out;
}

TEST(StageByteRanges, MapTensorsByStageOthersByLayerOrEverywhere) {
  using S = std::set<std::string>;
  const S everywhere = {"mystery_global.weight", "blk.x.odd.weight"};
  for (const bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    const gguf::GgufFile file = two_layer_file(tied);
    const engine::ModelConfig config = two_layer_config(tied);
    const std::vector<ByteRange> first = stage_byte_ranges(file, config, 0, 1);
    const std::vector<ByteRange> last = stage_byte_ranges(file, config, 1, 2);
    ASSERT_FALSE(first.empty());
    EXPECT_EQ(first[0].offset, 0u);  // the header and tensor table
    EXPECT_GE(first[0].length, file.data_offset());
    S want_first = {"token_embd.weight", "blk.0.attn_norm.weight", "blk.0.mystery.weight"};
    want_first.insert(everywhere.begin(), everywhere.end());
    EXPECT_EQ(tensors_in(file, first), want_first);
    S want_last = {"blk.1.attn_norm.weight", "blk.1.mystery.weight", "blk.1.attn_q.bias", "output_norm.weight"};
    want_last.insert(everywhere.begin(), everywhere.end());
    want_last.insert(tied ? "token_embd.weight" : "output.weight");
    EXPECT_EQ(tensors_in(file, last), want_last);
    S all;
    for (const gguf::TensorInfo& t : file.tensors()) all.insert(std::string(t.name));
    EXPECT_EQ(tensors_in(file, stage_byte_ranges(file, config, 0, 2)), all);
    EXPECT_THROW(stage_byte_ranges(file, config, 1, 3), Error);
  }
}

TEST(ModelCost, LayerTensorsByNameOthersShared) {
  const gguf::GgufFile file = two_layer_file(false);
  const ModelCost cost = ModelCost::from_gguf(file, two_layer_config(false));
  EXPECT_EQ(cost.layer_bytes, (std::vector<uint64_t>{2 * 256, 3 * 256}));
  EXPECT_EQ(cost.embedding_bytes, 1024u);
  EXPECT_EQ(cost.embedding_row_bytes, 256u);
  EXPECT_EQ(cost.head_bytes, 256u + 1024u);
  EXPECT_EQ(cost.shared_bytes, 2u * 256);  // mystery_global, blk.x.odd
  EXPECT_EQ(cost.total_bytes, 2u * 1024 + 8 * 256);
}

}  // namespace
}  // namespace hearth::shard
