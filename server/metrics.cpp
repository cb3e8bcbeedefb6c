#include "server/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace hearth::server {

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const size_t i = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  ++counts_[i];
  sum_ += value;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name) const {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, count_);
  out += fmt::format("{}_sum {}\n{}_count {}\n", name, sum_, name, count_);
}

ServerMetrics::ServerMetrics()
    : ttft_({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      itl_({0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2.5}),
      duration_({0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}) {}

void ServerMetrics::request_finished(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++requests_[{endpoint, status}];
}
void ServerMetrics::time_to_first_token(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  ttft_.observe(seconds);
}
void ServerMetrics::inter_token_latency(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  itl_.observe(seconds);
}
void ServerMetrics::request_duration(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  duration_.observe(seconds);
}
void ServerMetrics::refused() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++refused_;
}

std::string ServerMetrics::render(const Snapshot& s) const {
  std::string out;
  auto gauge = [&](const char* name, const char* help, double value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} gauge\n{} {}\n", name, help, name, name, value);
  };
  auto counter = [&](const char* name, const char* help, double value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} counter\n{} {}\n", name, help, name, name, value);
  };
  gauge("hearth_model_loaded", "1 once the model is loaded and requests are served", s.loaded ? 1 : 0);
  gauge("hearth_requests_running", "Sequences holding a KV-cache slot", s.running);
  gauge("hearth_requests_waiting", "Sequences queued for a slot", s.waiting);
  gauge("hearth_kv_cache_slots", "Sequence slots of the KV cache", s.slots);
  gauge("hearth_kv_cache_usage_ratio", "Cached positions of running sequences / KV-cache capacity",
        s.kv_positions_total > 0 ? static_cast<double>(s.kv_positions_used) / static_cast<double>(s.kv_positions_total)
                                 : 0.0);
  counter("hearth_prompt_tokens_total", "Prompt tokens processed", static_cast<double>(s.prompt_tokens));
  counter("hearth_generation_tokens_total", "Tokens generated", static_cast<double>(s.generated_tokens));
  counter("hearth_batch_steps_total", "Forward steps of the continuous batch", static_cast<double>(s.steps));
  counter("hearth_step_seconds_total", "Time from submitting batch steps to collecting their tokens", s.busy_seconds);
  out += "# HELP hearth_stage_busy_seconds_total Time each pipeline stage spent computing\n"
         "# TYPE hearth_stage_busy_seconds_total counter\n";
  for (size_t i = 0; i < s.stage_busy_seconds.size(); ++i) {
    out += fmt::format("hearth_stage_busy_seconds_total{{stage=\"{}\"}} {}\n", i, s.stage_busy_seconds[i]);
  }

  out += "# HELP hearth_executor_state 1 for the state the model's executor is in: serving, recovering (a node was "
         "lost; re-planning and replaying) or down (no plan can serve)\n"
         "# TYPE hearth_executor_state gauge\n";
  for (const char* state : {"serving", "recovering", "down"}) {
    out += fmt::format("hearth_executor_state{{state=\"{}\"}} {}\n", state, s.executor_state == state ? 1 : 0);
  }
  counter("hearth_stage_failures_total", "Pipeline failures seen: a dead, silent or misbehaving stage",
          static_cast<double>(s.stage_failures));
  counter("hearth_recoveries_total", "Pipelines rebuilt on the nodes left after a failure", static_cast<double>(s.recoveries));
  counter("hearth_rebalances_total", "Pipelines rebuilt for a better plan (a node came back)", static_cast<double>(s.rebalances));
  counter("hearth_rebuild_seconds_total", "Time spent rebuilding pipelines (probe, plan, load)", s.rebuild_seconds);
  gauge("hearth_last_rebuild_seconds", "How long the last rebuild took", s.last_rebuild_seconds);
  counter("hearth_replayed_sequences_total", "Sequences replayed onto a rebuilt pipeline", static_cast<double>(s.replayed_sequences));
  counter("hearth_replayed_tokens_total", "Tokens prefilled again to replay sequences (prompt and generated)",
          static_cast<double>(s.replayed_tokens));

  counter("hearth_prefix_cache_hits_total", "Sequences whose prompt began with tokens a slot's KV cache still held",
          static_cast<double>(s.prefix_cache_hits));
  counter("hearth_prefix_cache_tokens_total", "Prompt tokens reused from the prompt cache instead of prefilled",
          static_cast<double>(s.prefix_cache_tokens));

  std::lock_guard<std::mutex> lock(mutex_);
  counter("hearth_requests_refused_total", "Requests refused with 503: the queue was full, or one waited past --queue-timeout", static_cast<double>(refused_));
  out += "# HELP hearth_http_requests_total HTTP requests answered, by endpoint and status\n"
         "# TYPE hearth_http_requests_total counter\n";
  for (const auto& [key, count] : requests_) {
    out += fmt::format("hearth_http_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", key.first, key.second, count);
  }
  out += "# HELP hearth_time_to_first_token_seconds Time from request to first generated token\n"
         "# TYPE hearth_time_to_first_token_seconds histogram\n";
  ttft_.render(out, "hearth_time_to_first_token_seconds");
  out += "# HELP hearth_inter_token_latency_seconds Time between consecutive tokens of a sequence\n"
         "# TYPE hearth_inter_token_latency_seconds histogram\n";
  itl_.render(out, "hearth_inter_token_latency_seconds");
  out += "# HELP hearth_request_duration_seconds Time from request to last token\n"
         "# TYPE hearth_request_duration_seconds histogram\n";
  duration_.render(out, "hearth_request_duration_seconds");
  return out;
}

}  // namespace hearth::server
