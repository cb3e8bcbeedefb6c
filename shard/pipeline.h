// The coordinator's side of a pipeline: a BatchExecutor whose steps run on workers. It
// connects to every worker (authenticated), assigns each its layers (LoadStage), waits until
// all are loaded and linked stage to stage, then sends each step's batch to stage 0 and
// receives the sampled tokens from the last stage. Up to one step per stage is in flight, so
// with several sequences every stage has work. A dead or failing worker makes the pending and
// every later step fail with an Error that names it, within the heartbeat timeout.
#pragma once

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/format/gguf.h"
#include "engine/model/model_config.h"
#include "engine/batch/batch.h"
#include "shard/wire.h"
#include "transport/handshake.h"
#include "transport/heartbeat.h"
#include "transport/tcp_link.h"

namespace hearth::shard {

struct PipelineStageSpec {
  std::string address;         // host:port of the worker
  int32_t first = 0, last = 0; // layers [first, last)
};

struct PipelineOptions {
  int32_t n_ctx = 4096;
  int32_t n_seq = 1;
  int32_t n_batch = 512;  // most tokens per step (the scheduler's step budget): sizes the stages' arenas
  DType kv_type = DType::F16;
  WireDtype wire = WireDtype::F32;
  transport::Timeout connect_timeout{10000};
  transport::Timeout load_timeout{300000};  // loading a stage's weights
  transport::HeartbeatOptions heartbeat{};
};

class PipelineExecutor final : public engine::BatchExecutor {
 public:
  // Throws hearth::Error naming the worker when one cannot be reached, refuses the key, lacks
  // the model or fails to load its stage.
  PipelineExecutor(const std::filesystem::path& model_path, const engine::ModelConfig& config,
                   std::vector<PipelineStageSpec> stages, const transport::ClusterKey& key, PipelineOptions options);
  ~PipelineExecutor() override;

  int32_t n_slots() const override { return options_.n_seq; }
  int32_t n_ctx() const override { return options_.n_ctx; }
  int32_t max_in_flight() const override { return static_cast<int32_t>(stages_.size()); }
  void submit(std::span<const engine::BatchEntry> entries) override;
  std::vector<engine::SampledToken> collect() override;
  // Compute seconds of each stage so far, as the workers measured them.
  std::vector<double> stage_busy_seconds() const override;
  // The reason the pipeline failed (set once, by the first broken link or dead stage).
  std::string failure() const override;

  size_t n_stages() const { return stages_.size(); }
  // Bytes sent to stage 0 and received from the last stage so far (payloads).
  uint64_t bytes_sent() const;
  uint64_t bytes_received() const;
  // Weight bytes streamed to workers that had no copy of the model.
  uint64_t weight_bytes_sent() const { return weight_bytes_sent_; }

 private:
  struct Stage {
    PipelineStageSpec spec;
    std::unique_ptr<transport::TcpLink> link;
    std::unique_ptr<transport::LinkMonitor> monitor;
    std::thread reader;
  };
  void fail(const std::string& reason);
  void read_loop(size_t stage);

  PipelineOptions options_;
  int32_t n_vocab_ = 0;
  std::vector<Stage> stages_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::pair<uint64_t, std::vector<engine::SampledToken>>> results_;
  std::string failure_;          // set once: every later call throws it
  bool closing_ = false;         // the destructor is closing the links (not a failure)
  uint64_t next_id_ = 0;         // id of the next submitted step
  uint64_t next_collect_ = 0;    // id the next collect() returns
  uint64_t bytes_sent_ = 0, bytes_received_ = 0;
  uint64_t weight_bytes_sent_ = 0;
  std::vector<double> stage_busy_;
};

}  // namespace hearth::shard
