#include "shard/probe.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <future>

#include "core/error.h"
#include "shard/devices.h"
#include "shard/wire.h"
#include "transport/handshake.h"
#include "transport/tcp_link.h"

namespace hearth::shard {

using nlohmann::json;

NodeSpec probe_worker(const std::string& address, const transport::ClusterKey& key, const std::string& name,
                      transport::Timeout timeout, double default_bandwidth_gbps) {
  json caps;
  try {
    auto link = transport::tcp_connect(address, timeout, pipeline_frame_limits());
    transport::HandshakeOptions hs;
    hs.capabilities = json{{"role", "probe"}}.dump();
    hs.timeout = timeout;
    caps = json::parse(transport::handshake(*link, transport::Role::initiator, key, hs).peer_capabilities);
    link->close("probe done");
  } catch (const std::exception& e) {
    throw Error(fmt::format("worker {}: {}", address, e.what()));
  }
  NodeSpec node;
  node.name = name;
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
  return node;
}

ProbeReport probe_reachable(const std::vector<std::string>& addresses, const transport::ClusterKey& key,
                            transport::Timeout timeout, double default_bandwidth_gbps) {
  std::vector<std::future<NodeSpec>> probes;
  for (size_t i = 0; i < addresses.size(); ++i) {
    probes.push_back(std::async(std::launch::async, [&, i] {
      return probe_worker(addresses[i], key, fmt::format("worker-{}", i), timeout, default_bandwidth_gbps);
    }));
  }
  ProbeReport report;
  for (size_t i = 0; i < probes.size(); ++i) {
    try {
      report.cluster.nodes.push_back(probes[i].get());
    } catch (const std::exception& e) {
      report.unreachable.emplace_back(addresses[i], e.what());
    }
  }
  return report;
}

ClusterSpec probe_workers(const std::vector<std::string>& addresses, const transport::ClusterKey& key,
                          double default_bandwidth_gbps) {
  if (addresses.empty()) throw Error("--workers: no worker addresses given");
  ClusterSpec cluster;
  for (size_t i = 0; i < addresses.size(); ++i) {
    cluster.nodes.push_back(probe_worker(addresses[i], key, fmt::format("worker-{}", i), transport::Timeout(10000),
                                         default_bandwidth_gbps));
  }
  validate_cluster(cluster);
  return cluster;
}

}  // namespace hearth::shard
