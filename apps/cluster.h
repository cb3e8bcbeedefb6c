// The cluster options `hearth run` and `hearth serve` share: --local-stages N (worker processes
// on this machine) or --workers H:P,... --cluster-key FILE, and how activations travel.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/generate/model.h"
#include "engine/generate/scheduler.h"

namespace CLI {
class App;
}

namespace hearth::apps {

struct ClusterArgs {
  int32_t local_stages = 0;
  std::vector<std::string> workers;
  std::string cluster_key;
  std::string wire_dtype = "f32";
  std::string backend = "cpu";  // what --local-stages workers run on (the command's --backend)
  int32_t n_batch = 512;        // the scheduler's step tokens (the command's -b), for the stages' arenas
  // When no plan over the workers is left, run every layer on the coordinator (if it can hold them).
  bool fallback_local = true;
  // --discover: the workers are those whose beacons (worker --advertise) open under the key;
  // planning starts once min_nodes are heard (or discover_timeout passes with at least one).
  bool discover = false;
  int32_t min_nodes = 1;
  double discover_timeout = 30;
  bool enabled() const { return local_stages > 0 || !workers.empty() || discover; }
};

void add_cluster_options(CLI::App& command, ClusterArgs& args);

// The executor of a cluster run: the workers (started here for --local-stages) and the
// pipeline over them, planned for the model with KV caches of `kv_type`, which survives losing
// a node (shard/recovery.h): re-planned over the nodes left, or run on `backend` here when none
// can hold it and --fallback-local allows. `threads`: CPU threads of this machine, shared by
// local workers.
struct ClusterRuntime {
  virtual ~ClusterRuntime() = default;
  virtual engine::BatchExecutor& executor() = 0;
  virtual std::string describe() const = 0;
};
std::unique_ptr<ClusterRuntime> start_cluster(const ClusterArgs& args, const engine::Model& model, kernels::Backend& backend,
                                              int32_t n_ctx, int32_t n_seq, DType kv_type, int threads);

}  // namespace hearth::apps
