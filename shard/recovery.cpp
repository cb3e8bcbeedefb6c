#include "shard/recovery.h"

#include <map>

#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "core/error.h"
#include "core/system_memory.h"
#include "engine/grammar/vocabulary.h"
#include "transport/log.h"

namespace hearth::shard {

using Clock = std::chrono::steady_clock;

// What runs the steps now: a pipeline over workers, or every layer in this process.
struct RecoveringPipeline::Built {
  std::unique_ptr<PipelineExecutor> pipeline;
  std::unique_ptr<engine::BatchExecutor> fallback;
  PipelinePlan plan;           // of the pipeline
  std::map<std::string, double> bandwidth_gbps;  // each planned node's measured bandwidth, by address
  std::string description;
  double tokens_per_s = 0;     // the plan's estimate (0 for the fallback: any plan is better)

  engine::BatchExecutor& executor() const {
    return pipeline ? static_cast<engine::BatchExecutor&>(*pipeline) : *fallback;
  }
};

namespace {

std::string describe_plan(const PipelinePlan& plan) {
  std::string out;
  for (size_t i = 0; i < plan.stages.size(); ++i) {
    const StagePlan& s = plan.stages[i];
    out += fmt::format("{}stage {} {} layers [{}, {})", i == 0 ? "" : ", ", i, s.address, s.first, s.last);
  }
  return out;
}

std::string list_unreachable(const ProbeReport& report) {
  std::string out;
  for (const auto& [address, why] : report.unreachable) out += fmt::format("{}{}", out.empty() ? "" : "; ", why);
  return out;
}

// Owns the stage its LocalExecutor runs.
class LocalFallback final : public engine::BatchExecutor {
 public:
  LocalFallback(const gguf::GgufFile& file, const engine::ModelConfig& config, kernels::Backend& backend,
                const engine::StageOptions& options)
      : stage_(file, config, backend, 0, config.n_layer, options),
        executor_(stage_, engine::grammar::vocabulary_from_gguf(file)) {}
  int32_t n_slots() const override { return executor_.n_slots(); }
  int32_t n_ctx() const override { return executor_.n_ctx(); }
  void submit(std::span<const engine::BatchEntry> entries) override { executor_.submit(entries); }
  std::vector<engine::SampledToken> collect() override { return executor_.collect(); }
  std::vector<double> stage_busy_seconds() const override { return executor_.stage_busy_seconds(); }

 private:
  engine::Stage stage_;
  engine::LocalExecutor executor_;
};

}  // namespace

std::unique_ptr<engine::BatchExecutor> make_local_fallback(const gguf::GgufFile& file, const engine::ModelConfig& config,
                                                           kernels::Backend& backend, const engine::StageOptions& options) {
  const ModelCost cost = ModelCost::from_gguf(file, config);
  ClusterSpec here;
  PlanOptions plan;
  plan.n_ctx = options.n_ctx;
  plan.n_seq = options.n_seq;
  plan.n_batch = options.max_batch;
  plan.kv_type = options.kv_type;
  const uint64_t need = PlanModel{cost, here, plan}.stage_memory(0, config.n_layer);
  const uint64_t available = available_memory_bytes();
  if (available > 0 && need > available) {
    throw Error(fmt::format("it needs {} for every layer and {} is available", format_bytes(need), format_bytes(available)));
  }
  return std::make_unique<LocalFallback>(file, config, backend, options);
}

RecoveringPipeline::RecoveringPipeline(const std::filesystem::path& model_path, const gguf::GgufFile& file,
                                       const engine::ModelConfig& config, const transport::ClusterKey& key,
                                       RecoveryOptions options)
    : model_path_(model_path),
      file_(file),
      config_(config),
      cost_(ModelCost::from_gguf(file, config)),
      key_(key),
      options_(std::move(options)) {
  HEARTH_CHECK(options_.probe != nullptr);
  const ProbeReport report = options_.probe();
  for (const auto& [address, why] : report.unreachable) {
    transport::log_line(fmt::format("{} does not answer now (watched; it joins when it does): {}", address, why));
  }
  std::unique_ptr<Built> built;
  try {
    built = build(report, plan_for(report));
  } catch (const Error& e) {
    std::string why = e.what();
    if (!try_fallback(why)) throw Error(why);
    return;
  }
  install(std::move(built), "start");
  watcher_ = std::thread([this] { watch(); });
}

RecoveringPipeline::~RecoveringPipeline() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
  std::unique_ptr<Built> built;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    built = std::move(built_);
  }
}

PipelinePlan RecoveringPipeline::plan_for(const ProbeReport& report) const {
  if (report.cluster.nodes.empty()) {
    throw Error(fmt::format("no worker answers{}{}", report.unreachable.empty() ? "" : ": ", list_unreachable(report)));
  }
  try {
    return make_plan(cost_, report.cluster, options_.plan);
  } catch (const Error& e) {
    throw Error(fmt::format("the workers that answer cannot hold the model: {}{}{}", e.what(),
                            report.unreachable.empty() ? "" : "; not answering: ", list_unreachable(report)));
  }
}

double RecoveringPipeline::throughput(const PipelinePlan& plan) { return plan.parallel_tokens_per_s(); }

std::unique_ptr<RecoveringPipeline::Built> RecoveringPipeline::build(const ProbeReport& report, PipelinePlan plan) {
  auto built = std::make_unique<Built>();
  built->plan = std::move(plan);
  for (const NodeSpec& n : report.cluster.nodes) built->bandwidth_gbps[n.address] = n.bandwidth_gbps;
  std::vector<PipelineStageSpec> stages;
  for (const StagePlan& s : built->plan.stages) {
    if (s.address.empty()) throw Error(fmt::format("node {} has no address to reach it at", s.node));
    stages.push_back({s.address, s.first, s.last});
  }
  built->pipeline = std::make_unique<PipelineExecutor>(model_path_, config_, stages, key_, options_.pipeline);
  built->description = fmt::format("{}; {} on the wire", describe_plan(built->plan), wire_dtype_name(options_.pipeline.wire));
  built->tokens_per_s = throughput(built->plan);
  // Who answered but got no layers waits as a standby.
  std::set<std::string> used;
  for (const StagePlan& s : built->plan.stages) used.insert(s.address);
  std::vector<std::string> standby;
  for (const NodeSpec& n : report.cluster.nodes) {
    if (!used.count(n.address)) standby.push_back(n.address);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  standby_ = std::move(standby);
  unreachable_ = report.unreachable;
  return built;
}

bool RecoveringPipeline::try_fallback(std::string& why) {
  if (!options_.fallback) return false;
  auto built = std::make_unique<Built>();
  try {
    built->fallback = options_.fallback();
  } catch (const Error& e) {
    why = fmt::format("{}; and this process cannot run the model itself: {}", why, e.what());
    return false;
  }
  built->description = fmt::format("every layer on the coordinator (fallback: {})", why);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    standby_.clear();
  }
  install(std::move(built), "fallback");
  if (!watcher_.joinable()) watcher_ = std::thread([this] { watch(); });
  return true;
}

void RecoveringPipeline::install(std::unique_ptr<Built> built, const char* why) {
  std::string old;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    old = built_ ? built_->description : std::string();
    built_ = std::move(built);
    down_reason_.clear();
    wanted_ = false;
    health_.state = engine::ExecutorHealth::State::serving;
    health_.reason.clear();
    health_.plan = built_->description;
  }
  if (old.empty()) {
    transport::log_line(fmt::format("pipeline ({}): {}", why, describe()));
  } else {
    transport::log_line(fmt::format("pipeline ({}): was {}; now {}", why, old, describe()));
  }
}

engine::BatchExecutor* RecoveringPipeline::current() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return built_ ? &built_->executor() : nullptr;
}

int32_t RecoveringPipeline::max_in_flight() const {
  engine::BatchExecutor* e = current();
  return e ? e->max_in_flight() : 1;
}

void RecoveringPipeline::submit(std::span<const engine::BatchEntry> entries) {
  engine::BatchExecutor* e = current();
  HEARTH_CHECK(e != nullptr, "a step submitted while the cluster is down");
  e->submit(entries);
}

std::vector<engine::SampledToken> RecoveringPipeline::collect() {
  engine::BatchExecutor* e = current();
  HEARTH_CHECK(e != nullptr, "a step collected while the cluster is down");
  return e->collect();
}

std::vector<double> RecoveringPipeline::stage_busy_seconds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return built_ ? built_->executor().stage_busy_seconds() : std::vector<double>{};
}

std::string RecoveringPipeline::failure() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!down_reason_.empty()) return down_reason_;
  if (health_.state == engine::ExecutorHealth::State::recovering) return health_.reason;
  return built_ ? built_->executor().failure() : std::string("no pipeline");
}

bool RecoveringPipeline::rebuild_wanted() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (wanted_) return true;
  // A failed pipeline is rebuilt at once, also when no step is waiting for it, so that /health
  // says 200 again as soon as the cluster can serve.
  return down_reason_.empty() && built_ && !built_->executor().failure().empty();
}

engine::ExecutorHealth RecoveringPipeline::health() const {
  std::lock_guard<std::mutex> lock(mutex_);
  engine::ExecutorHealth h = health_;
  const std::string failure = built_ && down_reason_.empty() ? built_->executor().failure() : std::string();
  if (!down_reason_.empty()) {
    h.state = engine::ExecutorHealth::State::down;
    h.reason = down_reason_;
    h.plan.clear();  // nothing runs the layers now
  } else if (!failure.empty() && h.state == engine::ExecutorHealth::State::serving) {
    h.state = engine::ExecutorHealth::State::recovering;  // the scheduler rebuilds it next
    h.reason = failure;
  }
  h.nodes.clear();
  h.stages.clear();
  if (built_ && built_->pipeline && down_reason_.empty()) {
    for (size_t i = 0; i < built_->plan.stages.size(); ++i) {
      const StagePlan& s = built_->plan.stages[i];
      h.nodes.emplace_back(s.address, fmt::format("stage {}, layers [{}, {})", i, s.first, s.last));
      const auto bw = built_->bandwidth_gbps.find(s.address);
      h.stages.push_back({s.address, s.backend, s.device, s.first, s.last, s.memory_bytes, s.memory_budget,
                          bw == built_->bandwidth_gbps.end() ? 0.0 : bw->second});
    }
  }
  for (const std::string& a : standby_) h.nodes.emplace_back(a, "standby");
  for (const auto& [a, why] : unreachable_) h.nodes.emplace_back(a, fmt::format("unreachable: {}", why));
  return h;
}

std::string RecoveringPipeline::describe() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!down_reason_.empty()) return fmt::format("down: {}", down_reason_);
  return built_ ? built_->description : std::string("none");
}

bool RecoveringPipeline::rebuild() {
  const auto start = Clock::now();
  std::unique_ptr<Built> old;
  std::string reason;
  bool failed = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (built_) reason = built_->executor().failure();
    failed = !reason.empty();
    if (!failed) reason = down_reason_.empty() ? "a better plan" : "a plan exists again";
    if (failed) ++health_.stage_failures;
    health_.state = engine::ExecutorHealth::State::recovering;
    health_.reason = reason;
    wanted_ = false;
    old = std::move(built_);
  }
  transport::log_line(fmt::format("rebuilding the pipeline ({}); it was {}", reason,
                                  old ? old->description : std::string("down")));
  old.reset();  // closes its links: the workers end that session and take a new one

  const auto deadline = start + options_.rebuild_deadline;
  std::string why;
  bool ok = false;
  while (true) {
    const ProbeReport report = options_.probe();
    bool infeasible = false;
    try {
      PipelinePlan plan;
      try {
        plan = plan_for(report);
      } catch (const Error&) {
        infeasible = true;
        throw;
      }
      install(build(report, std::move(plan)), failed ? "recovered" : "rebalanced");
      ok = true;
      break;
    } catch (const Error& e) {
      why = e.what();
      std::lock_guard<std::mutex> lock(mutex_);
      unreachable_ = report.unreachable;
    }
    // No plan over the workers: run here when allowed, rather than wait. A plan that failed to
    // start (a worker died while loading) is tried again until the deadline.
    if ((infeasible || Clock::now() >= deadline) && try_fallback(why)) {
      ok = true;
      break;
    }
    if (Clock::now() >= deadline) break;
    std::unique_lock<std::mutex> lock(mutex_);
    if (stop_cv_.wait_for(lock, std::chrono::milliseconds(300), [&] { return stopping_; })) break;
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::lock_guard<std::mutex> lock(mutex_);
  health_.rebuild_seconds += seconds;
  health_.last_rebuild_seconds = seconds;
  if (ok) {
    if (failed) {
      ++health_.recoveries;
    } else {
      ++health_.rebalances;
    }
    transport::log_line(fmt::format("pipeline rebuilt in {:.2f} s", seconds));
    return true;
  }
  down_reason_ = why;
  health_.state = engine::ExecutorHealth::State::down;
  health_.reason = why;
  transport::log_line(fmt::format("the cluster cannot serve: {} (watching for workers)", why));
  return false;
}

void RecoveringPipeline::watch() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (stop_cv_.wait_for(lock, options_.reprobe_interval, [&] { return stopping_; })) return;
      // A failed or rebuilding pipeline is the scheduler's to rebuild; a wanted rebuild waits.
      if (wanted_ || health_.state == engine::ExecutorHealth::State::recovering) continue;
      if (down_reason_.empty() && built_ && !built_->executor().failure().empty()) continue;
    }
    if (options_.revive) options_.revive();
    const ProbeReport report = options_.probe();
    PipelinePlan plan;
    try {
      plan = plan_for(report);
    } catch (const Error&) {
      std::lock_guard<std::mutex> lock(mutex_);
      unreachable_ = report.unreachable;
      continue;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    unreachable_ = report.unreachable;
    if (health_.state == engine::ExecutorHealth::State::recovering || !down_reason_.empty() || !built_ || !built_->pipeline) {
      if (health_.state != engine::ExecutorHealth::State::recovering) {
        wanted_ = true;
        transport::log_line(fmt::format("the workers can hold the model again: {}", describe_plan(plan)));
      }
      continue;
    }
    std::set<std::string> used;
    for (const StagePlan& s : built_->plan.stages) used.insert(s.address);
    standby_.clear();
    for (const NodeSpec& n : report.cluster.nodes) {
      if (!used.count(n.address)) standby_.push_back(n.address);
    }
    const double now = built_->tokens_per_s, better = throughput(plan);
    if (describe_plan(plan) == describe_plan(built_->plan)) continue;
    if (better >= now * (1.0 + options_.rebalance_gain)) {
      wanted_ = true;
      transport::log_line(fmt::format("a better plan ({:.1f} tokens/s estimated against {:.1f}): {}; now {}", better,
                                      now, describe_plan(plan), describe_plan(built_->plan)));
    } else if (!options_.plan.allow_drop_nodes && plan.stages.size() > built_->plan.stages.size()) {
      // Every node gets layers (--local-stages N means N stages): a node back means a stage back.
      wanted_ = true;
      transport::log_line(fmt::format("a node is back; every node gets layers: {}; now {}", describe_plan(plan),
                                      describe_plan(built_->plan)));
    }
  }
}

}  // namespace hearth::shard
