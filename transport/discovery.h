// Discovery on the home network: workers started with --advertise send a beacon every second to
// a link-local multicast group (239.255.70.70, UDP port 7071, TTL 1: it never leaves the
// network segment) on every IPv4 interface; a coordinator started with --discover listens there
// and learns "address:port" of each worker of its cluster.
//
// A beacon is sealed with the cluster key (docs/wire-protocol.md, "Discovery"): 12 random
// bytes (the nonce) | ChaCha20-Poly1305 of {u16 worker port, u64 unix time in ms} under
// HKDF-SHA256(cluster key, info "hearth-beacon-v1"), with "HRTHBCN1" as associated data | tag.
// 38 bytes. A device without the key sees random bytes from an address (the port is not in
// clear); a beacon that does not open under the listener's key (another cluster's worker, noise,
// a forgery) or whose time is more than 30 s from the listener's clock (a stale replay) is
// ignored and counted. A beacon only says where to look: the coordinator then probes the worker
// with the authenticated handshake, as for a typed address.
//
// Why a beacon of hearth's own and not DNS-SD over mDNS (Avahi, Bonjour): mDNS needs a
// responder daemon on every node (avahi-daemon; absent in containers and minimal Raspberry Pi
// images) or a full mDNS implementation here, and DNS-SD records are public by design: every
// device on the network would read the service name, host and port. The beacon needs nothing
// but a UDP socket, works in network namespaces and containers, and tells a stranger nothing.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <span>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "transport/handshake.h"

namespace hearth::transport {

inline constexpr const char* kDiscoveryGroup = "239.255.70.70";
inline constexpr uint16_t kDiscoveryPort = 7071;
inline constexpr size_t kBeaconBytes = 38;

struct DiscoveryOptions {
  uint16_t port = kDiscoveryPort;  // the UDP port beacons go to
  // Where beacons go: empty, the multicast group on every IPv4 interface that is up and
  // multicast-capable (and loopback, for a coordinator on the same machine); tests name
  // unicast "host" targets instead.
  std::vector<std::string> targets;
  std::chrono::milliseconds interval{1000};
  std::chrono::seconds max_skew{30};  // a beacon's time against the listener's clock
};

// The 38 bytes of a beacon for `worker_port` at `unix_ms`, and what a listener makes of them
// (nullopt: not a beacon of this cluster, or stale). Exposed for tests.
std::vector<std::byte> seal_beacon(const ClusterKey& key, uint16_t worker_port, uint64_t unix_ms);
std::optional<uint16_t> open_beacon(const ClusterKey& key, std::span<const std::byte> bytes, uint64_t now_unix_ms,
                                    std::chrono::seconds max_skew);

// Sends beacons for a worker listening on `worker_port` until destroyed.
class Advertiser {
 public:
  Advertiser(const ClusterKey& key, uint16_t worker_port, DiscoveryOptions options = {});
  ~Advertiser();
  Advertiser(const Advertiser&) = delete;
  Advertiser& operator=(const Advertiser&) = delete;
  uint64_t sent() const { return sent_.load(); }

 private:
  void run();
  ClusterKey key_;
  uint16_t worker_port_;
  DiscoveryOptions options_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> sent_{0};
  std::mutex mutex_;
  std::condition_variable cv_;
  std::thread thread_;
};

// Listens for beacons of the cluster until destroyed; nodes() is every worker heard from, in
// the order first heard ("ip:port"), with when it was last heard.
class DiscoveryListener {
 public:
  explicit DiscoveryListener(const ClusterKey& key, DiscoveryOptions options = {});
  ~DiscoveryListener();
  DiscoveryListener(const DiscoveryListener&) = delete;
  DiscoveryListener& operator=(const DiscoveryListener&) = delete;

  std::vector<std::string> nodes() const;
  // Workers heard from within `recent` (a worker that stopped advertising drops out).
  std::vector<std::string> nodes_heard_within(std::chrono::seconds recent) const;
  // Waits until at least `n` workers were heard, or the timeout; returns them.
  std::vector<std::string> wait_for(size_t n, std::chrono::milliseconds timeout) const;
  uint64_t ignored() const { return ignored_.load(); }  // datagrams that were not our beacons

 private:
  void run();
  ClusterKey key_;
  DiscoveryOptions options_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> ignored_{0};
  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  std::vector<std::string> order_;
  std::map<std::string, std::chrono::steady_clock::time_point> last_heard_;
  std::thread thread_;
};

}  // namespace hearth::transport
