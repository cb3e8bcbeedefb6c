#include "transport/handshake.h"

#include "transport/frame_cipher.h"
#include "transport/log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <fmt/format.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>

namespace hearth::transport {

// ---- cluster keys ----------------------------------------------------------------------------

ClusterKey::ClusterKey(std::vector<std::byte> bytes) : bytes_(std::move(bytes)) {
  if (bytes_.size() < kMinBytes) {
    throw Error(fmt::format("cluster key of {} bytes is too short (at least {} bytes)", bytes_.size(), kMinBytes));
  }
  if (bytes_.size() > kMaxBytes) {
    throw Error(fmt::format("cluster key of {} bytes is too long (at most {} bytes)", bytes_.size(), kMaxBytes));
  }
}

ClusterKey::~ClusterKey() {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
}

std::string ClusterKey::to_hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes_.size() * 2);
  for (std::byte b : bytes_) {
    out.push_back(kDigits[static_cast<unsigned>(b) >> 4]);
    out.push_back(kDigits[static_cast<unsigned>(b) & 15]);
  }
  return out;
}

ClusterKey generate_cluster_key() {
  std::vector<std::byte> bytes(32);
  if (RAND_bytes(reinterpret_cast<unsigned char*>(bytes.data()), static_cast<int>(bytes.size())) != 1) {
    throw Error("cannot generate a cluster key: the OpenSSL random generator failed");
  }
  return ClusterKey(std::move(bytes));
}

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Wipes a string holding key material when it goes out of scope.
struct Wipe {
  std::string& s;
  ~Wipe() {
    if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  }
};

}  // namespace

ClusterKey load_cluster_key(const std::filesystem::path& path) {
  const std::string where = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read cluster key file {}: {}", where, std::strerror(errno)));
  constexpr size_t kMaxFile = 2 * ClusterKey::kMaxBytes + 2;
  std::string text(kMaxFile + 1, '\0');
  Wipe wipe{text};
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxFile) throw Error(fmt::format("cluster key file {} is too large to be a key", where));
  if (text.ends_with("\r\n")) {
    text.resize(text.size() - 2);
  } else if (text.ends_with('\n')) {
    text.resize(text.size() - 1);
  }
  if (text.empty()) throw Error(fmt::format("cluster key file {} is empty", where));
  for (size_t i = 0; i < text.size(); ++i) {
    if (hex_value(text[i]) < 0) {
      throw Error(fmt::format("cluster key file {} is not hex text: byte {} is 0x{:02x} (a key file "
                              "holds hex digits, e.g. 64 for a 32-byte key, and an optional newline)",
                              where, i, static_cast<unsigned char>(text[i])));
    }
  }
  if (text.size() % 2 != 0) throw Error(fmt::format("cluster key file {} has an odd number of hex digits", where));
  if (text.size() / 2 < ClusterKey::kMinBytes) {
    throw Error(fmt::format("cluster key in {} is {} bytes; at least {} are required", where, text.size() / 2,
                            ClusterKey::kMinBytes));
  }
  std::vector<std::byte> bytes(text.size() / 2);
  for (size_t i = 0; i < bytes.size(); ++i) {
    bytes[i] = static_cast<std::byte>(hex_value(text[2 * i]) * 16 + hex_value(text[2 * i + 1]));
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    log_line(fmt::format("warning: cluster key file {} is readable by other users (mode {:o}); chmod 600 it", where,
                         st.st_mode & 0777));
  }
  ClusterKey key(std::move(bytes));
  return key;
}

void write_cluster_key(const std::filesystem::path& path, const ClusterKey& key) {
  const std::string where = path.string();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST) throw Error(fmt::format("refusing to overwrite the existing key file {}", where));
    throw Error(fmt::format("cannot create key file {}: {}", where, std::strerror(errno)));
  }
  std::string text = key.to_hex() + "\n";
  Wipe wipe{text};
  bool ok = ::fchmod(fd, 0600) == 0;
  size_t at = 0;
  while (ok && at < text.size()) {
    const ssize_t r = ::write(fd, text.data() + at, text.size() - at);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      ok = false;
      break;
    }
    at += static_cast<size_t>(r);
  }
  ok = ok && ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(path.c_str());
    throw Error(fmt::format("cannot write key file {}: {}", where, std::strerror(err)));
  }
}

// ---- proofs ----------------------------------------------------------------------------------

std::array<std::byte, 32> handshake_proof(const ClusterKey& key, Role prover, ByteSpan nonce_initiator,
                                          ByteSpan nonce_responder, ByteSpan hello_initiator,
                                          ByteSpan hello_responder) {
  static constexpr std::string_view kLabel = "hearth-handshake-v1";
  std::vector<unsigned char> t;
  t.reserve(kLabel.size() + 1 + nonce_initiator.size() + nonce_responder.size() + 8 + hello_initiator.size() +
            hello_responder.size());
  auto append = [&](ByteSpan s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    t.insert(t.end(), p, p + s.size());
  };
  auto append_u32 = [&](size_t v) {
    for (int i = 0; i < 4; ++i) t.push_back(static_cast<unsigned char>((v >> (8 * i)) & 0xff));
  };
  t.insert(t.end(), kLabel.begin(), kLabel.end());
  t.push_back(static_cast<unsigned char>(prover));
  append(nonce_initiator);
  append(nonce_responder);
  append_u32(hello_initiator.size());
  append(hello_initiator);
  append_u32(hello_responder.size());
  append(hello_responder);

  std::array<std::byte, 32> mac{};
  unsigned int mac_len = 0;
  const unsigned char* ok =
      HMAC(EVP_sha256(), key.bytes().data(), static_cast<int>(key.bytes().size()), t.data(), t.size(),
           reinterpret_cast<unsigned char*>(mac.data()), &mac_len);
  HEARTH_CHECK(ok != nullptr && mac_len == mac.size(), "HMAC-SHA256 failed");
  return mac;
}

// ---- the exchange ----------------------------------------------------------------------------

namespace {

constexpr size_t kNonceBytes = 32;
constexpr uint8_t kHelloPlaintext = 1;  // Hello flags byte (offset 3): this side asks for plaintext frames

const char* role_name(uint64_t role) {
  return role == static_cast<uint8_t>(Role::initiator)   ? "initiator"
         : role == static_cast<uint8_t>(Role::responder) ? "responder"
                                                         : "unknown";
}

struct Hello {
  uint16_t version = 0;
  uint8_t role = 0;
  ByteSpan nonce;
  bool plaintext = false;  // the peer asks for plaintext frames
  std::string capabilities;
};

std::vector<std::byte> encode_hello(uint16_t version, Role role, ByteSpan nonce, std::string_view caps, bool plaintext) {
  std::vector<std::byte> out(kHelloFixedBytes + caps.size());
  store_le(&out[0], version, 2);
  out[2] = static_cast<std::byte>(role);
  out[3] = plaintext ? std::byte{kHelloPlaintext} : std::byte{0};
  std::memcpy(&out[4], nonce.data(), kNonceBytes);
  store_le(&out[36], caps.size(), 4);
  if (!caps.empty()) std::memcpy(&out[40], caps.data(), caps.size());
  return out;
}

class Exchange {
 public:
  Exchange(Link& link, Role role, const ClusterKey& key, const HandshakeOptions& options)
      : link_(link), role_(role), key_(key), options_(options), deadline_(deadline_after(options.timeout)) {}

  HandshakeResult run();

 private:
  [[noreturn]] void refuse(const std::string& local, const std::string& to_peer) {
    const std::string message = fmt::format("handshake with {} failed: {}", link_.peer(), local);
    log_line(message);
    link_.close(message, to_peer);
    throw HandshakeError(message);
  }

  // The payload of the next message, which must be of type `type`.
  ByteSpan expect(MessageType type, const char* what);
  Hello parse_hello(ByteSpan payload);
  void send(MessageType type, ByteSpan payload);

  Link& link_;
  Role role_;
  const ClusterKey& key_;
  const HandshakeOptions& options_;
  Clock::time_point deadline_;
  ByteBuffer buffer_;
};

void Exchange::send(MessageType type, ByteSpan payload) {
  try {
    link_.send(type, payload, std::chrono::duration_cast<Timeout>(deadline_ - Clock::now()));
  } catch (const LinkError& e) {
    const std::string message = fmt::format("handshake with {} failed: {}", link_.peer(), e.what());
    link_.close(message);
    throw HandshakeError(message);
  }
}

ByteSpan Exchange::expect(MessageType type, const char* what) {
  std::optional<Message> m;
  try {
    const auto left = deadline_ - Clock::now();
    m = link_.receive(buffer_, std::max(Timeout::zero(), std::chrono::duration_cast<Timeout>(left)));
  } catch (const LinkError&) {
    std::string reason = link_.close_reason();
    static constexpr std::string_view kPeerClosed = "peer closed the link: ";
    if (reason.starts_with(kPeerClosed)) reason = "peer refused the handshake: " + reason.substr(kPeerClosed.size());
    const std::string message = fmt::format("handshake with {} failed: {}", link_.peer(), reason);
    throw HandshakeError(message);
  }
  if (!m) {
    refuse(fmt::format("timed out after {} ms waiting for the peer's {}", options_.timeout.count(), what),
           fmt::format("handshake timed out waiting for your {}", what));
  }
  if (m->type != type) {
    refuse(fmt::format("expected the peer's {} but it sent {}", what, link_.limits().describe(m->type)),
           fmt::format("protocol error: expected {}", what));
  }
  return m->payload;
}

Hello Exchange::parse_hello(ByteSpan p) {
  if (p.size() < 2) refuse(fmt::format("malformed Hello of {} bytes", p.size()), "malformed Hello");
  Hello h;
  h.version = static_cast<uint16_t>(load_le(&p[0], 2));
  if (h.version != options_.protocol_version) {
    refuse(fmt::format("peer speaks protocol version {}, we speak {}", h.version, options_.protocol_version),
           fmt::format("protocol version mismatch: you speak {}, this node speaks {}", h.version,
                       options_.protocol_version));
  }
  if (p.size() < kHelloFixedBytes) refuse(fmt::format("malformed Hello of {} bytes", p.size()), "malformed Hello");
  h.role = static_cast<uint8_t>(p[2]);
  const uint64_t caps_len = load_le(&p[36], 4);
  if ((static_cast<uint8_t>(p[3]) & ~kHelloPlaintext) != 0 || caps_len != p.size() - kHelloFixedBytes) {
    refuse(fmt::format("malformed Hello (flags byte {}, capabilities length {} in {} bytes)",
                       static_cast<unsigned>(p[3]), caps_len, p.size()),
           "malformed Hello");
  }
  const uint8_t expected_role = static_cast<uint8_t>(role_ == Role::initiator ? Role::responder : Role::initiator);
  if (h.role != expected_role) {
    refuse(fmt::format("peer's Hello claims role {} ({}), we are the {}: two {}s, or a reflected Hello",
                       role_name(h.role), h.role, role_name(static_cast<uint8_t>(role_)), role_name(h.role)),
           "unexpected role in Hello");
  }
  h.plaintext = (static_cast<uint8_t>(p[3]) & kHelloPlaintext) != 0;
  h.nonce = p.subspan(4, kNonceBytes);
  h.capabilities.assign(reinterpret_cast<const char*>(p.data()) + kHelloFixedBytes, caps_len);
  return h;
}

HandshakeResult Exchange::run() {
  HEARTH_CHECK(!link_.authenticated(), "handshake on a link that is already authenticated");
  HEARTH_CHECK(options_.capabilities.size() <= kMaxCapabilitiesBytes, "capabilities of {} bytes over the limit of {}",
               options_.capabilities.size(), kMaxCapabilitiesBytes);
  std::array<std::byte, kNonceBytes> nonce{};
  if (RAND_bytes(reinterpret_cast<unsigned char*>(nonce.data()), kNonceBytes) != 1) {
    throw HandshakeError("handshake: the OpenSSL random generator failed");
  }
  const std::vector<std::byte> my_hello =
      encode_hello(options_.protocol_version, role_, nonce, options_.capabilities, !options_.encrypt);

  std::vector<std::byte> peer_hello;
  Hello peer;
  auto receive_hello = [&] {
    const ByteSpan p = expect(msg::kHello, "Hello");
    peer_hello.assign(p.begin(), p.end());
    peer = parse_hello(peer_hello);
    if (CRYPTO_memcmp(peer.nonce.data(), nonce.data(), kNonceBytes) == 0) {
      refuse("peer's Hello repeats our own nonce (a reflected Hello)", "protocol error: reflected nonce");
    }
  };
  auto verify = [&](ByteSpan proof, Role prover, ByteSpan hello_i, ByteSpan hello_r, ByteSpan nonce_i,
                    ByteSpan nonce_r) {
    const auto expected = handshake_proof(key_, prover, nonce_i, nonce_r, hello_i, hello_r);
    if (proof.size() != expected.size() || CRYPTO_memcmp(proof.data(), expected.data(), expected.size()) != 0) {
      refuse("peer failed authentication: its proof of the cluster key does not match ours (a different cluster "
             "key, or a replayed or reflected message)",
             "authentication failed: your proof of the cluster key does not match ours (wrong cluster key?)");
    }
  };

  if (role_ == Role::initiator) {
    send(msg::kHello, my_hello);
    receive_hello();
    const auto proof = handshake_proof(key_, Role::initiator, nonce, peer.nonce, my_hello, peer_hello);
    send(msg::kAuth, proof);
    const ByteSpan peer_proof = expect(msg::kAuth, "Auth");
    verify(peer_proof, Role::responder, my_hello, peer_hello, nonce, peer.nonce);
  } else {
    receive_hello();
    send(msg::kHello, my_hello);
    const ByteSpan peer_proof = expect(msg::kAuth, "Auth");
    verify(peer_proof, Role::initiator, peer_hello, my_hello, peer.nonce, nonce);
    const auto proof = handshake_proof(key_, Role::responder, peer.nonce, nonce, peer_hello, my_hello);
    send(msg::kAuth, proof);
  }
  link_.mark_authenticated(peer.capabilities);
  // Encrypted unless both sides asked for plaintext. Each side switches after its last
  // handshake frame, before anything else is sent or received.
  bool encrypted = false;
  if (options_.encrypt || !peer.plaintext) {
    const ByteSpan nonce_i = role_ == Role::initiator ? ByteSpan(nonce) : peer.nonce;
    const ByteSpan nonce_r = role_ == Role::initiator ? peer.nonce : ByteSpan(nonce);
    LinkKeys keys = derive_link_keys(key_, role_, nonce_i, nonce_r);
    encrypted = link_.start_encryption(keys);
    OPENSSL_cleanse(&keys, sizeof keys);
  }
  return HandshakeResult{peer.capabilities, encrypted};
}

}  // namespace

namespace {
std::atomic<bool> g_encrypt_default{true};

// HKDF-SHA256 of the cluster key into 32 bytes (OpenSSL 3's KDF API).
LinkKey hkdf(const ClusterKey& key, ByteSpan salt, std::string_view info) {
  LinkKey out{};
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  EVP_KDF_CTX* ctx = kdf ? EVP_KDF_CTX_new(kdf) : nullptr;
  char digest[] = "SHA256";
  // No salt: HKDF's default (a string of zeros); OpenSSL refuses an empty salt parameter.
  OSSL_PARAM params[5];
  size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<std::byte*>(key.bytes().data()),
                                                  key.bytes().size());
  if (!salt.empty()) {
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<std::byte*>(salt.data()), salt.size());
  }
  params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<char*>(info.data()), info.size());
  params[n] = OSSL_PARAM_construct_end();
  const bool ok = ctx != nullptr && EVP_KDF_derive(ctx, reinterpret_cast<unsigned char*>(out.data()), out.size(), params) == 1;
  EVP_KDF_CTX_free(ctx);
  EVP_KDF_free(kdf);
  HEARTH_CHECK(ok, "HKDF-SHA256 failed");
  return out;
}
}  // namespace

void set_link_encryption_default(bool encrypt) { g_encrypt_default.store(encrypt); }

std::array<std::byte, 32> derive_cluster_subkey(const ClusterKey& key, ByteSpan salt, std::string_view info) {
  return hkdf(key, salt, info);
}
bool link_encryption_default() { return g_encrypt_default.load(); }

LinkKeys derive_link_keys(const ClusterKey& key, Role role, ByteSpan nonce_initiator, ByteSpan nonce_responder) {
  std::vector<std::byte> salt(nonce_initiator.begin(), nonce_initiator.end());
  salt.insert(salt.end(), nonce_responder.begin(), nonce_responder.end());
  const LinkKey from_initiator = hkdf(key, salt, "hearth-link-v1 initiator");
  const LinkKey from_responder = hkdf(key, salt, "hearth-link-v1 responder");
  return role == Role::initiator ? LinkKeys{from_initiator, from_responder} : LinkKeys{from_responder, from_initiator};
}

HandshakeResult handshake(Link& link, Role role, const ClusterKey& key, const HandshakeOptions& options) {
  Exchange exchange(link, role, key, options);
  return exchange.run();
}

}  // namespace hearth::transport
