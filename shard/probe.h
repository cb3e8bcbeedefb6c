// Asking live workers what they offer: each is reached and authenticated with the cluster key,
// and its capabilities (backend, memory, threads) become a NodeSpec for the planner.
#pragma once

#include <string>
#include <vector>

#include "shard/plan.h"
#include "transport/handshake.h"

namespace hearth::shard {

// Nodes named worker-0, worker-1, ... in the order given, with their host:port as address and
// the bandwidth each measured at start (`default_bandwidth_gbps` for one that did not). Throws
// hearth::Error naming the worker that cannot be reached or refuses the key.
ClusterSpec probe_workers(const std::vector<std::string>& addresses, const transport::ClusterKey& key,
                          double default_bandwidth_gbps = 10.0);

}  // namespace hearth::shard
