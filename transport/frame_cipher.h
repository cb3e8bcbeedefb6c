// Frames encrypted and authenticated after the handshake (docs/wire-protocol.md, "Encryption"):
// ChaCha20-Poly1305 with a 32-byte key per direction of a link (derived by handshake() with
// HKDF-SHA256 from the cluster key and both sides' fresh nonces), the 96-bit nonce four zero
// bytes and the frame's 64-bit sequence number (little-endian), the 32-byte frame header as
// associated data, and the payload sent as ciphertext followed by the 16-byte tag. A frame that
// was altered (header or payload), replayed, reordered or dropped fails: its sequence is not the
// one expected (the header check), or its tag does not verify under the expected sequence.
#pragma once

#include <openssl/evp.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "transport/frame.h"

namespace hearth::transport {

inline constexpr size_t kLinkKeyBytes = 32;
using LinkKey = std::array<std::byte, kLinkKeyBytes>;

// The keys of one side of a link: what it encrypts with, what it decrypts with.
struct LinkKeys {
  LinkKey send{};
  LinkKey receive{};
};

class FrameCipher {
 public:
  explicit FrameCipher(const LinkKey& key);
  ~FrameCipher();
  FrameCipher(const FrameCipher&) = delete;
  FrameCipher& operator=(const FrameCipher&) = delete;

  // The payload of the frame with header `header` (its payload_length already counts the tag)
  // and sequence `sequence`: the segments' bytes encrypted, then the tag, into `out`.
  void seal(const HeaderBytes& header, uint64_t sequence, std::span<const std::span<const std::byte>> segments,
            std::vector<std::byte>& out);
  // Decrypts `payload` (ciphertext then tag) in place; false when the tag does not verify.
  bool open(const HeaderBytes& header, uint64_t sequence, std::span<std::byte> payload);

 private:
  EVP_CIPHER_CTX* ctx_ = nullptr;
  LinkKey key_{};
};

}  // namespace hearth::transport
