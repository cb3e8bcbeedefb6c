#include "transport/local_link.h"

#include <fmt/format.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <vector>

namespace hearth::transport {

struct LocalLink::Shared {
  struct Item {
    MessageType type;
    std::vector<std::byte> payload;
  };
  explicit Shared(size_t queue_capacity) : capacity(queue_capacity) {}

  const size_t capacity;
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<Item> queue[2];  // queue[e]: messages for end e
  bool closed[2] = {false, false};
  std::vector<std::vector<std::byte>> pool;  // up to 4 payload vectors for reuse
};

LocalLinkPair make_local_link_pair(std::shared_ptr<const FrameLimits> limits, const std::string& name,
                                   size_t queue_capacity) {
  HEARTH_CHECK(queue_capacity >= 1);
  auto shared = std::make_shared<LocalLink::Shared>(queue_capacity);
  LocalLinkPair pair;
  pair.a = std::make_unique<LocalLink>(shared, 0, fmt::format("local:{}/b", name), limits);
  pair.b = std::make_unique<LocalLink>(shared, 1, fmt::format("local:{}/a", name), limits);
  return pair;
}

LocalLink::LocalLink(std::shared_ptr<Shared> shared, int end, std::string peer,
                     std::shared_ptr<const FrameLimits> limits)
    : Link(std::move(peer), std::move(limits)), shared_(std::move(shared)), end_(end) {}

LocalLink::~LocalLink() {
  if (!is_closed()) close("closed");
}

void LocalLink::shutdown_transport() {
  std::lock_guard lock(shared_->mutex);
  shared_->closed[end_] = true;
  shared_->changed.notify_all();
}

bool LocalLink::writable_now() const {
  std::lock_guard lock(shared_->mutex);
  return !shared_->closed[1 - end_] && shared_->queue[1 - end_].size() < shared_->capacity;
}

bool LocalLink::has_unread_input() const {
  std::lock_guard lock(shared_->mutex);
  return !shared_->queue[end_].empty();
}

bool LocalLink::peer_hung_up() const {
  std::lock_guard lock(shared_->mutex);
  return shared_->closed[1 - end_];
}

void LocalLink::send_frame(MessageType type, std::span<const ByteSpan> segments, uint64_t payload_length,
                           Clock::time_point deadline) {
  std::vector<std::byte> payload;
  {
    std::lock_guard lock(shared_->mutex);
    if (!shared_->pool.empty()) {
      payload = std::move(shared_->pool.back());
      shared_->pool.pop_back();
    }
  }
  payload.resize(payload_length);
  size_t at = 0;
  for (ByteSpan s : segments) {
    if (!s.empty()) std::memcpy(payload.data() + at, s.data(), s.size());
    at += s.size();
  }

  std::unique_lock lock(shared_->mutex);
  auto& queue = shared_->queue[1 - end_];
  auto ready = [&] { return shared_->closed[end_] || shared_->closed[1 - end_] || queue.size() < shared_->capacity; };
  if (deadline == Clock::time_point::max()) {
    shared_->changed.wait(lock, ready);
  } else if (!shared_->changed.wait_until(lock, deadline, ready)) {
    throw LinkTimeout("send timed out: the peer's queue stayed full (peer not receiving?)");
  }
  if (shared_->closed[end_]) throw LinkClosed("closed");
  if (shared_->closed[1 - end_]) throw LinkClosed("the peer closed the link");
  queue.push_back({type, std::move(payload)});
  shared_->changed.notify_all();
}

std::optional<Message> LocalLink::receive_frame(ByteBuffer& buffer, Clock::time_point deadline) {
  Shared::Item item;
  {
    std::unique_lock lock(shared_->mutex);
    auto& queue = shared_->queue[end_];
    auto ready = [&] { return !queue.empty() || shared_->closed[end_] || shared_->closed[1 - end_]; };
    if (deadline == Clock::time_point::max()) {
      shared_->changed.wait(lock, ready);
    } else if (!shared_->changed.wait_until(lock, deadline, ready)) {
      return std::nullopt;
    }
    if (shared_->closed[end_]) throw LinkClosed("closed");
    if (queue.empty()) throw LinkClosed("the peer closed the link");
    item = std::move(queue.front());
    queue.pop_front();
    shared_->changed.notify_all();
  }
  note_received();
  // The same checks a TCP receiver makes, so both links refuse the same messages.
  const FrameLimits::Entry* entry = limits().find(item.type);
  if (!entry) throw FrameError(fmt::format("unknown message type {}", item.type));
  if (item.payload.size() > entry->max_payload) {
    throw FrameError(fmt::format("{} payload of {} bytes exceeds its limit of {} bytes", limits().describe(item.type),
                                 item.payload.size(), entry->max_payload));
  }
  auto dst = buffer.resize_for_overwrite(item.payload.size());
  if (!item.payload.empty()) std::memcpy(dst.data(), item.payload.data(), item.payload.size());
  {
    std::lock_guard lock(shared_->mutex);
    if (shared_->pool.size() < 4) shared_->pool.push_back(std::move(item.payload));
  }
  return Message{item.type, buffer.bytes()};
}

}  // namespace hearth::transport
