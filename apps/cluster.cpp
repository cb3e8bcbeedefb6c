#include "apps/cluster.h"

#include <fmt/ranges.h>

#include "transport/discovery.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <optional>

#include "core/error.h"
#include "core/system_memory.h"
#include "shard/local_cluster.h"
#include "shard/pipeline.h"
#include "shard/probe.h"
#include "shard/recovery.h"

namespace hearth::apps {

void add_cluster_options(CLI::App& command, ClusterArgs& args) {
  auto* local = command.add_option("--local-stages", args.local_stages,
                                   "Run the model as N pipeline stages in worker processes on this machine");
  auto* workers = command.add_option("--workers", args.workers, "Run the model on these workers (host:port,...)")
                      ->delimiter(',')
                      ->excludes(local);
  auto* discover = command.add_flag("--discover", args.discover,
                                    "Find the workers on the local network (workers started with --advertise and "
                                    "this --cluster-key); nodes that appear later join at the next re-plan")
                        ->excludes(local)
                        ->excludes(workers);
  command.add_option("--min-nodes", args.min_nodes, "With --discover: wait for this many workers before planning")
      ->capture_default_str()
      ->needs(discover);
  command.add_option("--discover-timeout", args.discover_timeout,
                     "With --discover: seconds to wait for --min-nodes workers")
      ->capture_default_str()
      ->needs(discover);
  command.add_option("--cluster-key", args.cluster_key, "The cluster's key file (hex), with --workers or --discover")
      ->check(CLI::ExistingFile);
  command.add_option("--wire-dtype", args.wire_dtype, "Activations between stages: f32 (exact), f16, q8_0")
      ->capture_default_str();
  command.add_flag("--fallback-local,!--no-fallback-local", args.fallback_local,
                   "When the workers left cannot hold the model, run it here if this machine can (default: on)");
}

namespace {

class Runtime final : public ClusterRuntime {
 public:
  Runtime(const ClusterArgs& args, const engine::Model& model, kernels::Backend& backend, int32_t n_ctx, int32_t n_seq,
          DType kv_type, int threads) {
    shard::RecoveryOptions recovery;
    // A probe that a paused node cannot hold up for long: it answers within 1.5 s or is left out.
    const transport::Timeout probe_timeout(1500);
    if (args.local_stages > 0) {
      const int per_worker = std::max(1, threads / args.local_stages);
      local_ = std::make_unique<shard::LocalCluster>("/proc/self/exe", args.local_stages, per_worker, args.backend);
      key_ = local_->key();
      // Equal nodes: the split balances bytes read per token whatever bandwidth they share. The
      // memory is split over the workers that answer.
      recovery.probe = [this, probe_timeout] {
        shard::ProbeReport report = shard::probe_reachable(local_->addresses(), *key_, probe_timeout);
        std::vector<std::string> alive;
        for (const shard::NodeSpec& n : report.cluster.nodes) alive.push_back(n.address);
        report.cluster = alive.empty() ? shard::ClusterSpec{}
                                       : shard::local_cluster_spec(static_cast<int32_t>(alive.size()), available_memory_bytes(),
                                                                   10.0, alive);
        return report;
      };
      recovery.revive = [this] {
        if (const int n = local_->revive(); n > 0) std::fprintf(stderr, "hearth: restarted %d local worker(s)\n", n);
      };
    } else if (args.discover) {
      if (args.cluster_key.empty()) throw Error("--discover needs --cluster-key FILE (the key the workers were started with)");
      if (args.min_nodes < 1) throw Error(fmt::format("--min-nodes {}: must be 1 or more", args.min_nodes));
      key_ = transport::load_cluster_key(args.cluster_key);
      discovery_ = std::make_unique<transport::DiscoveryListener>(*key_);
      std::fprintf(stderr, "hearth: looking for %d worker(s) on the local network (UDP %u)...\n", args.min_nodes,
                   static_cast<unsigned>(transport::kDiscoveryPort));
      const std::vector<std::string> found = discovery_->wait_for(
          static_cast<size_t>(args.min_nodes),
          std::chrono::milliseconds(static_cast<int64_t>(std::max(0.0, args.discover_timeout) * 1000)));
      if (found.empty() || static_cast<int32_t>(found.size()) < args.min_nodes) {
        throw Error(fmt::format("--discover: heard {} of {} worker(s) in {:g} s ({} other datagram(s) ignored). Are "
                                "they started with --advertise and this cluster key, on this network segment?",
                                found.size(), args.min_nodes, args.discover_timeout, discovery_->ignored()));
      }
      std::fprintf(stderr, "hearth: discovered %s\n", fmt::format("{}", fmt::join(found, ", ")).c_str());
      // Every plan (the first and each re-plan) takes the workers heard from lately: one that
      // appears later joins, one that stopped advertising and answering drops out.
      recovery.probe = [this, probe_timeout] {
        return shard::probe_reachable(discovery_->nodes_heard_within(std::chrono::seconds(15)), *key_, probe_timeout);
      };
    } else {
      if (args.cluster_key.empty()) throw Error("--workers needs --cluster-key FILE (the key the workers were started with)");
      key_ = transport::load_cluster_key(args.cluster_key);
      recovery.probe = [this, addresses = args.workers, probe_timeout] {
        return shard::probe_reachable(addresses, *key_, probe_timeout);
      };
    }
    recovery.plan.n_ctx = n_ctx;
    recovery.plan.n_seq = n_seq;
    recovery.plan.kv_type = kv_type;
    recovery.plan.allow_drop_nodes = args.local_stages == 0;  // --local-stages N means N stages (of those alive)
    recovery.pipeline.n_ctx = n_ctx;
    recovery.pipeline.n_seq = n_seq;
    recovery.pipeline.n_batch = args.n_batch;
    recovery.pipeline.kv_type = kv_type;
    recovery.pipeline.wire = shard::wire_dtype_from_name(args.wire_dtype);
    if (args.fallback_local) {
      engine::StageOptions stage;
      stage.n_ctx = n_ctx;
      stage.n_seq = n_seq;
      stage.kv_type = kv_type;
      stage.max_batch = args.n_batch;
      recovery.fallback = [&model, &backend, stage] {
        return shard::make_local_fallback(model.file(), model.config(), backend, stage);
      };
    }
    pipeline_ = std::make_unique<shard::RecoveringPipeline>(model.path(), model.file(), model.config(), *key_,
                                                            std::move(recovery));
  }
  ~Runtime() override {
    pipeline_.reset();  // close the links before the workers go
    local_.reset();
    discovery_.reset();
  }
  engine::BatchExecutor& executor() override { return *pipeline_; }
  std::string describe() const override { return pipeline_->describe(); }

 private:
  std::optional<transport::ClusterKey> key_;
  std::unique_ptr<transport::DiscoveryListener> discovery_;
  std::unique_ptr<shard::LocalCluster> local_;
  std::unique_ptr<shard::RecoveringPipeline> pipeline_;
};

}  // namespace

std::unique_ptr<ClusterRuntime> start_cluster(const ClusterArgs& args, const engine::Model& model, kernels::Backend& backend,
                                              int32_t n_ctx, int32_t n_seq, DType kv_type, int threads) {
  return std::make_unique<Runtime>(args, model, backend, n_ctx, n_seq, kv_type, threads);
}

}  // namespace hearth::apps
