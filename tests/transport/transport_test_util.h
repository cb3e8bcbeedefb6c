// Helpers shared by the transport tests: limits with test message types, connected pairs,
// raw sockets that write exactly the bytes a test wants (including wrong ones).
#pragma once

#include "transport/handshake.h"
#include "transport/local_link.h"
#include "transport/log.h"
#include "transport/tcp_link.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace hearth::transport::test {

inline constexpr MessageType kData = 256;    // up to 128 MiB
inline constexpr MessageType kSmall = 257;   // up to 1 KiB
inline constexpr uint64_t kDataLimit = 128ull << 20;

inline std::shared_ptr<const FrameLimits> test_limits() {
  auto limits = std::make_shared<FrameLimits>();
  limits->allow(kData, kDataLimit, "data").allow(kSmall, 1024, "small");
  return limits;
}

inline ByteSpan as_bytes(std::string_view s) { return {reinterpret_cast<const std::byte*>(s.data()), s.size()}; }
inline std::string as_string(ByteSpan b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

inline ClusterKey key_a() { return ClusterKey(std::vector<std::byte>(32, std::byte{0x5a})); }
inline ClusterKey key_b() { return ClusterKey(std::vector<std::byte>(32, std::byte{0xa5})); }

struct LinkPair {
  std::unique_ptr<Link> a;  // the connecting side (initiator)
  std::unique_ptr<Link> b;  // the accepting side (responder)
};

inline LinkPair tcp_pair(std::shared_ptr<const FrameLimits> limits = test_limits()) {
  TcpListener listener(limits);
  LinkPair p;
  p.a = tcp_connect("127.0.0.1", listener.port(), Timeout(10000), limits);
  p.b = listener.accept(Timeout(10000));
  EXPECT_NE(p.b, nullptr);
  return p;
}

inline LinkPair local_pair(std::shared_ptr<const FrameLimits> limits = test_limits(), size_t capacity = 64) {
  LocalLinkPair l = make_local_link_pair(std::move(limits), "test", capacity);
  return LinkPair{std::move(l.a), std::move(l.b)};
}

// Collects transport log lines (instead of stderr) while alive.
class LogCapture {
 public:
  LogCapture() {
    set_log_sink([this](std::string_view line) {
      std::lock_guard lock(mutex_);
      lines_.emplace_back(line);
    });
  }
  ~LogCapture() { set_log_sink({}); }
  std::vector<std::string> lines() const {
    std::lock_guard lock(mutex_);
    return lines_;
  }
  bool contains(std::string_view text) const {
    std::lock_guard lock(mutex_);
    for (const auto& l : lines_) {
      if (l.find(text) != std::string::npos) return true;
    }
    return false;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::string> lines_;
};

// A whole frame as bytes: header (with the given fields) + payload.
// noinline: GCC 12 at -O3 warns about impossible sizes when this is inlined into callers.
[[gnu::noinline]] inline std::vector<std::byte> frame_bytes(MessageType type, uint64_t sequence, ByteSpan payload) {
  const HeaderBytes h = encode_frame_header({type, payload.size(), sequence});
  std::vector<std::byte> out(h.size() + payload.size());
  std::memcpy(out.data(), h.data(), h.size());
  if (!payload.empty()) std::memcpy(out.data() + h.size(), payload.data(), payload.size());
  return out;
}

// A blocking client socket with 10 s send/receive timeouts (a test never hangs forever).
class RawSocket {
 public:
  explicit RawSocket(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    HEARTH_CHECK(fd_ >= 0);
    timeval tv{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawSocket() {
    if (abortive_close_) {
      // Reset instead of FIN: thousands of fuzz connections leave no TIME_WAIT behind.
      linger l{1, 0};
      ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    ::close(fd_);
  }
  void set_abortive_close() { abortive_close_ = true; }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  bool connected() const { return connected_; }
  int fd() const { return fd_; }

  // False when the peer closed or reset the connection first.
  bool write(ByteSpan bytes) {
    size_t at = 0;
    while (at < bytes.size()) {
      const ssize_t r = ::send(fd_, bytes.data() + at, bytes.size() - at, MSG_NOSIGNAL);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      at += static_cast<size_t>(r);
    }
    return true;
  }
  bool read_exact(std::byte* dst, size_t n) {
    size_t at = 0;
    while (at < n) {
      const ssize_t r = ::recv(fd_, dst + at, n - at, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      at += static_cast<size_t>(r);
    }
    return true;
  }
  // Reads one frame (header unchecked beyond its length); false at EOF/error/timeout.
  bool read_frame(FrameHeader& header, std::vector<std::byte>& payload) {
    HeaderBytes h;
    if (!read_exact(h.data(), h.size())) return false;
    header.type = static_cast<MessageType>(load_le(&h[6], 2));
    header.payload_length = load_le(&h[16], 8);
    header.sequence = load_le(&h[24], 8);
    if (header.payload_length > (1u << 20)) return false;
    payload.resize(header.payload_length);
    return read_exact(payload.data(), payload.size());
  }
  // Reads until the peer closes (true) or 10 s pass / an error other than reset (false).
  bool read_until_eof(std::vector<std::byte>* received = nullptr) {
    std::byte chunk[4096];
    for (;;) {
      const ssize_t r = ::recv(fd_, chunk, sizeof chunk, 0);
      if (r == 0) return true;
      if (r < 0) {
        if (errno == EINTR) continue;
        return errno == ECONNRESET;
      }
      if (received) received->insert(received->end(), chunk, chunk + r);
    }
  }
  void shutdown_write() { ::shutdown(fd_, SHUT_WR); }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool abortive_close_ = false;
};

// Hello payload as handshake() writes it.
inline std::vector<std::byte> hello_payload(uint16_t version, Role role, ByteSpan nonce, std::string_view caps) {
  std::vector<std::byte> out(kHelloFixedBytes + caps.size());
  store_le(&out[0], version, 2);
  out[2] = static_cast<std::byte>(role);
  std::memcpy(&out[4], nonce.data(), 32);
  store_le(&out[36], caps.size(), 4);
  if (!caps.empty()) std::memcpy(&out[40], caps.data(), caps.size());
  return out;
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace hearth::transport::test
