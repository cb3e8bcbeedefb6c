// cpp-httplib's Server with its own connection loop, so that stopping does not wait for idle
// keep-alive connections.
//
// httplib 0.11 (Debian 12's) waits for the next request on a kept-alive connection in a loop
// that looks at the listening socket only between requests: after stop(), an idle client holds
// its worker thread, and with it the listener's join, for the whole keep-alive timeout (30 s
// here). HttpServer replaces that loop (Server::process_and_close_socket, a virtual the library
// calls for every accepted connection) with one that waits on the connection and on a
// stop pipe at once, and serves each request through the library's own process_request. After
// shutdown(): idle connections, and requests whose head or body has not fully arrived, are
// closed at once; responses being written (streams) run to their end, then close.
#pragma once

#include <httplib.h>

#include <atomic>

namespace hearth::server {

class HttpServer : public httplib::Server {
 public:
  HttpServer();
  ~HttpServer() override;
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Wakes every idle connection (it closes), then stops the listener (Server::stop). Safe to
  // call more than once and from any thread.
  void shutdown();

 private:
  bool process_and_close_socket(socket_t sock) override;
  // Waits until `sock` is readable (or hung up): true; false after `timeout_ms` or once
  // shutdown() has been called.
  bool wait_readable(socket_t sock, int timeout_ms) const;

  class Connection;
  int stop_pipe_[2] = {-1, -1};  // written once by shutdown(); never read, so it stays readable
  std::atomic<bool> stopping_{false};
};

}  // namespace hearth::server
