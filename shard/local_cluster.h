// A cluster on this machine: `hearth worker` processes on 127.0.0.1 with a fresh cluster key,
// started for `--local-stages N` (one machine, several stages: the same code path as a real
// cluster) and stopped with it. Also the split of a model over a list of workers.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "engine/format/gguf.h"
#include "engine/model/model_config.h"
#include "shard/pipeline.h"
#include "shard/plan.h"
#include "transport/handshake.h"

namespace hearth::shard {

class LocalCluster {
 public:
  // Starts n workers from the executable `hearth` (the running binary: /proc/self/exe), each
  // with `threads_per_worker` threads on backend `backend` (a make_backend spec), and waits
  // until each has printed its address. Throws hearth::Error when one fails to start.
  LocalCluster(const std::filesystem::path& hearth, int n, int threads_per_worker, const std::string& backend = "cpu");
  // The same with one backend per worker (a cluster mixing devices: {"vulkan:0", "cpu"}).
  LocalCluster(const std::filesystem::path& hearth, int threads_per_worker, const std::vector<std::string>& backends);
  ~LocalCluster();  // SIGTERM to every worker, then wait; removes the key file
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  // Any thread may ask (revive() changes them).
  std::vector<std::string> addresses() const;
  pid_t pid(size_t i) const;
  const transport::ClusterKey& key() const { return key_; }
  // Starts again every worker whose process has ended (killed, crashed) and returns how many:
  // a local cluster heals itself the way a remote worker rejoins when its machine is back. The
  // new one listens on a new port (addresses() says). Any thread may call it.
  int revive();

 private:
  // Starts worker i (its backend: backends_[i]) and returns its pid and address.
  std::pair<pid_t, std::string> spawn(size_t i) const;

  transport::ClusterKey key_;
  std::filesystem::path dir_;
  std::filesystem::path hearth_;
  int threads_per_worker_ = 1;
  std::vector<std::string> backends_;
  mutable std::mutex mutex_;  // guards pids_ and addresses_
  std::vector<pid_t> pids_;
  std::vector<std::string> addresses_;
};

// The stages for these workers: the planner's split (shard/plan.h) of `cluster` (whose nodes
// carry the workers' addresses), in pipeline order. Throws hearth::Error when it cannot fit.
std::vector<PipelineStageSpec> plan_stages(const gguf::GgufFile& file, const engine::ModelConfig& config,
                                           const ClusterSpec& cluster, const PlanOptions& options);

// `n` equal nodes on this machine (`hearth plan --local`, `--local-stages`): `memory` split
// evenly, each with `bandwidth_gbps`, named local-0…, the first one the coordinator; node i
// gets addresses[i] when given.
ClusterSpec local_cluster_spec(int32_t n, uint64_t memory, double bandwidth_gbps,
                               const std::vector<std::string>& addresses = {});

}  // namespace hearth::shard
