#include "transport/discovery.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <fmt/format.h>

#include <cstring>

#include "core/error.h"
#include "transport/frame.h"
#include "transport/frame_cipher.h"
#include "transport/log.h"

namespace hearth::transport {
namespace {

constexpr std::string_view kBeaconAad = "HRTHBCN1";
constexpr size_t kBeaconNonce = 12, kBeaconPlain = 10;

uint64_t unix_ms_now() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

LinkKey beacon_key(const ClusterKey& key) { return derive_cluster_subkey(key, {}, "hearth-beacon-v1"); }

// ChaCha20-Poly1305 of `in` into `out` (encrypt) or back (decrypt, false when the tag fails).
bool aead(bool encrypt, const LinkKey& key, const unsigned char* nonce, const unsigned char* in, size_t n,
          unsigned char* out, unsigned char* tag) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int len = 0;
  const auto* k = reinterpret_cast<const unsigned char*>(key.data());
  const auto* aad = reinterpret_cast<const unsigned char*>(kBeaconAad.data());
  bool ok = ctx != nullptr;
  if (encrypt) {
    ok = ok && EVP_EncryptInit_ex(ctx, EVP_chacha20_poly1305(), nullptr, k, nonce) == 1 &&
         EVP_EncryptUpdate(ctx, nullptr, &len, aad, static_cast<int>(kBeaconAad.size())) == 1 &&
         EVP_EncryptUpdate(ctx, out, &len, in, static_cast<int>(n)) == 1 && EVP_EncryptFinal_ex(ctx, out + len, &len) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, tag) == 1;
  } else {
    ok = ok && EVP_DecryptInit_ex(ctx, EVP_chacha20_poly1305(), nullptr, k, nonce) == 1 &&
         EVP_DecryptUpdate(ctx, nullptr, &len, aad, static_cast<int>(kBeaconAad.size())) == 1 &&
         EVP_DecryptUpdate(ctx, out, &len, in, static_cast<int>(n)) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, tag) == 1 && EVP_DecryptFinal_ex(ctx, out + len, &len) == 1;
  }
  EVP_CIPHER_CTX_free(ctx);
  return ok;
}

// The IPv4 addresses of the interfaces that are up and can carry multicast (or are loopback).
std::vector<in_addr> multicast_interfaces() {
  std::vector<in_addr> out;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return out;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP)) continue;
    if (!(i->ifa_flags & (IFF_MULTICAST | IFF_LOOPBACK))) continue;
    out.push_back(reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr);
  }
  ::freeifaddrs(list);
  return out;
}

sockaddr_in ipv4(const std::string& host, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) throw Error(fmt::format("discovery: '{}' is not an IPv4 address", host));
  return a;
}

}  // namespace

std::vector<std::byte> seal_beacon(const ClusterKey& key, uint16_t worker_port, uint64_t unix_ms) {
  std::vector<std::byte> out(kBeaconBytes);
  auto* p = reinterpret_cast<unsigned char*>(out.data());
  HEARTH_CHECK(RAND_bytes(p, kBeaconNonce) == 1, "RAND_bytes failed");
  unsigned char plain[kBeaconPlain];
  std::byte tmp[kBeaconPlain];
  store_le(tmp, worker_port, 2);
  store_le(tmp + 2, unix_ms, 8);
  std::memcpy(plain, tmp, sizeof plain);
  HEARTH_CHECK(aead(true, beacon_key(key), p, plain, kBeaconPlain, p + kBeaconNonce, p + kBeaconNonce + kBeaconPlain),
               "beacon encryption failed");
  return out;
}

std::optional<uint16_t> open_beacon(const ClusterKey& key, std::span<const std::byte> bytes, uint64_t now_unix_ms,
                                    std::chrono::seconds max_skew) {
  if (bytes.size() != kBeaconBytes) return std::nullopt;
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  unsigned char tag[16], plain[kBeaconPlain];
  std::memcpy(tag, p + kBeaconNonce + kBeaconPlain, sizeof tag);
  if (!aead(false, beacon_key(key), p, p + kBeaconNonce, kBeaconPlain, plain, tag)) return std::nullopt;
  std::byte b[kBeaconPlain];
  std::memcpy(b, plain, sizeof b);
  const uint64_t port = load_le(b, 2), at = load_le(b + 2, 8);
  const uint64_t skew = at > now_unix_ms ? at - now_unix_ms : now_unix_ms - at;
  if (port == 0 || skew > static_cast<uint64_t>(std::chrono::milliseconds(max_skew).count())) return std::nullopt;
  return static_cast<uint16_t>(port);
}

Advertiser::Advertiser(const ClusterKey& key, uint16_t worker_port, DiscoveryOptions options)
    : key_(key), worker_port_(worker_port), options_(std::move(options)) {
  thread_ = std::thread([this] { run(); });
}

Advertiser::~Advertiser() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Advertiser::run() {
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    log_line(fmt::format("discovery: cannot open a UDP socket: {}", std::strerror(errno)));
    return;
  }
  const unsigned char ttl = 1, loop = 1;  // this network segment only; seen by listeners on this host too
  ::setsockopt(fd, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl);
  ::setsockopt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop);
  std::unique_lock lock(mutex_);
  while (!stop_) {
    const std::vector<std::byte> beacon = seal_beacon(key_, worker_port_, unix_ms_now());
    auto send_to = [&](const sockaddr_in& to) {
      if (::sendto(fd, beacon.data(), beacon.size(), 0, reinterpret_cast<const sockaddr*>(&to), sizeof to) ==
          static_cast<ssize_t>(beacon.size())) {
        ++sent_;
      }
    };
    if (!options_.targets.empty()) {
      for (const std::string& t : options_.targets) send_to(ipv4(t, options_.port));
    } else {
      const sockaddr_in group = ipv4(kDiscoveryGroup, options_.port);
      for (const in_addr& itf : multicast_interfaces()) {
        ::setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &itf, sizeof itf);
        send_to(group);
      }
    }
    cv_.wait_for(lock, options_.interval, [this] { return stop_.load(); });
  }
  ::close(fd);
}

DiscoveryListener::DiscoveryListener(const ClusterKey& key, DiscoveryOptions options)
    : key_(key), options_(std::move(options)) {
  fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw Error(fmt::format("discovery: cannot open a UDP socket: {}", std::strerror(errno)));
  const int one = 1;
  ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  ::setsockopt(fd_, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  sockaddr_in any{};
  any.sin_family = AF_INET;
  any.sin_port = htons(options_.port);
  any.sin_addr.s_addr = htonl(INADDR_ANY);
  if (::bind(fd_, reinterpret_cast<sockaddr*>(&any), sizeof any) != 0) {
    const int err = errno;
    ::close(fd_);
    throw Error(fmt::format("discovery: cannot listen on UDP port {}: {}", options_.port, std::strerror(err)));
  }
  if (options_.targets.empty()) {
    ip_mreq m{};
    m.imr_multiaddr = ipv4(kDiscoveryGroup, 0).sin_addr;
    for (const in_addr& itf : multicast_interfaces()) {
      m.imr_interface = itf;
      ::setsockopt(fd_, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof m);  // some interfaces refuse: fine
    }
  }
  thread_ = std::thread([this] { run(); });
}

DiscoveryListener::~DiscoveryListener() {
  stop_ = true;
  thread_.join();
  ::close(fd_);
}

void DiscoveryListener::run() {
  std::byte buffer[512];
  while (!stop_) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 200) != 1) continue;
    sockaddr_in from{};
    socklen_t len = sizeof from;
    const ssize_t n = ::recvfrom(fd_, buffer, sizeof buffer, 0, reinterpret_cast<sockaddr*>(&from), &len);
    if (n <= 0) continue;
    const std::optional<uint16_t> port =
        open_beacon(key_, std::span<const std::byte>(buffer, static_cast<size_t>(n)), unix_ms_now(), options_.max_skew);
    if (!port) {
      ++ignored_;
      continue;
    }
    char host[INET_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET, &from.sin_addr, host, sizeof host);
    const std::string node = fmt::format("{}:{}", host, *port);
    {
      std::lock_guard lock(mutex_);
      if (!last_heard_.contains(node)) {
        order_.push_back(node);
        log_line(fmt::format("discovery: found worker {}", node));
      }
      last_heard_[node] = std::chrono::steady_clock::now();
    }
    cv_.notify_all();
  }
}

std::vector<std::string> DiscoveryListener::nodes() const {
  std::lock_guard lock(mutex_);
  return order_;
}

std::vector<std::string> DiscoveryListener::nodes_heard_within(std::chrono::seconds recent) const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> out;
  const auto since = std::chrono::steady_clock::now() - recent;
  for (const std::string& n : order_) {
    if (last_heard_.at(n) >= since) out.push_back(n);
  }
  return out;
}

std::vector<std::string> DiscoveryListener::wait_for(size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  cv_.wait_for(lock, timeout, [&] { return order_.size() >= n; });
  return order_;
}

}  // namespace hearth::transport
