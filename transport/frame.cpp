#include "transport/frame.h"

#include <fmt/format.h>

namespace hearth::transport {

FrameLimits::FrameLimits() {
  add(msg::kHello, kHelloFixedBytes + kMaxCapabilitiesBytes, "Hello");
  add(msg::kAuth, kAuthBytes, "Auth");
  add(msg::kHeartbeat, 0, "Heartbeat");
  add(msg::kClose, kMaxCloseReasonBytes, "Close");
}

void FrameLimits::add(MessageType type, uint64_t max_payload, std::string name) {
  HEARTH_CHECK(!entries_.contains(type), "message type {} registered twice", type);
  entries_.emplace(type, Entry{max_payload, std::move(name)});
}

FrameLimits& FrameLimits::allow(MessageType type, uint64_t max_payload, std::string name) {
  HEARTH_CHECK(type >= kFirstUserMessageType, "message type {} ({}) is reserved for transport", type, name);
  add(type, max_payload, std::move(name));
  return *this;
}

const FrameLimits::Entry* FrameLimits::find(MessageType type) const {
  auto it = entries_.find(type);
  return it == entries_.end() ? nullptr : &it->second;
}

std::string FrameLimits::describe(MessageType type) const {
  const Entry* e = find(type);
  return e ? fmt::format("{} ({})", e->name, type) : fmt::format("unknown type {}", type);
}

HeaderBytes encode_frame_header(const FrameHeader& header) {
  HeaderBytes b{};
  store_le(&b[0], kFrameMagic, 4);
  store_le(&b[4], kProtocolVersion, 2);
  store_le(&b[6], header.type, 2);
  store_le(&b[8], header.flags, 4);
  store_le(&b[16], header.payload_length, 8);
  store_le(&b[24], header.sequence, 8);
  return b;
}

FrameHeader decode_frame_header(std::span<const std::byte, kFrameHeaderSize> b, const FrameLimits& limits,
                                uint64_t expected_sequence, bool encrypted) {
  const uint64_t magic = load_le(&b[0], 4);
  if (magic != kFrameMagic) {
    throw FrameError(fmt::format("bad frame magic 0x{:08x} (expected 0x{:08x} \"HRTH\"): not a hearth peer, or the "
                                 "stream lost its framing",
                                 magic, kFrameMagic));
  }
  const uint64_t version = load_le(&b[4], 2);
  if (version != kProtocolVersion) {
    throw FrameError(fmt::format("frame of protocol version {}, we speak {}", version, kProtocolVersion));
  }
  const uint64_t flags = load_le(&b[8], 4);
  if (flags != (encrypted ? kFrameEncrypted : 0u)) {
    throw FrameError(encrypted ? fmt::format("frame flags 0x{:08x}: an unencrypted frame on an encrypted link", flags)
                               : fmt::format("frame flags 0x{:08x} on a link that is not encrypted", flags));
  }
  const uint64_t reserved = load_le(&b[12], 4);
  if (reserved != 0) throw FrameError(fmt::format("frame reserved field 0x{:08x} is not zero", reserved));

  FrameHeader h;
  h.type = static_cast<MessageType>(load_le(&b[6], 2));
  h.payload_length = load_le(&b[16], 8);
  h.sequence = load_le(&b[24], 8);
  h.flags = static_cast<uint32_t>(flags);
  const FrameLimits::Entry* entry = limits.find(h.type);
  if (!entry) throw FrameError(fmt::format("unknown message type {}", h.type));
  if (encrypted && h.payload_length < kFrameTagLength) {
    throw FrameError(fmt::format("encrypted {} payload of {} bytes is shorter than its tag", limits.describe(h.type),
                                 h.payload_length));
  }
  if (h.payload_length - (encrypted ? kFrameTagLength : 0) > entry->max_payload) {
    throw FrameError(fmt::format("{} payload of {} bytes exceeds its limit of {} bytes", limits.describe(h.type),
                                 h.payload_length, entry->max_payload));
  }
  if (h.sequence != expected_sequence) {
    throw FrameError(fmt::format("frame sequence number {}, expected {} (a lost, repeated or injected frame)",
                                 h.sequence, expected_sequence));
  }
  return h;
}

std::string printable(std::string_view text, size_t max_chars) {
  std::string out;
  out.reserve(std::min(text.size(), max_chars));
  for (char c : text.substr(0, max_chars)) {
    auto u = static_cast<unsigned char>(c);
    out.push_back(u >= 0x20 && u < 0x7f ? c : '?');
  }
  if (text.size() > max_chars) out += "...";
  return out;
}

}  // namespace hearth::transport
