// Recovery: a pipeline that survives losing a node. RecoveringPipeline is the coordinator's
// BatchExecutor over a set of nodes that may come and go (the workers of `--workers`, standbys
// included, or the worker processes of `--local-stages`). It runs steps on a PipelineExecutor
// planned over the nodes that answer; when a stage fails (a dead or silent peer, a broken link)
// the scheduler drains and calls rebuild(), which probes every node at once, plans again over
// those that answer, has the workers load their new layer ranges (from their own copy of the
// file or their weight cache; streamed only when they have neither) and starts a new pipeline;
// the scheduler then replays every running sequence (engine/generate/scheduler.h). When no plan
// over the workers exists, the coordinator runs every layer itself if it may (`fallback`).
//
// A watcher thread probes the nodes outside the plan every `reprobe_interval`: when one comes
// back (or a plan exists again after the cluster went down), and the plan over every node that
// answers is estimated at least `rebalance_gain` faster than the current one (always, from the
// fallback or from down), rebuild_wanted() turns true and the scheduler rebuilds between steps.
// Every rebuild logs the old and the new plan.
//
// Threads: submit/collect/rebuild on the scheduler's thread; failure/health/rebuild_wanted and
// the statistics from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/batch/batch.h"
#include "engine/format/gguf.h"
#include "engine/model/model_config.h"
#include "engine/model/stage.h"
#include "kernels/backend.h"
#include "shard/pipeline.h"
#include "shard/plan.h"
#include "shard/probe.h"

namespace hearth::shard {

struct RecoveryOptions {
  // The nodes that answer now, with their capabilities, and why the others do not. Called at
  // every rebuild and by the watcher (from its thread); must be safe to call concurrently with
  // itself and take about a probe timeout at most.
  std::function<ProbeReport()> probe;
  // Called by the watcher before it probes (may be empty): brings back what this process can,
  // such as the dead worker processes of a local cluster (LocalCluster::revive).
  std::function<void()> revive;
  PlanOptions plan;
  PipelineOptions pipeline;
  // Runs every layer in this process when no plan over the nodes exists (empty: no fallback).
  // Throws hearth::Error saying why when this process cannot hold the model.
  std::function<std::unique_ptr<engine::BatchExecutor>()> fallback;
  // A rebuild keeps trying (probe, plan, load) this long before it gives up (the cluster is then
  // down until the watcher finds a plan).
  std::chrono::milliseconds rebuild_deadline{15000};
  std::chrono::milliseconds reprobe_interval{2000};
  double rebalance_gain = 0.10;  // a better plan must be estimated this much faster to be worth a reload
};

// Every layer on this process's `backend`: a Stage and a LocalExecutor, for
// RecoveryOptions::fallback. Throws hearth::Error naming both figures when the stage (weights,
// KV cache for n_ctx x n_seq, compute buffers, as the planner counts them) needs more memory
// than is available now.
std::unique_ptr<engine::BatchExecutor> make_local_fallback(const gguf::GgufFile& file, const engine::ModelConfig& config,
                                                           kernels::Backend& backend, const engine::StageOptions& options);

class RecoveringPipeline final : public engine::BatchExecutor {
 public:
  // Plans over the nodes that answer and starts the first pipeline (or the fallback). Throws
  // hearth::Error naming what is missing when neither can serve.
  RecoveringPipeline(const std::filesystem::path& model_path, const gguf::GgufFile& file, const engine::ModelConfig& config,
                     const transport::ClusterKey& key, RecoveryOptions options);
  ~RecoveringPipeline() override;

  int32_t n_slots() const override { return options_.pipeline.n_seq; }
  int32_t n_ctx() const override { return options_.pipeline.n_ctx; }
  int32_t max_in_flight() const override;
  void submit(std::span<const engine::BatchEntry> entries) override;
  std::vector<engine::SampledToken> collect() override;
  std::vector<double> stage_busy_seconds() const override;
  std::string failure() const override;
  bool rebuild() override;
  bool rebuild_wanted() const override;
  engine::ExecutorHealth health() const override;

  // Where the layers run now ("stage 0 127.0.0.1:7001 layers [0, 15), ..." or the fallback).
  std::string describe() const;

 private:
  struct Built;
  // Starts a pipeline on `plan` (made over `report`'s nodes; the others become standbys).
  // Throws hearth::Error with the reason.
  std::unique_ptr<Built> build(const ProbeReport& report, PipelinePlan plan);
  bool try_fallback(std::string& why);
  void install(std::unique_ptr<Built> built, const char* why);
  void watch();
  // The plan over `report`'s nodes and its estimated throughput; throws when none fits.
  PipelinePlan plan_for(const ProbeReport& report) const;
  static double throughput(const PipelinePlan& plan);
  engine::BatchExecutor* current() const;

  const std::filesystem::path model_path_;
  const gguf::GgufFile& file_;
  const engine::ModelConfig& config_;
  const ModelCost cost_;
  const transport::ClusterKey key_;
  const RecoveryOptions options_;

  mutable std::mutex mutex_;  // guards everything below
  std::unique_ptr<Built> built_;
  engine::ExecutorHealth health_;
  std::string down_reason_;             // non-empty: the last rebuild failed
  bool wanted_ = false;                 // the watcher found a better plan, or one after going down
  std::vector<std::pair<std::string, std::string>> unreachable_;  // by the last probe
  std::vector<std::string> standby_;    // answered the last probe but have no layers
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread watcher_;
};

}  // namespace hearth::shard
