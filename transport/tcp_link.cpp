#include "transport/tcp_link.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <new>

namespace hearth::transport {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

// Waits for `events` on fd until `deadline`; true when ready (or in error/hang-up, which the
// next call reports), false when the deadline passed.
bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    int ms = -1;
    if (deadline != Clock::time_point::max()) {
      const auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) {
        ms = 0;
      } else {
        // Round up so a wait never ends just before the deadline and spins.
        const auto left_ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
        ms = static_cast<int>(std::min<int64_t>(left_ms, INT_MAX));
      }
    }
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, ms);
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) throw LinkError(fmt::format("poll: {}", errno_text(errno)));
    if (r == 0 && ms == 0) return false;
    if (r == 0 && Clock::now() >= deadline) return false;
  }
}

void set_nonblocking_nodelay(int fd) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    throw LinkError(fmt::format("fcntl(O_NONBLOCK): {}", errno_text(errno)));
  }
  int one = 1;
  // Unix-domain sockets (tests) have no TCP_NODELAY; ignore that one failure.
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 && errno != EOPNOTSUPP &&
      errno != ENOPROTOOPT) {
    throw LinkError(fmt::format("setsockopt(TCP_NODELAY): {}", errno_text(errno)));
  }
}

std::string format_sockaddr(const sockaddr* sa, socklen_t len) {
  char host[NI_MAXHOST];
  char serv[NI_MAXSERV];
  if (::getnameinfo(sa, len, host, sizeof host, serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "unknown address";
  }
  if (sa->sa_family == AF_INET6) return fmt::format("[{}]:{}", host, serv);
  return fmt::format("{}:{}", host, serv);
}

std::string peer_name(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "unknown peer";
  return format_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
}

struct AddrInfoDeleter {
  void operator()(addrinfo* a) const { ::freeaddrinfo(a); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

AddrInfoPtr resolve(const std::string& host, uint16_t port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* result = nullptr;
  const std::string service = std::to_string(port);
  const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &result);
  if (rc != 0) {
    const std::string why = rc == EAI_SYSTEM ? errno_text(errno) : ::gai_strerror(rc);
    throw LinkError(fmt::format("cannot resolve '{}': {}", host, why));
  }
  return AddrInfoPtr(result);
}

}  // namespace

// ---- addresses -------------------------------------------------------------------------------

HostPort parse_host_port(std::string_view text) {
  auto fail = [&](std::string_view why) -> HostPort {
    throw Error(fmt::format("invalid address '{}': {} (expected host:port or [ipv6]:port)", printable(text), why));
  };
  if (text.empty()) return fail("empty");
  std::string_view host;
  std::string_view port;
  if (text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return fail("missing ']' after the IPv6 address");
    host = text.substr(1, close - 1);
    if (close + 1 >= text.size() || text[close + 1] != ':') return fail("missing ':port' after ']'");
    port = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return fail("missing ':port'");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return fail("an IPv6 address needs brackets, as in [::1]:5000");
  }
  if (host.empty()) return fail("empty host");
  if (port.empty()) return fail("empty port");
  if (port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return fail("the port is not a number from 0 to 65535");
  }
  const unsigned long value = std::stoul(std::string(port));
  if (value > 65535) return fail("the port is not a number from 0 to 65535");
  return HostPort{std::string(host), static_cast<uint16_t>(value)};
}

std::string format_host_port(const HostPort& a) {
  if (a.host.find(':') != std::string::npos) return fmt::format("[{}]:{}", a.host, a.port);
  return fmt::format("{}:{}", a.host, a.port);
}

// ---- TcpLink ---------------------------------------------------------------------------------

TcpLink::TcpLink(int fd, std::string peer, std::shared_ptr<const FrameLimits> limits)
    : Link(std::move(peer), std::move(limits)), fd_(fd) {
  HEARTH_CHECK(fd >= 0);
  try {
    set_nonblocking_nodelay(fd_);
  } catch (...) {
    ::close(fd_);
    throw;
  }
  iov_.reserve(16);
}

TcpLink::~TcpLink() {
  if (!is_closed()) close("closed");
  ::close(fd_);
}

void TcpLink::shutdown_transport() { ::shutdown(fd_, SHUT_RDWR); }

bool TcpLink::writable_now() const {
  pollfd p{fd_, POLLOUT, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLOUT) && !(p.revents & (POLLERR | POLLHUP));
}

bool TcpLink::has_unread_input() const {
  int n = 0;
  return ::ioctl(fd_, FIONREAD, &n) == 0 && n > 0;
}

bool TcpLink::peer_hung_up() const {
  pollfd p{fd_, POLLIN | POLLRDHUP, 0};
  if (::poll(&p, 1, 0) != 1) return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

bool TcpLink::start_encryption(const LinkKeys& keys) {
  send_cipher_ = std::make_unique<FrameCipher>(keys.send);
  receive_cipher_ = std::make_unique<FrameCipher>(keys.receive);
  mark_encrypted();
  return true;
}

void TcpLink::send_frame(MessageType type, std::span<const ByteSpan> segments, uint64_t payload_length,
                         Clock::time_point deadline) {
  iov_.clear();
  HeaderBytes header;
  if (send_cipher_) {
    // The payload goes out as ciphertext and tag; the header (with the tag counted in the
    // length) is the associated data.
    payload_length += kFrameTagLength;
    header = encode_frame_header({type, payload_length, send_sequence_, kFrameEncrypted});
    send_cipher_->seal(header, send_sequence_, segments, sealed_);
    iov_.push_back({const_cast<std::byte*>(header.data()), header.size()});
    iov_.push_back({sealed_.data(), sealed_.size()});
  } else {
    header = encode_frame_header({type, payload_length, send_sequence_});
    iov_.push_back({const_cast<std::byte*>(header.data()), header.size()});
    for (ByteSpan s : segments) {
      if (!s.empty()) iov_.push_back({const_cast<std::byte*>(s.data()), s.size()});
    }
  }
  const uint64_t total = kFrameHeaderSize + payload_length;
  uint64_t written = 0;
  size_t first = 0;  // iov_[first] is the first segment not fully written
  while (first < iov_.size()) {
    msghdr mh{};
    mh.msg_iov = &iov_[first];
    mh.msg_iovlen = std::min<size_t>(iov_.size() - first, IOV_MAX);
    const ssize_t r = ::sendmsg(fd_, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!wait_fd(fd_, POLLOUT, deadline)) {
          throw LinkTimeout(fmt::format("send timed out with {} of {} bytes of the frame written (peer not reading?)",
                                        written, total));
        }
        continue;
      }
      if (errno == EPIPE || errno == ECONNRESET) throw LinkClosed("the peer closed the connection");
      throw LinkError(fmt::format("send: {}", errno_text(errno)));
    }
    written += static_cast<uint64_t>(r);
    size_t left = static_cast<size_t>(r);
    while (first < iov_.size() && left >= iov_[first].iov_len) {
      left -= iov_[first].iov_len;
      ++first;
    }
    if (left > 0) {
      iov_[first].iov_base = static_cast<char*>(iov_[first].iov_base) + left;
      iov_[first].iov_len -= left;
    }
  }
  ++send_sequence_;
}

size_t TcpLink::read_some(std::byte* dst, size_t n, Clock::time_point deadline) {
  for (;;) {
    const ssize_t r = ::recv(fd_, dst, n, MSG_DONTWAIT);
    if (r > 0) {
      note_received();
      return static_cast<size_t>(r);
    }
    if (r == 0) {
      if (header_got_ == 0) throw LinkClosed("the peer closed the connection");
      throw LinkClosed("the peer closed the connection in the middle of a frame");
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_fd(fd_, POLLIN, deadline)) return 0;
      continue;
    }
    if (errno == ECONNRESET) throw LinkClosed("the peer reset the connection");
    throw LinkError(fmt::format("receive: {}", errno_text(errno)));
  }
}

std::optional<Message> TcpLink::receive_frame(ByteBuffer& buffer, Clock::time_point deadline) {
  if (header_got_ == kFrameHeaderSize) {
    HEARTH_CHECK(frame_buffer_ == &buffer, "receive() continued a partly received frame with another buffer");
  }
  while (header_got_ < kFrameHeaderSize) {
    const size_t n = read_some(&header_bytes_[header_got_], kFrameHeaderSize - header_got_, deadline);
    if (n == 0) return std::nullopt;
    header_got_ += n;
    if (header_got_ == kFrameHeaderSize) {
      // Every field is checked before the payload gets a single byte of memory.
      header_ = decode_frame_header(header_bytes_, limits(), receive_sequence_, receive_cipher_ != nullptr);
      try {
        buffer.resize_for_overwrite(header_.payload_length);
      } catch (const std::bad_alloc&) {
        throw LinkError(fmt::format("out of memory for a {} payload of {} bytes", limits().describe(header_.type),
                                    header_.payload_length));
      }
      frame_buffer_ = &buffer;
      payload_got_ = 0;
    }
  }
  while (payload_got_ < header_.payload_length) {
    const size_t n = read_some(buffer.data() + payload_got_, header_.payload_length - payload_got_, deadline);
    if (n == 0) return std::nullopt;
    payload_got_ += n;
  }
  header_got_ = 0;
  frame_buffer_ = nullptr;
  if (receive_cipher_) {
    const std::span<std::byte> payload(buffer.data(), header_.payload_length);
    if (!receive_cipher_->open(header_bytes_, receive_sequence_, payload)) {
      throw FrameError(fmt::format("{} frame {} failed authentication: altered in transit, or not from the peer that "
                                   "holds this link's key",
                                   limits().describe(header_.type), receive_sequence_));
    }
    ++receive_sequence_;
    return Message{header_.type, buffer.bytes().first(header_.payload_length - kFrameTagLength)};
  }
  ++receive_sequence_;
  return Message{header_.type, buffer.bytes()};
}

// ---- TcpListener -----------------------------------------------------------------------------

TcpListener::TcpListener(std::shared_ptr<const FrameLimits> limits, const std::string& host, uint16_t port)
    : limits_(std::move(limits)) {
  HEARTH_CHECK(limits_ != nullptr);
  const std::string where = format_host_port({host, port});
  AddrInfoPtr addrs = resolve(host, port, true);
  std::string errors;
  for (addrinfo* a = addrs.get(); a; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) {
      errors += fmt::format("; socket: {}", errno_text(errno));
      continue;
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, SOMAXCONN) != 0) {
      errors += fmt::format("; {}: {}", format_sockaddr(a->ai_addr, a->ai_addrlen), errno_text(errno));
      ::close(fd);
      continue;
    }
    fd_ = fd;
    break;
  }
  if (fd_ < 0) throw LinkError(fmt::format("cannot listen on {}{}", where, errors));

  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  address_ = format_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
  port_ = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port)
                                   : ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    ::close(fd_);
    throw LinkError(fmt::format("eventfd: {}", errno_text(errno)));
  }
}

TcpListener::~TcpListener() {
  ::close(fd_);
  ::close(wake_fd_);
}

void TcpListener::close() {
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t r = ::write(wake_fd_, &one, sizeof one);
}

std::unique_ptr<TcpLink> TcpListener::accept(Timeout timeout) {
  const auto deadline = deadline_after(timeout);
  for (;;) {
    pollfd p[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int ms = -1;
    if (deadline != Clock::time_point::max()) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
      ms = static_cast<int>(std::clamp<int64_t>(left, 0, INT_MAX));
    }
    const int r = ::poll(p, 2, ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw LinkError(fmt::format("poll on listener {}: {}", address_, errno_text(errno)));
    }
    if (p[1].revents) return nullptr;  // close() was called
    if (r == 0) {
      if (Clock::now() >= deadline) return nullptr;
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    const int fd = ::accept4(fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      // The connection went away before we took it, or a signal: wait for the next one.
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED || errno == EPROTO) {
        continue;
      }
      throw LinkError(fmt::format("accept on {}: {}", address_, errno_text(errno)));
    }
    return std::make_unique<TcpLink>(fd, format_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len), limits_);
  }
}

// ---- tcp_connect -----------------------------------------------------------------------------

std::unique_ptr<TcpLink> tcp_connect(const std::string& host, uint16_t port, Timeout timeout,
                                     std::shared_ptr<const FrameLimits> limits) {
  const std::string where = format_host_port({host, port});
  if (port == 0) throw LinkError(fmt::format("cannot connect to {}: port 0", where));
  const auto deadline = deadline_after(timeout);
  AddrInfoPtr addrs = resolve(host, port, false);
  std::string errors;
  for (addrinfo* a = addrs.get(); a; a = a->ai_next) {
    const std::string address = format_sockaddr(a->ai_addr, a->ai_addrlen);
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) {
      errors += fmt::format("; {}: socket: {}", address, errno_text(errno));
      continue;
    }
    int err = 0;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS || err == EINTR) {
        if (!wait_fd(fd, POLLOUT, deadline)) {
          ::close(fd);
          errors += fmt::format("; {}: timed out", address);
          break;
        }
        socklen_t len = sizeof err;
        if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      }
    }
    if (err != 0) {
      ::close(fd);
      const char* hint = err == ECONNREFUSED ? " (is a hearth node listening there?)" : "";
      errors += fmt::format("; {}: {}{}", address, errno_text(err), hint);
      if (Clock::now() >= deadline) break;
      continue;
    }
    return std::make_unique<TcpLink>(fd, peer_name(fd), std::move(limits));
  }
  throw LinkError(fmt::format("cannot connect to {}{}", where, errors));
}

}  // namespace hearth::transport
