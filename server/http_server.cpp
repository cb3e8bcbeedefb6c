#include "server/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cerrno>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace hearth::server {

using Clock = std::chrono::steady_clock;

namespace {

// A head longer than this is handed to httplib as it is, which refuses it (its own limits on the
// request line and on each header are 8 KiB).
constexpr size_t kMaxHeadBytes = 64 * 1024;

// httplib runs every accepted connection through its task queue: this one runs it at once, on
// the listener thread (HttpServer::process_and_close_socket only hands it to the poller).
class InlineTaskQueue : public httplib::TaskQueue {
 public:
  void enqueue(std::function<void()> fn) override { fn(); }
  void shutdown() override {}
};

// Whether `pending` holds a whole request head (up to its blank line); `scanned` is how much of
// it earlier calls found without one.
bool head_complete(const std::string& pending, size_t& scanned) {
  const size_t from = scanned >= 3 ? scanned - 3 : 0;
  const bool found = pending.find("\r\n\r\n", from) != std::string::npos || pending.find("\n\n", from) != std::string::npos;
  scanned = pending.size();
  return found;
}

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
// line and headers are read a byte at a time; the buffer starts with what the poller read), each read and write bounded by the server's
// timeouts; a write first checks that the client is still there, so that a stream to a client
// that went away fails on its next chunk.
class HttpServer::Connection : public httplib::Stream {
 public:
  // `pending`: bytes the poller already read from the socket (at least the request's head).
  Connection(const HttpServer& server, socket_t sock, std::string pending, time_t read_sec, time_t read_usec,
             time_t write_sec, time_t write_usec)
      : server_(server),
        sock_(sock),
        read_ms_(to_ms(read_sec, read_usec)),
        write_ms_(to_ms(write_sec, write_usec)),
        buffer_(std::move(pending)) {}

  // What was read from the socket and not parsed: the start of a pipelined request.
  std::string take_unread() { return buffer_.substr(std::min(buffered_, buffer_.size())); }

  bool is_readable() const override { return server_.wait_readable(sock_, read_ms_); }

  bool is_writable() const override {
    pollfd p{sock_, POLLOUT, 0};
    if (poll_retrying(&p, 1, write_ms_) <= 0 || (p.revents & (POLLERR | POLLNVAL)) != 0) return false;
    return alive();
  }

  ssize_t read(char* ptr, size_t size) override {
    if (buffered_ < buffer_.size()) {
      const size_t n = std::min(size, buffer_.size() - buffered_);
      std::memcpy(ptr, buffer_.data() + buffered_, n);
      buffered_ += n;
      return static_cast<ssize_t>(n);
    }
    if (!is_readable()) return -1;
    if (size >= kReadChunk) return recv_retrying(ptr, size);
    buffer_.resize(kReadChunk);
    const ssize_t got = recv_retrying(buffer_.data(), kReadChunk);
    buffer_.resize(got > 0 ? static_cast<size_t>(got) : 0);
    buffered_ = 0;
    if (got <= 0) return got;
    const size_t n = std::min(size, buffer_.size());
    std::memcpy(ptr, buffer_.data(), n);
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
  static constexpr size_t kReadChunk = 4096;
  std::string buffer_;
  size_t buffered_ = 0;  // buffer_[buffered_, size) not yet returned
};

HttpServer::HttpServer(ConnectionLimits limits) : limits_(limits) {
  if (::pipe2(stop_pipe_, O_CLOEXEC) != 0 || ::pipe2(wake_pipe_, O_CLOEXEC | O_NONBLOCK) != 0) {
    throw Error(fmt::format("cannot create the server's pipes: {}", std::strerror(errno)));
  }
  // The listener calls process_and_close_socket (which only hands the connection to the poller)
  // on its own thread: no pool of httplib's.
  new_task_queue = [] { return new InlineTaskQueue; };
  poller_ = std::thread([this] { poller_loop(); });
}

HttpServer::~HttpServer() {
  join();
  for (int fd : stop_pipe_) ::close(fd);
  for (int fd : wake_pipe_) ::close(fd);
}

void HttpServer::shutdown() {
  if (!stopping_.exchange(true)) {
    const char byte = 1;
    while (::write(stop_pipe_[1], &byte, 1) < 0 && errno == EINTR) {
    }
  }
  if (is_running()) stop();
}

void HttpServer::set_listen_backlog(int backlog) {
  // listen() again on a listening socket only changes its backlog (capped by net.core.somaxconn).
  if (::listen(svr_sock_.load(), backlog) != 0) {
    throw Error(fmt::format("cannot set the listen backlog: {}", std::strerror(errno)));
  }
}

bool HttpServer::wait_drained(Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mutex_);
  return drained_cv_.wait_until(lock, deadline, [&] { return serving_ == 0 && ready_.empty(); });
}

void HttpServer::join() {
  std::call_once(joined_, [this] {
    shutdown();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      exit_ = true;
    }
    work_cv_.notify_all();
    wake_poller();
    poller_.join();
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      threads.swap(workers_);  // no thread starts once exit_ is set
    }
    for (std::thread& t : threads) t.join();
    std::lock_guard<std::mutex> lock(mutex_);
    for (Peer& p : incoming_) close_peer(p);
    incoming_.clear();
  });
}

HttpServer::Counts HttpServer::counts() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {open_.load(), ready_.size(), serving_, workers_.size()};
}

Clock::time_point HttpServer::deadline_of(const Peer& peer) const {
  return peer.since + std::chrono::milliseconds(peer.arriving ? limits_.head_timeout_ms : limits_.idle_timeout_ms);
}

void HttpServer::wake_poller() {
  const char byte = 1;
  while (::write(wake_pipe_[1], &byte, 1) < 0 && errno == EINTR) {
  }  // EAGAIN: the pipe is full, the poller wakes anyway
}

void HttpServer::close_peer(Peer& peer) {
  if (peer.fd < 0) return;
  ::shutdown(peer.fd, SHUT_RDWR);
  ::close(peer.fd);
  peer.fd = -1;
  open_.fetch_sub(1);
}

bool HttpServer::process_and_close_socket(socket_t sock) {
  ::fcntl(sock, F_SETFD, FD_CLOEXEC);  // not into the local stage workers serve may start
  open_.fetch_add(1);
  Peer peer;
  peer.fd = sock;
  peer.since = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    incoming_.push_back(std::move(peer));
  }
  wake_poller();
  return true;
}

bool HttpServer::read_available(Peer& peer, bool& ready) {
  bool eof = false;
  char buf[16384];
  while (peer.pending.size() < kMaxHeadBytes) {
    const ssize_t n = ::recv(peer.fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      if (!peer.arriving) {
        peer.arriving = true;
        peer.since = Clock::now();
      }
      peer.pending.append(buf, static_cast<size_t>(n));
      if (static_cast<size_t>(n) < sizeof(buf)) break;
      continue;
    }
    if (n == 0) {
      eof = true;  // the client may have half-closed after a whole request: still answered
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    return false;
  }
  ready = head_complete(peer.pending, peer.scanned) || peer.pending.size() >= kMaxHeadBytes;
  return ready || !eof;
}

void HttpServer::dispatch(Peer peer) {
  ready_.push_back(std::move(peer));
  if (ready_.size() > idle_threads_ && workers_.size() < limits_.request_threads && !exit_) {
    workers_.emplace_back([this] { worker_loop(); });
  } else {
    work_cv_.notify_one();
  }
}

void HttpServer::poller_loop() {
  std::vector<Peer> peers;  // idle, or a head arriving
  std::vector<pollfd> fds;
  for (;;) {
    std::vector<Peer> arrived;
    bool exiting = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      arrived.swap(incoming_);
      exiting = exit_;
    }
    const bool stopping = stopping_.load();
    for (Peer& p : arrived) {
      if (stopping) {
        close_peer(p);
      } else {
        peers.push_back(std::move(p));
      }
    }
    if (stopping) {
      for (Peer& p : peers) close_peer(p);
      peers.clear();
    }
    if (exiting) break;

    // Past the bound: the connections idle the longest go first; with none idle, the newest.
    while (open_.load() > limits_.max_connections && !peers.empty()) {
      auto victim = peers.end();
      for (auto it = peers.begin(); it != peers.end(); ++it) {
        if (!it->arriving && (victim == peers.end() || it->since < victim->since)) victim = it;
      }
      if (victim == peers.end()) victim = peers.end() - 1;
      close_peer(*victim);
      peers.erase(victim);
    }

    fds.clear();
    fds.push_back({wake_pipe_[0], POLLIN, 0});
    if (!stopping) fds.push_back({stop_pipe_[0], POLLIN, 0});  // stays readable once written
    const size_t base = fds.size();
    Clock::time_point next = Clock::time_point::max();
    for (const Peer& p : peers) {
      fds.push_back({p.fd, POLLIN, 0});
      next = std::min(next, deadline_of(p));
    }
    int timeout_ms = -1;
    if (next != Clock::time_point::max()) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count() + 1;
      timeout_ms = static_cast<int>(std::clamp<long long>(left, 0, 60'000));
    }
    poll_retrying(fds.data(), fds.size(), timeout_ms);
    if (fds[0].revents != 0) {
      char drain[256];
      while (::read(wake_pipe_[0], drain, sizeof(drain)) > 0) {
      }
    }

    const Clock::time_point now = Clock::now();
    std::vector<Peer> kept;
    kept.reserve(peers.size());
    for (size_t i = 0; i < peers.size(); ++i) {
      Peer& p = peers[i];
      if (fds[base + i].revents != 0) {
        bool ready = false;
        if (!read_available(p, ready)) {
          close_peer(p);
          continue;
        }
        if (ready) {
          std::lock_guard<std::mutex> lock(mutex_);
          dispatch(std::move(p));
          continue;
        }
      }
      if (now >= deadline_of(p)) {
        close_peer(p);  // idle past the keep-alive timeout, or a head too slow
        continue;
      }
      kept.push_back(std::move(p));
    }
    peers.swap(kept);
  }
  for (Peer& p : peers) close_peer(p);
}

void HttpServer::worker_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    ++idle_threads_;
    work_cv_.wait(lock, [&] { return !ready_.empty() || exit_; });
    --idle_threads_;
    if (ready_.empty()) break;  // exit_, and nothing left to serve
    Peer peer = std::move(ready_.front());
    ready_.pop_front();
    ++serving_;
    lock.unlock();
    bool keep = false;
    try {
      keep = serve(peer);
    } catch (...) {  // httplib reports handler errors itself; anything else ends the connection
      keep = false;
    }
    lock.lock();
    --serving_;
    if (keep && !stopping_.load() && !exit_) {
      peer.since = Clock::now();
      peer.arriving = !peer.pending.empty();
      peer.scanned = 0;
      if (head_complete(peer.pending, peer.scanned)) {
        ready_.push_back(std::move(peer));  // a pipelined request: this thread takes it next
      } else {
        incoming_.push_back(std::move(peer));
        wake_poller();
      }
    } else {
      close_peer(peer);
    }
    if (serving_ == 0 && ready_.empty()) drained_cv_.notify_all();
  }
}

bool HttpServer::serve(Peer& peer) {
  Connection connection(*this, peer.fd, std::move(peer.pending), read_timeout_sec_, read_timeout_usec_,
                        write_timeout_sec_, write_timeout_usec_);
  peer.pending.clear();
  ++peer.served;
  const bool last = peer.served >= limits_.max_requests_per_connection || stopping_.load();
  bool closed = false;
  const bool ok = process_request(connection, /*close_connection=*/last, closed, nullptr);
  peer.pending = connection.take_unread();
  return ok && !closed && !last;
}

bool HttpServer::wait_readable(socket_t sock, int timeout_ms) const {
  pollfd p[2] = {{sock, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
  if (poll_retrying(p, 2, timeout_ms) <= 0) return false;
  // Data (or a hang-up, which the read then sees) wins over the stop only while not stopping:
  // once stopping, a request whose body has not arrived is closed.
  if (p[1].revents != 0) return false;
  return (p[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}

}  // namespace hearth::server
