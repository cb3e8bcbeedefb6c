#include "shard/probe.h"

#include <fmt/ranges.h>

#include "core/error.h"

namespace hearth::shard {

ClusterSpec probe_workers(const std::vector<std::string>& addresses) {
  if (addresses.empty()) throw Error("--workers: no worker addresses given");
  throw Error(fmt::format(
      "--workers {}: asking live workers for their memory and bandwidth is not available yet (the transport layer "
      "is not in this build); describe the nodes in a JSON file and use --nodes FILE",
      fmt::join(addresses, ",")));
}

}  // namespace hearth::shard
