#include "transport/heartbeat.h"

#include "transport/log.h"

#include <fmt/format.h>

#include <algorithm>

namespace hearth::transport {

namespace {
// How often the monitor looks at a link closed by someone else.
constexpr Timeout kPollInterval{100};
}  // namespace

LinkMonitor::LinkMonitor(Link& link, HeartbeatOptions options, DeadCallback on_dead)
    : link_(link), options_(options), on_dead_(std::move(on_dead)) {
  HEARTH_CHECK(options_.interval > Timeout::zero() && options_.dead_after > Timeout::zero());
  thread_ = std::thread([this] { run(); });
}

LinkMonitor::~LinkMonitor() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  thread_.join();
}

bool LinkMonitor::peer_dead() const {
  std::lock_guard lock(mutex_);
  return dead_;
}

std::string LinkMonitor::reason() const {
  std::lock_guard lock(mutex_);
  return reason_;
}

uint64_t LinkMonitor::heartbeats_sent() const {
  std::lock_guard lock(mutex_);
  return heartbeats_;
}

void LinkMonitor::declare_dead(std::string reason) {
  {
    std::lock_guard lock(mutex_);
    dead_ = true;
    reason_ = reason;
  }
  if (on_dead_) on_dead_(reason);
}

void LinkMonitor::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    lock.unlock();
    const auto now = Clock::now();
    if (link_.is_closed()) {
      declare_dead(link_.close_reason());
      return;
    }
    // Bytes waiting unread prove the peer was alive after the receiver last read — unless it
    // has hung up since: then nothing more can come, and what is left is the receiver's to read.
    const bool hung_up = link_.peer_hung_up();
    const bool unread = link_.has_unread_input();
    auto last_receive = link_.last_receive_time();
    if (unread && !hung_up) last_receive = now;
    const auto silent = now - last_receive;
    // A thread inside receive() reads what the peer left (its Close, with the reason) and
    // closes the link itself; declaring the hang-up here first would lose that reason.
    const bool receiver_will_see = hung_up && link_.receiving();
    if (!receiver_will_see && ((hung_up && !unread) || silent >= options_.dead_after)) {
      const std::string reason =
          hung_up ? std::string(unread ? "the peer closed the connection (input left unread)"
                                       : "the peer closed the connection")
                  : fmt::format("peer silent for {:.1f} s (heartbeat timeout)",
                                std::chrono::duration<double>(silent).count());
      if (!link_.is_closed()) {
        log_line(fmt::format("link to {}: {}", link_.peer(), reason));
        link_.close(reason);
      }
      declare_dead(link_.is_closed() ? link_.close_reason() : reason);
      return;
    }
    if (now - link_.last_send_time() >= options_.interval && link_.try_send_heartbeat()) {
      std::lock_guard count(mutex_);
      ++heartbeats_;
    }
    // Wake at the next heartbeat or death deadline, and at least every kPollInterval.
    const auto next_send = link_.last_send_time() + options_.interval;
    const auto next_dead = last_receive + options_.dead_after;
    auto wake = std::min({next_send, next_dead, now + kPollInterval});
    if (wake <= now) wake = now + Timeout(10);  // a heartbeat we could not send yet: retry soon
    lock.lock();
    stop_cv_.wait_until(lock, wake, [&] { return stopping_; });
  }
}

}  // namespace hearth::transport
