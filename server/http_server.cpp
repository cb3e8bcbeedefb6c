#include "server/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace hearth::server {

namespace {

#ifdef MSG_NOSIGNAL
constexpr int kSendFlags = MSG_NOSIGNAL;  // a client that went away: EPIPE, not SIGPIPE
#else
constexpr int kSendFlags = 0;
#endif

int to_ms(time_t sec, time_t usec) {
  const long long ms = static_cast<long long>(sec) * 1000 + static_cast<long long>(usec) / 1000;
  return static_cast<int>(std::clamp<long long>(ms, 0, std::numeric_limits<int>::max()));
}

// poll() that resumes after a signal with the time left.
int poll_retrying(pollfd* fds, nfds_t n, int timeout_ms) {
  for (;;) {
    const int r = ::poll(fds, n, timeout_ms);
    if (r >= 0 || errno != EINTR) return r;
  }
}

void address_of(const sockaddr_storage& addr, socklen_t len, std::string& ip, int& port) {
  char host[NI_MAXHOST] = {};
  char serv[NI_MAXSERV] = {};
  if (::getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host, sizeof(host), serv, sizeof(serv),
                    NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
    ip = host;
    port = std::atoi(serv);
  }
}

}  // namespace

// One request's view of a connection, as httplib's own SocketStream: reads buffered (the request
// line and headers are read a byte at a time), each read and write bounded by the server's
// timeouts; a write first checks that the client is still there, so that a stream to a client
// that went away fails on its next chunk.
class HttpServer::Connection : public httplib::Stream {
 public:
  Connection(const HttpServer& server, socket_t sock, time_t read_sec, time_t read_usec, time_t write_sec,
             time_t write_usec)
      : server_(server), sock_(sock), read_ms_(to_ms(read_sec, read_usec)), write_ms_(to_ms(write_sec, write_usec)) {}

  bool is_readable() const override { return server_.wait_readable(sock_, read_ms_); }

  bool is_writable() const override {
    pollfd p{sock_, POLLOUT, 0};
    if (poll_retrying(&p, 1, write_ms_) <= 0 || (p.revents & (POLLERR | POLLNVAL)) != 0) return false;
    return alive();
  }

  ssize_t read(char* ptr, size_t size) override {
    if (buffered_ < filled_) {
      const size_t n = std::min(size, filled_ - buffered_);
      std::memcpy(ptr, buffer_ + buffered_, n);
      buffered_ += n;
      return static_cast<ssize_t>(n);
    }
    if (!is_readable()) return -1;
    if (size >= sizeof(buffer_)) return recv_retrying(ptr, size);
    const ssize_t got = recv_retrying(buffer_, sizeof(buffer_));
    if (got <= 0) return got;
    filled_ = static_cast<size_t>(got);
    const size_t n = std::min(size, filled_);
    std::memcpy(ptr, buffer_, n);
    buffered_ = n;
    return static_cast<ssize_t>(n);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    for (;;) {
      const ssize_t n = ::send(sock_, ptr, size, kSendFlags);
      if (n >= 0 || errno != EINTR) return n;
    }
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    if (::getpeername(sock_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) address_of(addr, len, ip, port);
  }

  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    if (::getsockname(sock_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) address_of(addr, len, ip, port);
  }

  socket_t socket() const override { return sock_; }

 private:
  ssize_t recv_retrying(char* ptr, size_t size) const {
    for (;;) {
      const ssize_t n = ::recv(sock_, ptr, size, 0);
      if (n >= 0 || errno != EINTR) return n;
    }
  }

  // Nothing to read, or something (a pipelined request): alive; end of stream or an error: gone.
  bool alive() const {
    pollfd p{sock_, POLLIN, 0};
    const int r = poll_retrying(&p, 1, 0);
    if (r == 0) return true;
    if (r < 0 || (p.revents & POLLNVAL) != 0) return false;
    char c;
    for (;;) {
      const ssize_t n = ::recv(sock_, &c, 1, MSG_PEEK);
      if (n >= 0 || errno != EINTR) return n > 0;
    }
  }

  const HttpServer& server_;
  socket_t sock_;
  int read_ms_;
  int write_ms_;
  char buffer_[4096];
  size_t buffered_ = 0;  // buffer_[buffered_, filled_) not yet returned
  size_t filled_ = 0;
};

HttpServer::HttpServer() {
  if (::pipe(stop_pipe_) != 0) throw Error(fmt::format("cannot create the server's stop pipe: {}", std::strerror(errno)));
  for (int fd : stop_pipe_) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
}

HttpServer::~HttpServer() {
  shutdown();
  for (int fd : stop_pipe_) ::close(fd);
}

void HttpServer::shutdown() {
  if (!stopping_.exchange(true)) {
    const char byte = 1;
    while (::write(stop_pipe_[1], &byte, 1) < 0 && errno == EINTR) {
    }
  }
  if (is_running()) stop();
}

bool HttpServer::wait_readable(socket_t sock, int timeout_ms) const {
  pollfd p[2] = {{sock, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
  if (poll_retrying(p, 2, timeout_ms) <= 0) return false;
  // Data (or a hang-up, which the read then sees) wins over the stop only while not stopping:
  // once stopping, a connection with no complete request yet is closed.
  if (p[1].revents != 0) return false;
  return (p[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}

bool HttpServer::process_and_close_socket(socket_t sock) {
  // As httplib's loop: up to keep_alive_max_count_ requests, each awaited for at most the
  // keep-alive timeout; the last one is answered with "Connection: close".
  bool ok = false;
  for (size_t left = keep_alive_max_count_; left > 0 && !stopping_.load(); --left) {
    if (!wait_readable(sock, to_ms(keep_alive_timeout_sec_, 0))) break;
    Connection connection(*this, sock, read_timeout_sec_, read_timeout_usec_, write_timeout_sec_, write_timeout_usec_);
    bool closed = false;
    ok = process_request(connection, /*close_connection=*/left == 1 || stopping_.load(), closed, nullptr);
    if (!ok || closed) break;
  }
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  return ok;
}

}  // namespace hearth::server
