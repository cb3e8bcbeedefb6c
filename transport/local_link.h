// LocalLink: a pair of in-process links for pipeline stages that live in one process. Same
// interface and the same failure behaviour as TcpLink (frames checked against FrameLimits,
// Close and Heartbeat handled by Link, a closed end seen by the other); messages travel through
// a bounded queue per direction (send blocks while the queue is full), each payload copied once
// into a pooled vector and once into the receiver's buffer.
#pragma once

#include "transport/link.h"

#include <memory>
#include <string>
#include <utility>

namespace hearth::transport {

class LocalLink;

struct LocalLinkPair {
  std::unique_ptr<LocalLink> a;
  std::unique_ptr<LocalLink> b;
};

// Two connected ends; `name` appears in peer() ("local:<name>/a" is the peer of b).
// queue_capacity: messages in flight per direction (>= 1).
LocalLinkPair make_local_link_pair(std::shared_ptr<const FrameLimits> limits, const std::string& name = "local",
                                   size_t queue_capacity = 64);

class LocalLink final : public Link {
 public:
  struct Shared;
  LocalLink(std::shared_ptr<Shared> shared, int end, std::string peer, std::shared_ptr<const FrameLimits> limits);
  ~LocalLink() override;

  bool has_unread_input() const override;
  bool peer_hung_up() const override;
  // In-process: no bytes cross a wire, nothing to encrypt.
  bool start_encryption(const LinkKeys&) override { return false; }

 protected:
  void send_frame(MessageType type, std::span<const ByteSpan> segments, uint64_t payload_length,
                  Clock::time_point deadline) override;
  std::optional<Message> receive_frame(ByteBuffer& buffer, Clock::time_point deadline) override;
  bool writable_now() const override;
  void shutdown_transport() override;

 private:
  std::shared_ptr<Shared> shared_;
  int end_;  // 0 or 1: receives from queue[end_], sends to queue[1 - end_]
};

}  // namespace hearth::transport
