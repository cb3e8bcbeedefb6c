#include "transport/link.h"

#include "transport/log.h"

#include <fmt/format.h>

namespace hearth::transport {

Clock::time_point deadline_after(Timeout timeout) {
  const auto now = Clock::now();
  if (timeout <= Timeout::zero()) return now;
  const auto room = std::chrono::duration_cast<Timeout>(Clock::time_point::max() - now);
  if (timeout >= room) return Clock::time_point::max();
  return now + timeout;
}

Link::Link(std::string peer, std::shared_ptr<const FrameLimits> limits)
    : peer_(std::move(peer)), limits_(std::move(limits)) {
  HEARTH_CHECK(limits_ != nullptr);
  const auto now = Clock::now().time_since_epoch().count();
  last_receive_.store(now);
  last_send_.store(now);
}

std::string Link::close_reason() const {
  std::lock_guard lock(reason_mutex_);
  return close_reason_;
}

void Link::mark_authenticated(std::string peer_capabilities) {
  peer_capabilities_ = std::move(peer_capabilities);
  authenticated_.store(true, std::memory_order_release);
}

void Link::rethrow_closed() { throw LinkClosed(fmt::format("link to {} is closed: {}", peer_, close_reason())); }

void Link::send(MessageType type, std::span<const ByteSpan> segments, Timeout timeout) {
  HEARTH_CHECK(type != msg::kHeartbeat && type != msg::kClose, "send {} through close()/try_send_heartbeat()",
               type);
  const FrameLimits::Entry* entry = limits_->find(type);
  HEARTH_CHECK(entry != nullptr, "sending message type {} that is not in the link's FrameLimits", type);
  uint64_t length = 0;
  for (ByteSpan s : segments) length += s.size();
  HEARTH_CHECK(length <= entry->max_payload, "sending {} bytes of {}, over its limit of {}", length,
               limits_->describe(type), entry->max_payload);

  const auto deadline = deadline_after(timeout);
  std::unique_lock lock(send_mutex_);
  if (is_closed()) rethrow_closed();
  try {
    send_frame(type, segments, length, deadline);
  } catch (const LinkError& e) {
    lock.unlock();
    if (is_closed()) rethrow_closed();  // closed under us by another thread
    close_impl(fmt::format("sending {}: {}", limits_->describe(type), e.what()), false, true);
    throw;
  }
  last_send_.store(Clock::now().time_since_epoch().count());
}

bool Link::try_send_heartbeat() {
  std::unique_lock lock(send_mutex_, std::try_to_lock);
  if (!lock.owns_lock() || is_closed() || !writable_now()) return false;
  try {
    send_frame(msg::kHeartbeat, {}, 0, deadline_after(Timeout(1000)));
  } catch (const LinkError& e) {
    lock.unlock();
    if (!is_closed()) close_impl(fmt::format("sending a heartbeat: {}", e.what()), false, true);
    return false;
  }
  last_send_.store(Clock::now().time_since_epoch().count());
  return true;
}

std::optional<Message> Link::receive(ByteBuffer& buffer, Timeout timeout) {
  HEARTH_CHECK(!receiving_.exchange(true), "two threads receive on the link to {} at once", peer_);
  struct Release {
    std::atomic<bool>& flag;
    ~Release() { flag.store(false); }
  } release{receiving_};

  if (is_closed()) rethrow_closed();
  const auto deadline = deadline_after(timeout);
  for (;;) {
    std::optional<Message> m;
    try {
      m = receive_frame(buffer, deadline);
    } catch (const LinkError& e) {
      if (is_closed()) rethrow_closed();
      // A malformed frame: tell the peer why (it may be a misconfigured node). A vanished peer
      // or a broken connection: nobody to tell.
      const bool bad_frame = dynamic_cast<const FrameError*>(&e) != nullptr;
      close_impl(e.what(), bad_frame, true);
      throw;
    }
    if (!m) return std::nullopt;
    if (m->type == msg::kHeartbeat) continue;
    if (m->type == msg::kClose) {
      const std::string reason(reinterpret_cast<const char*>(m->payload.data()), m->payload.size());
      close_impl(fmt::format("peer closed the link: {}", printable(reason)), false, false);
      rethrow_closed();
    }
    return m;
  }
}

void Link::close(std::string_view reason, std::string_view tell_peer) {
  close_impl(std::string(reason), true, false, tell_peer);
}

void Link::close_impl(std::string reason, bool notify_peer, bool log, std::string_view tell_peer) {
  {
    std::lock_guard lock(reason_mutex_);
    if (closed_.load()) return;
    close_reason_ = reason;
    closed_.store(true, std::memory_order_release);
  }
  if (log) log_line(fmt::format("link to {} closed: {}", peer_, reason));
  if (notify_peer) {
    // The peer should learn why: a frame another thread is writing (a heartbeat, a batch) is
    // let finish first, and a full send buffer given time to drain, within bounds, so that the
    // reason is not lost to a momentary lock or a burst of data ahead of it.
    std::unique_lock lock(send_mutex_, kCloseSendWait);
    if (lock.owns_lock()) {
      const std::string_view message = tell_peer.empty() ? std::string_view(reason) : tell_peer;
      const std::string_view r = message.substr(0, kMaxCloseReasonBytes);
      const ByteSpan payload(reinterpret_cast<const std::byte*>(r.data()), r.size());
      try {
        send_frame(msg::kClose, std::span<const ByteSpan>(&payload, 1), payload.size(),
                   deadline_after(kCloseDrainWait));
      } catch (const LinkError&) {
        // Best effort: the peer learns from the closed connection instead.
      }
    }
  }
  shutdown_transport();
}

}  // namespace hearth::transport
