// cpp-httplib's Server with its own connection handling, so that idle and slow connections hold
// no request thread and stopping does not wait for them.
//
// httplib 0.11 (Debian 12's) hands every accepted connection to a thread of its pool, which then
// waits on it for the whole keep-alive timeout between requests: N idle connections take N
// threads, and the N+1st request waits for a thread (500 idle browser tabs or a slowloris client
// starve the server), and after stop() an idle client holds the listener's join for the whole
// keep-alive timeout.
//
// HttpServer keeps httplib's listener (accept loop), router and request parser, and replaces what
// happens to a connection (Server::process_and_close_socket, a virtual the library calls on the
// listener thread for every accepted connection, through a task queue that runs it inline):
//
//   listener ──accept──▶ poller thread ──head complete──▶ request threads ──keep-alive──┐
//                          ▲  (poll() over every idle / arriving connection)            │
//                          └────────────────────────────────────────────────────────────┘
//
// - The poller owns every connection that is idle or whose request head is still arriving: it
//   reads what arrives (non-blocking) into the connection's buffer and hands the connection to a
//   request thread only once the head (up to the blank line) is there. An idle connection is
//   closed after `idle_timeout_ms`; a head that does not complete within `head_timeout_ms` of its
//   first byte is closed too.
// - Request threads (at most `request_threads`, started as needed) run one request each through
//   httplib's process_request (the body is read there, bounded by the read timeout), then give a
//   kept-alive connection back to the poller with whatever bytes followed the request.
// - Open connections are bounded by `max_connections`: past it, the connection idle the longest
//   is closed to make room (a client reconnects, as it must after any keep-alive timeout), and
//   when none is idle the new connection is closed.
//
// Threads: shutdown(), wait_drained() and counts() may be called from any thread; join() from one
// that is not a request thread. The handlers run on request threads.
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace hearth::server {

struct ConnectionLimits {
  size_t max_connections = 1024;  // open connections (idle, arriving or in a request)
  size_t request_threads = 32;    // requests served at once (a stream holds one to its end)
  int idle_timeout_ms = 30'000;   // a kept-alive connection with nothing sent is closed after this
  int head_timeout_ms = 30'000;   // first byte of a request to the end of its head
  size_t max_requests_per_connection = 1000;
};

class HttpServer : public httplib::Server {
 public:
  explicit HttpServer(ConnectionLimits limits = {});
  ~HttpServer() override;  // shutdown(), then join()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // After bind_to_port / bind_to_any_port: lets `backlog` connections wait for accept().
  // httplib listens with a backlog of 5, which a burst of new connections overflows (the kernel
  // then drops or, with SYN cookies, sometimes resets them). Throws hearth::Error on failure.
  void set_listen_backlog(int backlog);

  // Stops accepting (Server::stop closes the listener), closes every idle connection and every
  // request whose head has not fully arrived; requests being served run on, and their
  // connections close after the response. Safe to call more than once and from any thread.
  void shutdown();
  // Waits until no request is being served or waiting for a thread, or until `deadline`;
  // true when none is.
  bool wait_drained(std::chrono::steady_clock::time_point deadline);
  // Ends the poller and the request threads once their requests are done (after shutdown();
  // the handlers must make their requests end). Idempotent.
  void join();

  struct Counts {
    size_t open = 0;     // connections open
    size_t waiting = 0;  // complete heads waiting for a request thread
    size_t serving = 0;  // requests on a request thread
    size_t threads = 0;  // request threads started
  };
  Counts counts() const;
  const ConnectionLimits& limits() const { return limits_; }
  bool stopping() const { return stopping_.load(); }

 private:
  class Connection;
  struct Peer {
    socket_t fd = -1;
    std::string pending;                              // bytes read and not yet parsed
    size_t scanned = 0;                               // pending[0, scanned) holds no head end
    std::chrono::steady_clock::time_point since;      // idle since / first byte of the head
    bool arriving = false;                            // a head has begun
    size_t served = 0;                                // requests answered on it
  };

  bool process_and_close_socket(socket_t sock) override;
  void poller_loop();
  void worker_loop();
  // Reads what the socket has; false when the peer closed or failed. Then, true in `ready` once
  // a request's head is complete.
  bool read_available(Peer& peer, bool& ready);
  void dispatch(Peer peer);  // to a request thread; mutex_ held
  void close_peer(Peer& peer);
  // true: the connection stays open for another request.
  bool serve(Peer& peer);
  // Waits until `sock` is readable (or hung up): true; false after `timeout_ms` or once
  // shutdown() has been called.
  bool wait_readable(socket_t sock, int timeout_ms) const;
  void wake_poller();
  // When the poller closes `peer`: idle past the keep-alive timeout, or a head too slow.
  std::chrono::steady_clock::time_point deadline_of(const Peer& peer) const;

  const ConnectionLimits limits_;
  int stop_pipe_[2] = {-1, -1};  // written once by shutdown(); never read, so it stays readable
  int wake_pipe_[2] = {-1, -1};  // wakes the poller: a connection for it, or join()
  std::atomic<bool> stopping_{false};
  std::atomic<size_t> open_{0};

  mutable std::mutex mutex_;
  std::condition_variable work_cv_;     // a head is ready, or join()
  std::condition_variable drained_cv_;  // a request ended
  std::vector<Peer> incoming_;          // for the poller: accepted, or kept alive after a request
  std::deque<Peer> ready_;              // complete heads waiting for a request thread
  size_t serving_ = 0;
  size_t idle_threads_ = 0;
  bool exit_ = false;
  std::vector<std::thread> workers_;
  std::thread poller_;
  std::once_flag joined_;
};

}  // namespace hearth::server
