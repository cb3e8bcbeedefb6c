// Handshake with mutual authentication over any Link (docs/wire-protocol.md has the bytes).
//
//   initiator (connected)                responder (accepted)
//   Hello{version, role=1, nonce_i, caps_i}  →
//                                        ←  Hello{version, role=2, nonce_r, caps_r}
//   Auth{HMAC(K, transcript, role=1)}        →   responder verifies, else Close + refuse
//                                        ←  Auth{HMAC(K, transcript, role=2)}
//   initiator verifies, else Close + refuse
//
// Then, unless both Hellos asked for plaintext, every later frame in each direction is encrypted
// with ChaCha20-Poly1305 (frame_cipher.h) under its own key:
// HKDF-SHA256(IKM = the cluster key, salt = nonce_i | nonce_r, info = "hearth-link-v1 initiator"
// or "hearth-link-v1 responder", the sending side) — fresh per connection and per direction.
//
// transcript = "hearth-handshake-v1" | prover role | nonce_i | nonce_r | len | Hello_i payload |
// len | Hello_r payload. Each proof binds both fresh nonces, both hellos and the prover's role,
// so a recorded proof fails in a new session (replay) and a side's own proof is useless sent
// back to it (reflection). The initiator proves first: the responder never computes a proof
// for a peer that has not shown it knows the key. Proofs are compared in constant time.
//
// Every step has a deadline (HandshakeOptions::timeout for the whole exchange). A refusal
// closes the link, tells the peer why with a Close frame when that helps an honest peer
// (version mismatch, failed authentication), and throws HandshakeError naming the cause.
#pragma once

#include "transport/link.h"

#include <array>
#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

namespace hearth::transport {

class HandshakeError : public LinkError {
 public:
  using LinkError::LinkError;
};

// The pre-shared cluster key: at least kMinClusterKeyBytes bytes. Wiped from memory on
// destruction.
class ClusterKey {
 public:
  static constexpr size_t kMinBytes = 16;
  static constexpr size_t kMaxBytes = 1024;

  // Throws hearth::Error if `bytes` is shorter than kMinBytes or longer than kMaxBytes.
  explicit ClusterKey(std::vector<std::byte> bytes);
  ~ClusterKey();
  ClusterKey(const ClusterKey&) = default;
  ClusterKey& operator=(const ClusterKey&) = default;

  std::span<const std::byte> bytes() const { return bytes_; }
  // Lower-case hex, as key files hold it.
  std::string to_hex() const;

 private:
  std::vector<std::byte> bytes_;
};

// 32 bytes from the OpenSSL CSPRNG (RAND_bytes); throws hearth::Error if it fails.
ClusterKey generate_cluster_key();

// Key files hold the key as HEX text (upper or lower case, at least 32 digits = 16 bytes),
// optionally followed by one newline ("\n" or "\r\n"). Anything else — raw binary, spaces,
// an odd number of digits, a short key — is refused with a message naming the file and the
// problem. A file readable by group or others is accepted with a warning through log_line.
ClusterKey load_cluster_key(const std::filesystem::path& path);

// Writes the key as hex + "\n" to a NEW file with mode 0600 (an existing file is never
// overwritten: hearth::Error).
void write_cluster_key(const std::filesystem::path& path, const ClusterKey& key);

enum class Role : uint8_t { initiator = 1, responder = 2 };

// Whether handshakes encrypt the link by default (true; apps set false for
// --insecure-plaintext). Process-wide, set once at startup.
void set_link_encryption_default(bool encrypt);
bool link_encryption_default();

struct HandshakeOptions {
  // Opaque bytes for the peer (shard/ puts JSON there: backend, memory, threads, bandwidth).
  std::string capabilities;
  // For the whole handshake; a silent or slow peer is refused when it runs out.
  Timeout timeout{10000};
  // The version this side announces. Only tests set another one (to act as a future peer).
  uint16_t protocol_version = kProtocolVersion;
  // false: this side asks for plaintext frames (measurements only). The link is encrypted
  // unless both sides ask for plaintext; the request is in the Hello, which both proofs cover,
  // so a device in the path cannot remove it.
  bool encrypt = link_encryption_default();
};

struct HandshakeResult {
  std::string peer_capabilities;
  bool encrypted = false;  // frames from now on are encrypted (a LocalLink never is)
};

// Runs the handshake on a fresh link (nothing sent or received on it yet). On success the
// link is marked authenticated and carries the peer's capabilities. On failure the link is
// closed and HandshakeError says why, e.g. "peer failed authentication (wrong cluster key?)",
// "peer speaks protocol version 3, we speak 1", "peer refused the handshake: <its reason>",
// "timed out after 10000 ms waiting for the peer's Hello".
HandshakeResult handshake(Link& link, Role role, const ClusterKey& key, const HandshakeOptions& options = {});

// 32 bytes derived from the cluster key: HKDF-SHA256(IKM = key, salt, info).
std::array<std::byte, 32> derive_cluster_subkey(const ClusterKey& key, ByteSpan salt, std::string_view info);

// The frame keys of one side of a link (exposed for tests): `role` is this side's.
struct LinkKeys;
LinkKeys derive_link_keys(const ClusterKey& key, Role role, ByteSpan nonce_initiator, ByteSpan nonce_responder);

// The 32-byte proof a side sends (exposed for tests and docs/wire-protocol.md).
std::array<std::byte, 32> handshake_proof(const ClusterKey& key, Role prover, ByteSpan nonce_initiator,
                                          ByteSpan nonce_responder, ByteSpan hello_initiator,
                                          ByteSpan hello_responder);

}  // namespace hearth::transport
