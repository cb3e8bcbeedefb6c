// Discovery beacons (transport/discovery.h): sealed with the cluster key, so a listener learns
// the workers of its own cluster and ignores another cluster's, noise, altered and stale
// beacons; over real UDP sockets on loopback (unicast targets: multicast needs an interface
// that carries it, which tests/cluster/netns_e2e.sh has).
#include "transport_test_util.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <thread>

#include "transport/discovery.h"

namespace hearth::transport::test {
namespace {

uint16_t free_udp_port() {
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

constexpr uint64_t kNow = 1'800'000'000'000ull;

TEST(Discovery, BeaconsOpenOnlyUnderTheirKeyAndWhenFresh) {
  const ClusterKey a = key_a(), b = key_b();
  const std::vector<std::byte> beacon = seal_beacon(a, 7070, kNow);
  ASSERT_EQ(beacon.size(), kBeaconBytes);
  EXPECT_EQ(open_beacon(a, beacon, kNow + 1000, std::chrono::seconds(30)), 7070);
  EXPECT_EQ(open_beacon(b, beacon, kNow, std::chrono::seconds(30)), std::nullopt);                  // another cluster
  EXPECT_EQ(open_beacon(a, beacon, kNow + 31'000, std::chrono::seconds(30)), std::nullopt);         // stale (a replay)
  EXPECT_EQ(open_beacon(a, beacon, kNow - 31'000, std::chrono::seconds(30)), std::nullopt);         // from the future
  for (size_t i = 0; i < beacon.size(); ++i) {
    std::vector<std::byte> altered = beacon;
    altered[i] ^= std::byte{0x10};
    EXPECT_EQ(open_beacon(a, altered, kNow, std::chrono::seconds(30)), std::nullopt) << "byte " << i;
  }
  EXPECT_EQ(open_beacon(a, std::span(beacon).first(37), kNow, std::chrono::seconds(30)), std::nullopt);
  // A fresh nonce every time: two beacons of the same worker share no visible pattern.
  const std::vector<std::byte> again = seal_beacon(a, 7070, kNow);
  size_t same = 0;
  for (size_t i = 0; i < beacon.size(); ++i) same += beacon[i] == again[i];
  EXPECT_LT(same, 8u);
}

TEST(Discovery, AListenerFindsItsClustersWorkersAndIgnoresOthers) {
  const uint16_t port = free_udp_port();
  DiscoveryOptions o;
  o.port = port;
  o.targets = {"127.0.0.1"};
  o.interval = std::chrono::milliseconds(50);
  DiscoveryListener listener(key_a(), o);
  Advertiser ours(key_a(), 7101, o), also_ours(key_a(), 7102, o), theirs(key_b(), 7103, o);
  const std::vector<std::string> found = listener.wait_for(2, std::chrono::seconds(10));
  ASSERT_EQ(found.size(), 2u);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // more beacons, theirs among them
  std::vector<std::string> nodes = listener.nodes();
  std::sort(nodes.begin(), nodes.end());
  EXPECT_EQ(nodes, (std::vector<std::string>{"127.0.0.1:7101", "127.0.0.1:7102"}));
  EXPECT_GT(listener.ignored(), 0u) << "the other cluster's beacons were heard and ignored";
  EXPECT_GT(theirs.sent(), 0u);
  EXPECT_EQ(listener.nodes_heard_within(std::chrono::seconds(5)).size(), 2u);
}

}  // namespace
}  // namespace hearth::transport::test
