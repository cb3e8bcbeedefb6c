#include "shard/probe.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "shard/devices.h"
#include "shard/wire.h"
#include "transport/handshake.h"
#include "transport/tcp_link.h"

namespace hearth::shard {

using nlohmann::json;

ClusterSpec probe_workers(const std::vector<std::string>& addresses, const transport::ClusterKey& key,
                          double default_bandwidth_gbps) {
  if (addresses.empty()) throw Error("--workers: no worker addresses given");
  ClusterSpec cluster;
  for (size_t i = 0; i < addresses.size(); ++i) {
    const std::string& address = addresses[i];
    json caps;
    try {
      auto link = transport::tcp_connect(address, transport::Timeout(10000), pipeline_frame_limits());
      transport::HandshakeOptions hs;
      hs.capabilities = json{{"role", "probe"}}.dump();
      caps = json::parse(transport::handshake(*link, transport::Role::initiator, key, hs).peer_capabilities);
      link->close("probe done");
    } catch (const std::exception& e) {
      throw Error(fmt::format("worker {}: {}", address, e.what()));
    }
    NodeSpec node;
    node.name = fmt::format("worker-{}", i);
    node.address = address;
    node.host = transport::parse_host_port(address).host;
    node.backend = caps.value("backend", std::string("cpu"));
    if (const auto it = caps.find("device"); it != caps.end()) node.device = device_name(*it);
    if (const auto it = caps.find("devices"); it != caps.end() && it->is_array()) {
      for (const json& d : *it) node.devices.push_back(device_line(d));
    }
    node.memory_bytes = caps.value("memory_bytes", uint64_t{0});
    node.bandwidth_gbps = caps.value("bandwidth_gbps", default_bandwidth_gbps);
    if (node.memory_bytes == 0) throw Error(fmt::format("worker {} did not say how much memory it has", address));
    cluster.nodes.push_back(node);
  }
  validate_cluster(cluster);
  return cluster;
}

}  // namespace hearth::shard
