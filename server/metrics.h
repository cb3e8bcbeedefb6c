// Prometheus metrics of the server: counters, gauges and cumulative histograms rendered in the
// text exposition format (version 0.0.4). Thread-safe; cheap enough to update per token.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace hearth::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);  // ascending; +Inf is implicit
  void observe(double value);
  // Appends `name_bucket{le=...}`, `name_sum` and `name_count` lines.
  void render(std::string& out, const std::string& name) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); last one is +Inf
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

class ServerMetrics {
 public:
  ServerMetrics();

  void request_finished(const std::string& endpoint, int status);
  void time_to_first_token(double seconds);
  void inter_token_latency(double seconds);
  void request_duration(double seconds);
  void refused();  // queue full

  // Gauges and counters owned by the scheduler, sampled when /metrics is read.
  struct Snapshot {
    int32_t running = 0;
    int32_t waiting = 0;
    int32_t slots = 0;
    int64_t kv_positions_used = 0;
    int64_t kv_positions_total = 0;
    uint64_t prompt_tokens = 0;
    uint64_t generated_tokens = 0;
    uint64_t steps = 0;
    double busy_seconds = 0.0;
    std::vector<double> stage_busy_seconds;
    bool loaded = false;
    // Recovery: the executor's state and counters (engine::ExecutorHealth) and the replays.
    std::string executor_state = "serving";
    uint64_t stage_failures = 0;
    uint64_t recoveries = 0;
    uint64_t rebalances = 0;
    double rebuild_seconds = 0.0;
    double last_rebuild_seconds = 0.0;
    uint64_t replayed_sequences = 0;
    uint64_t replayed_tokens = 0;
    uint64_t prefix_cache_hits = 0;
    uint64_t prefix_cache_tokens = 0;
  };
  std::string render(const Snapshot& snapshot) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  uint64_t refused_ = 0;
  Histogram ttft_;
  Histogram itl_;
  Histogram duration_;
};

}  // namespace hearth::server
