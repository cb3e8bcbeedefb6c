// LinkMonitor: keeps a link alive and notices when its peer is not.
//
// A monitor thread per link (1) sends a Heartbeat when no frame has been sent for
// `interval` (Link::try_send_heartbeat: never in the middle of another frame, never blocking a
// sender), and (2) declares the peer dead when nothing has arrived for `dead_after` — no byte
// read by the receiver and none waiting unread in the transport. A dead peer's link is closed
// with the reason "peer silent for 3.0 s (heartbeat timeout)", which wakes the link's receiver
// (LinkClosed) and sender; `on_dead` is called once with that reason. A link closed for any
// other reason (the peer closed it, a bad frame) is reported the same way within ~100 ms.
//
// Intended use: the pipeline runtime runs one receiver thread per link that calls receive() in
// a loop (heartbeats are consumed there) and one sender thread; the monitor needs neither to
// cooperate. With a peer that heartbeats every 1 s and the default 3 s timeout, a silent peer is
// declared dead 3 s after the last byte it sent, and a closed connection as soon as the
// receiver reads the end of the stream. With nobody receiving, the monitor reports a hung-up
// connection itself; while a thread is inside receive(), it leaves that to the receiver, which
// holds the peer's Close and its reason.
#pragma once

#include "transport/link.h"

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace hearth::transport {

struct HeartbeatOptions {
  Timeout interval{1000};    // send a heartbeat after this long without sending anything
  Timeout dead_after{3000};  // declare the peer dead after this long without receiving anything
};

class LinkMonitor {
 public:
  using DeadCallback = std::function<void(const std::string& reason)>;

  // Starts monitoring `link`, which must outlive the monitor. `on_dead` runs on the monitor's
  // thread (keep it short; it must not destroy the monitor).
  LinkMonitor(Link& link, HeartbeatOptions options = {}, DeadCallback on_dead = {});
  ~LinkMonitor();  // stops the thread; does not close the link
  LinkMonitor(const LinkMonitor&) = delete;
  LinkMonitor& operator=(const LinkMonitor&) = delete;

  // Whether the peer was declared dead (or the link closed), and why.
  bool peer_dead() const;
  std::string reason() const;
  // Heartbeats sent so far.
  uint64_t heartbeats_sent() const;

 private:
  void run();
  void declare_dead(std::string reason);

  Link& link_;
  const HeartbeatOptions options_;
  DeadCallback on_dead_;
  mutable std::mutex mutex_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  bool dead_ = false;
  std::string reason_;
  uint64_t heartbeats_ = 0;
  std::thread thread_;
};

}  // namespace hearth::transport
