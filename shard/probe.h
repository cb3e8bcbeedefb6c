// What live workers offer the planner: memory, backend, measured bandwidth and link speed,
// asked over the wire. The transport layer (transport/) is not in this build yet.
#pragma once

#include <string>
#include <vector>

#include "shard/plan.h"

namespace hearth::shard {

// Connects to each worker (host:port), asks for its capabilities and measures the links between
// them. Until the transport integration lands this throws hearth::Error saying so: describe the
// nodes in a file instead (`hearth plan --nodes FILE`).
ClusterSpec probe_workers(const std::vector<std::string>& addresses);

}  // namespace hearth::shard
