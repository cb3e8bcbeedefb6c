// TCP links: one persistent connection per pipeline edge, TCP_NODELAY, frames written with
// sendmsg + iovecs (header and payload segments, no copy) and read straight into the
// receiver's buffer. SIGPIPE-safe (MSG_NOSIGNAL). Timeouts are poll-based. Linux.
#pragma once

#include "transport/frame_cipher.h"
#include "transport/link.h"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct iovec;

namespace hearth::transport {

struct HostPort {
  std::string host;  // without brackets: "127.0.0.1", "::1", "node-2.lan"
  uint16_t port = 0;
};

// Parses "host:port", "[v6-address]:port" (port 0..65535). Throws hearth::Error naming the
// problem: missing port, bad port, unbracketed IPv6 address, empty host.
HostPort parse_host_port(std::string_view text);

// "host:port", or "[host]:port" when host contains ':'.
std::string format_host_port(const HostPort& address);

class TcpLink final : public Link {
 public:
  // Takes ownership of a connected stream socket `fd` (made non-blocking, TCP_NODELAY set).
  TcpLink(int fd, std::string peer, std::shared_ptr<const FrameLimits> limits);
  ~TcpLink() override;  // closes the link ("closed"), then the socket

  bool has_unread_input() const override;
  bool peer_hung_up() const override;
  bool start_encryption(const LinkKeys& keys) override;

 protected:
  void send_frame(MessageType type, std::span<const ByteSpan> segments, uint64_t payload_length,
                  Clock::time_point deadline) override;
  std::optional<Message> receive_frame(ByteBuffer& buffer, Clock::time_point deadline) override;
  bool writable_now() const override;
  void shutdown_transport() override;

 private:
  // Reads up to n bytes; 0 when the deadline passed first. Throws LinkError/LinkClosed.
  size_t read_some(std::byte* dst, size_t n, Clock::time_point deadline);

  const int fd_;
  // Send side (guarded by Link's send mutex).
  uint64_t send_sequence_ = 0;
  std::vector<iovec> iov_;
  std::unique_ptr<FrameCipher> send_cipher_;     // set by start_encryption()
  std::vector<std::byte> sealed_;                // an encrypted payload being sent
  std::unique_ptr<FrameCipher> receive_cipher_;
  // Receive side (one receiver at a time).
  uint64_t receive_sequence_ = 0;
  HeaderBytes header_bytes_{};
  size_t header_got_ = 0;
  FrameHeader header_;
  size_t payload_got_ = 0;
  const ByteBuffer* frame_buffer_ = nullptr;  // the buffer a partly received payload is in
};

// Listens on host:port. Binds to 127.0.0.1 unless told otherwise ("0.0.0.0" / "::" for every
// interface); port 0 picks a free port, reported by port().
class TcpListener {
 public:
  explicit TcpListener(std::shared_ptr<const FrameLimits> limits, const std::string& host = "127.0.0.1",
                       uint16_t port = 0);
  ~TcpListener();
  TcpListener(const TcpListener&) = delete;
  TcpListener& operator=(const TcpListener&) = delete;

  uint16_t port() const { return port_; }
  // The bound address, "127.0.0.1:40123" / "[::1]:40123".
  const std::string& address() const { return address_; }

  // Waits up to `timeout` for a peer; nullptr on timeout or once close() was called. The
  // returned link is not authenticated yet: run handshake() on it before trusting it.
  std::unique_ptr<TcpLink> accept(Timeout timeout = kNoTimeout);

  // Stops listening and wakes a blocked accept() (any thread, idempotent).
  void close();

 private:
  std::shared_ptr<const FrameLimits> limits_;
  int fd_ = -1;
  int wake_fd_ = -1;
  uint16_t port_ = 0;
  std::string address_;
};

// Connects to host:port (names resolved with getaddrinfo, IPv4 and IPv6; each address tried
// in turn until `timeout` is spent; name resolution itself is not bounded by it). Throws
// LinkError saying which address failed how (refused, unreachable, timed out).
std::unique_ptr<TcpLink> tcp_connect(const std::string& host, uint16_t port, Timeout timeout,
                                     std::shared_ptr<const FrameLimits> limits);
inline std::unique_ptr<TcpLink> tcp_connect(std::string_view host_port, Timeout timeout,
                                            std::shared_ptr<const FrameLimits> limits) {
  HostPort a = parse_host_port(host_port);
  return tcp_connect(a.host, a.port, timeout, std::move(limits));
}

}  // namespace hearth::transport
