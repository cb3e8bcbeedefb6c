// Frames: what every link carries. A frame is a fixed 32-byte little-endian header followed by
// `payload_length` bytes (docs/wire-protocol.md has the byte layout):
//
//   offset size field
//        0    4 magic            "HRTH" (0x48 0x52 0x54 0x48)
//        4    2 version          kProtocolVersion (4)
//        6    2 type             a MessageType known to the receiver's FrameLimits
//        8    4 flags            bit 0: encrypted (every frame after an encrypting handshake); others 0
//       12    4 reserved         0
//       16    8 payload_length   <= the limit registered for `type` (+ the 16-byte tag when encrypted)
//       24    8 sequence         0, 1, 2, ... per direction of a link; any gap or repeat is refused
//
// A receiver validates the whole header (decode_frame_header) BEFORE it reserves room for the
// payload, so a peer cannot make it allocate more than the largest limit it registered.
#pragma once

#include "core/error.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>

namespace hearth::transport {

using MessageType = uint16_t;

inline constexpr uint32_t kFrameMagic = 0x48545248;  // bytes "HRTH" read as a little-endian u32
// 2: Batch messages carry each sampling entry's logit bias; 3: and its grammar, a replayed
// sequence's resumed count and a cached prefix; 4: frames after the handshake are encrypted
// (frame_cipher.h) unless both sides ask for plaintext (docs/wire-protocol.md).
inline constexpr uint16_t kProtocolVersion = 4;
inline constexpr size_t kFrameHeaderSize = 32;

// Transport's own messages. Types below kFirstUserMessageType are reserved for transport;
// shard/ registers its catalog at kFirstUserMessageType and above.
namespace msg {
inline constexpr MessageType kHello = 1;      // handshake: version, role, nonce, capabilities
inline constexpr MessageType kAuth = 2;       // handshake: HMAC-SHA256 proof (32 bytes)
inline constexpr MessageType kHeartbeat = 3;  // empty; skipped by receivers
inline constexpr MessageType kClose = 4;      // UTF-8 reason; the sender closes after it
}  // namespace msg
inline constexpr MessageType kFirstUserMessageType = 256;

inline constexpr size_t kMaxCapabilitiesBytes = 64 * 1024;
inline constexpr size_t kHelloFixedBytes = 40;  // version, role, reserved, nonce, caps length
inline constexpr size_t kAuthBytes = 32;
inline constexpr size_t kMaxCloseReasonBytes = 1024;

// Something a link or its peer got wrong. The link it happened on is closed when this is thrown.
class LinkError : public Error {
 public:
  using Error::Error;
};
// The link is closed (by us, by the peer, or after an earlier error); what() says why.
class LinkClosed : public LinkError {
 public:
  using LinkError::LinkError;
};
// The peer sent bytes that are not a valid frame (magic, version, type, length, sequence).
class FrameError : public LinkError {
 public:
  using LinkError::LinkError;
};
// A send or a frame in progress did not complete in time.
class LinkTimeout : public LinkError {
 public:
  using LinkError::LinkError;
};

// The maximum payload length of every message type a receiver accepts. Transport's control
// messages are present from construction; the user of the library registers its own types
// (allow) before creating links, then shares the table read-only (it is not synchronized).
class FrameLimits {
 public:
  FrameLimits();

  // Accepts `type` (>= kFirstUserMessageType, not registered yet: both are programming errors)
  // with payloads of at most max_payload bytes. `name` appears in error messages.
  FrameLimits& allow(MessageType type, uint64_t max_payload, std::string name);

  struct Entry {
    uint64_t max_payload;
    std::string name;
  };
  // nullptr when `type` is not known.
  const Entry* find(MessageType type) const;

  // "Hello (1)", "activations (257)", "unknown type 999".
  std::string describe(MessageType type) const;

 private:
  void add(MessageType type, uint64_t max_payload, std::string name);
  std::unordered_map<MessageType, Entry> entries_;
};

// Frame flags. kFrameEncrypted: the payload is ciphertext followed by a 16-byte tag
// (frame_cipher.h); set on every frame after an encrypting handshake, and only then.
inline constexpr uint32_t kFrameEncrypted = 1;
inline constexpr uint64_t kFrameTagLength = 16;

struct FrameHeader {
  MessageType type = 0;
  uint64_t payload_length = 0;  // on the wire: with the tag when encrypted
  uint64_t sequence = 0;
  uint32_t flags = 0;
};

using HeaderBytes = std::array<std::byte, kFrameHeaderSize>;

HeaderBytes encode_frame_header(const FrameHeader& header);

// Validates and decodes a received header: magic, version, flags (kFrameEncrypted exactly when
// `encrypted`, nothing else), reserved, known type, length <= the type's limit (plus the tag,
// and at least the tag, when encrypted), sequence == expected_sequence. Throws FrameError naming
// the field, the value received and what was expected.
FrameHeader decode_frame_header(std::span<const std::byte, kFrameHeaderSize> bytes, const FrameLimits& limits,
                                uint64_t expected_sequence, bool encrypted = false);

// A peer-supplied string made safe to print: non-printable bytes become '?', at most max_chars.
std::string printable(std::string_view text, size_t max_chars = 200);

// Little-endian helpers shared by the codecs.
inline void store_le(std::byte* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}
inline uint64_t load_le(const std::byte* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace hearth::transport
