#include "apps/cluster.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <optional>

#include "core/error.h"
#include "core/system_memory.h"
#include "shard/local_cluster.h"
#include "shard/pipeline.h"
#include "shard/probe.h"

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
}

namespace {

class Runtime final : public ClusterRuntime {
 public:
  Runtime(const ClusterArgs& args, const engine::Model& model, int32_t n_ctx, int32_t n_seq, DType kv_type,
          int threads) {
    std::optional<transport::ClusterKey> key;
    std::vector<std::string> addresses;
    shard::ClusterSpec cluster;
    if (args.local_stages > 0) {
      const int per_worker = std::max(1, threads / args.local_stages);
      local_ = std::make_unique<shard::LocalCluster>("/proc/self/exe", args.local_stages, per_worker, args.backend);
      key = local_->key();
      // Equal nodes: the split balances bytes read per token whatever bandwidth they share.
      cluster = shard::local_cluster_spec(args.local_stages, available_memory_bytes(), 10.0, local_->addresses());
    } else {
      if (args.cluster_key.empty()) throw Error("--workers needs --cluster-key FILE (the key the workers were started with)");
      key = transport::load_cluster_key(args.cluster_key);
      cluster = shard::probe_workers(args.workers, *key);
    }
    shard::PlanOptions plan;
    plan.n_ctx = n_ctx;
    plan.n_seq = n_seq;
    plan.kv_type = kv_type;
    plan.allow_drop_nodes = args.local_stages == 0;  // --local-stages N means N stages
    const std::vector<shard::PipelineStageSpec> stages = shard::plan_stages(model.file(), model.config(), cluster, plan);
    shard::PipelineOptions options;
    options.n_ctx = n_ctx;
    options.n_seq = n_seq;
    options.n_batch = args.n_batch;
    options.kv_type = kv_type;
    options.wire = shard::wire_dtype_from_name(args.wire_dtype);
    pipeline_ = std::make_unique<shard::PipelineExecutor>(model.path(), model.config(), stages, *key, options);
    for (size_t i = 0; i < stages.size(); ++i) {
      description_ += fmt::format("{}stage {} {} layers [{}, {})", i == 0 ? "" : ", ", i, stages[i].address, stages[i].first,
                                  stages[i].last);
    }
    description_ += fmt::format("; {} on the wire", args.wire_dtype);
  }
  ~Runtime() override {
    pipeline_.reset();  // close the links before the workers go
    local_.reset();
  }
  engine::BatchExecutor& executor() override { return *pipeline_; }
  std::string describe() const override { return description_; }

 private:
  std::unique_ptr<shard::LocalCluster> local_;
  std::unique_ptr<shard::PipelineExecutor> pipeline_;
  std::string description_;
};

}  // namespace

std::unique_ptr<ClusterRuntime> start_cluster(const ClusterArgs& args, const engine::Model& model, int32_t n_ctx,
                                              int32_t n_seq, DType kv_type, int threads) {
  return std::make_unique<Runtime>(args, model, n_ctx, n_seq, kv_type, threads);
}

}  // namespace hearth::apps
