#include "apps/cluster.h"

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
  command.add_option("--cluster-key", args.cluster_key, "The cluster's key file (hex), with --workers")
      ->check(CLI::ExistingFile)
      ->needs(workers);
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
  }
  engine::BatchExecutor& executor() override { return *pipeline_; }
  std::string describe() const override { return pipeline_->describe(); }

 private:
  std::optional<transport::ClusterKey> key_;
  std::unique_ptr<shard::LocalCluster> local_;
  std::unique_ptr<shard::RecoveringPipeline> pipeline_;
};

}  // namespace

std::unique_ptr<ClusterRuntime> start_cluster(const ClusterArgs& args, const engine::Model& model, kernels::Backend& backend,
                                              int32_t n_ctx, int32_t n_seq, DType kv_type, int threads) {
  return std::make_unique<Runtime>(args, model, backend, n_ctx, n_seq, kv_type, threads);
}

}  // namespace hearth::apps
