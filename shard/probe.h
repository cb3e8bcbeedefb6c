// Asking live workers what they offer: each is reached and authenticated with the cluster key,
// and its capabilities (backend, memory, threads) become a NodeSpec for the planner.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "shard/plan.h"
#include "transport/handshake.h"

namespace hearth::shard {

// One worker's capabilities as a NodeSpec named `name`. Throws hearth::Error naming the worker
// when it cannot be reached within `timeout`, refuses the key or says no memory.
NodeSpec probe_worker(const std::string& address, const transport::ClusterKey& key, const std::string& name,
                      transport::Timeout timeout = transport::Timeout(10000), double default_bandwidth_gbps = 10.0);

// What a round of probes found: the nodes that answered (in the order given) and, for the rest,
// why not (address, reason).
struct ProbeReport {
  ClusterSpec cluster;
  std::vector<std::pair<std::string, std::string>> unreachable;
};
// Probes every worker at once (a paused one costs `timeout`, not its place in the list); node i
// keeps the name worker-i whether or not the others answer.
ProbeReport probe_reachable(const std::vector<std::string>& addresses, const transport::ClusterKey& key,
                            transport::Timeout timeout, double default_bandwidth_gbps = 10.0);

// Nodes named worker-0, worker-1, ... in the order given, with their host:port as address and
// the bandwidth each measured at start (`default_bandwidth_gbps` for one that did not). Throws
// hearth::Error naming the worker that cannot be reached or refuses the key.
ClusterSpec probe_workers(const std::vector<std::string>& addresses, const transport::ClusterKey& key,
                          double default_bandwidth_gbps = 10.0);

}  // namespace hearth::shard
