// Encrypted links (frame_cipher.h, the handshake's key derivation), through a man in the middle
// on loopback that sees and may change every byte: no plaintext of what the peers exchange
// crosses the wire; a frame altered in transit (payload or header) or replayed (as it was, or
// with its sequence rewritten) closes the link with a logged reason; plaintext only when both
// sides ask for it; keys differ per direction and per connection.
#include "transport_test_util.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <functional>
#include <thread>

#include "transport/frame_cipher.h"

namespace hearth::transport::test {
namespace {

using Bytes = std::vector<std::byte>;

// Reads exactly n bytes from a blocking socket; false at EOF or error.
bool read_all(int fd, std::byte* p, size_t n) {
  while (n > 0) {
    const ssize_t r = ::recv(fd, p, n, 0);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool write_all(int fd, const Bytes& b) {
  size_t at = 0;
  while (at < b.size()) {
    const ssize_t r = ::send(fd, b.data() + at, b.size() - at, MSG_NOSIGNAL);
    if (r <= 0) return false;
    at += static_cast<size_t>(r);
  }
  return true;
}

// A man in the middle: accepts one connection, connects it to 127.0.0.1:target and forwards
// both ways. The client-to-server stream is cut into frames; `edit(index, frame)` returns what
// goes on instead of frame `index` (the frame itself, changed, twice, or nothing). Every byte
// that passed either way is kept.
class Proxy {
 public:
  using Edit = std::function<std::vector<Bytes>(size_t, Bytes)>;
  Proxy(uint16_t target, Edit edit) : target_(target), edit_(std::move(edit)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(listen_fd_, 4), 0);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~Proxy() {
    ::shutdown(listen_fd_, SHUT_RDWR);
    for (int fd : {client_fd_.load(), server_fd_.load()}) {
      if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
    }
    thread_.join();
    for (int fd : {listen_fd_, client_fd_.load(), server_fd_.load()}) {
      if (fd >= 0) ::close(fd);
    }
  }
  uint16_t port() const { return port_; }
  Bytes seen() {
    std::lock_guard lock(mutex_);
    return seen_;
  }

 private:
  void keep(const Bytes& b) {
    std::lock_guard lock(mutex_);
    seen_.insert(seen_.end(), b.begin(), b.end());
  }
  void run() {
    const int c = ::accept(listen_fd_, nullptr, nullptr);
    if (c < 0) return;
    client_fd_ = c;
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    server_fd_ = s;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(target_);
    if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return;
    std::thread back([this, c, s] {
      std::byte chunk[4096];
      for (;;) {
        const ssize_t r = ::recv(s, chunk, sizeof chunk, 0);
        if (r <= 0) break;
        const Bytes b(chunk, chunk + r);
        keep(b);
        if (!write_all(c, b)) break;
      }
      ::shutdown(c, SHUT_WR);
    });
    for (size_t index = 0;; ++index) {
      Bytes frame(kFrameHeaderSize);
      if (!read_all(c, frame.data(), frame.size())) break;
      const uint64_t length = load_le(&frame[16], 8);
      frame.resize(kFrameHeaderSize + length);
      if (!read_all(c, frame.data() + kFrameHeaderSize, length)) break;
      keep(frame);
      bool ok = true;
      for (const Bytes& out : edit_(index, frame)) ok = ok && write_all(s, out);
      if (!ok) break;
    }
    ::shutdown(s, SHUT_WR);
    back.join();
  }

  uint16_t target_;
  Edit edit_;
  int listen_fd_ = -1;
  std::atomic<int> client_fd_{-1}, server_fd_{-1};
  uint16_t port_ = 0;
  std::thread thread_;
  std::mutex mutex_;
  Bytes seen_;
};

Proxy::Edit pass() {
  return [](size_t, Bytes f) { return std::vector<Bytes>{std::move(f)}; };
}

bool contains(const Bytes& haystack, std::string_view needle) {
  const auto n = as_bytes(needle);
  return std::search(haystack.begin(), haystack.end(), n.begin(), n.end()) != haystack.end();
}

// A client and a server link through `proxy`, handshaken (client asks for plaintext when
// `client_plain`, the server when `server_plain`).
struct Through {
  std::unique_ptr<Link> client, server;
  HandshakeResult client_result, server_result;
};
Through connect_through(TcpListener& listener, Proxy& proxy, bool client_plain = false, bool server_plain = false) {
  Through t;
  t.client = tcp_connect("127.0.0.1", proxy.port(), Timeout(10000), test_limits());
  t.server = listener.accept(Timeout(10000));
  EXPECT_NE(t.server, nullptr);
  std::thread responder([&] {
    HandshakeOptions o;
    o.encrypt = !server_plain;
    t.server_result = handshake(*t.server, Role::responder, key_a(), o);
  });
  HandshakeOptions o;
  o.encrypt = !client_plain;
  t.client_result = handshake(*t.client, Role::initiator, key_a(), o);
  responder.join();
  return t;
}

constexpr std::string_view kPrompt = "the secret prompt: purple elephants dance at midnight";
constexpr std::string_view kAnswer = "the generated answer: seven blue whales";

TEST(LinkEncryption, NothingThePeersSayCrossesTheWireInClear) {
  for (const bool plain : {false, true}) {
    TcpListener listener(test_limits());
    Proxy proxy(listener.port(), pass());
    Through t = connect_through(listener, proxy, plain, plain);
    EXPECT_EQ(t.client_result.encrypted, !plain);
    EXPECT_EQ(t.server_result.encrypted, !plain);
    EXPECT_EQ(t.client->encrypted(), !plain);
    t.client->send(kSmall, as_bytes(kPrompt), Timeout(10000));
    ByteBuffer buffer;
    auto m = t.server->receive(buffer, Timeout(10000));
    ASSERT_TRUE(m);
    EXPECT_EQ(as_string(m->payload), kPrompt);  // the peers see their plaintext
    t.server->send(kSmall, as_bytes(kAnswer), Timeout(10000));
    m = t.client->receive(buffer, Timeout(10000));
    ASSERT_TRUE(m);
    EXPECT_EQ(as_string(m->payload), kAnswer);
    // The wire does not, unless both asked for plaintext (the control that the check can fail).
    const Bytes wire = proxy.seen();
    EXPECT_EQ(contains(wire, kPrompt), plain);
    EXPECT_EQ(contains(wire, kAnswer), plain);
    EXPECT_EQ(contains(wire, "purple"), plain);
    t.client->close();
    t.server->close();
  }
}

TEST(LinkEncryption, PlaintextOnlyWhenBothSidesAsk) {
  for (const auto& [client_plain, server_plain] : {std::pair{true, false}, std::pair{false, true}}) {
    TcpListener listener(test_limits());
    Proxy proxy(listener.port(), pass());
    Through t = connect_through(listener, proxy, client_plain, server_plain);
    EXPECT_TRUE(t.client->encrypted() && t.server->encrypted()) << client_plain << server_plain;
    t.client->send(kSmall, as_bytes(kPrompt), Timeout(10000));
    ByteBuffer buffer;
    ASSERT_TRUE(t.server->receive(buffer, Timeout(10000)));
    EXPECT_FALSE(contains(proxy.seen(), kPrompt));
  }
}

// The reason the server's link gives when the proxy turns the client's first frame after the
// handshake (frame 2: Hello and Auth are 0 and 1) into `edited`.
std::string refusal(const std::function<std::vector<Bytes>(Bytes)>& edit, int frames_to_send = 1) {
  LogCapture log;
  TcpListener listener(test_limits());
  Proxy proxy(listener.port(), [&](size_t index, Bytes f) {
    return index == 2 ? edit(std::move(f)) : std::vector<Bytes>{std::move(f)};
  });
  Through t = connect_through(listener, proxy);
  for (int i = 0; i < frames_to_send; ++i) t.client->send(kSmall, as_bytes(kPrompt), Timeout(10000));
  ByteBuffer buffer;
  try {
    for (int i = 0; i < 4; ++i) {
      if (!t.server->receive(buffer, Timeout(10000))) return "(no error: the receive timed out)";
    }
  } catch (const FrameError& e) {
    EXPECT_TRUE(t.server->is_closed());
    EXPECT_NE(t.server->close_reason().find(e.what()), std::string::npos) << t.server->close_reason();
    EXPECT_TRUE(log.contains(e.what())) << "the refusal is logged";
    return e.what();
  } catch (const LinkError& e) {
    return std::string("(another link error) ") + e.what();
  }
  return "(no error)";
}

TEST(LinkEncryption, AnAlteredFrameClosesTheLink) {
  // A flipped payload byte (ciphertext or tag): the tag does not verify.
  EXPECT_NE(refusal([](Bytes f) {
              f[kFrameHeaderSize + 3] ^= std::byte{0x01};
              return std::vector<Bytes>{f};
            }).find("failed authentication"),
            std::string::npos);
  EXPECT_NE(refusal([](Bytes f) {
              f.back() ^= std::byte{0x80};
              return std::vector<Bytes>{f};
            }).find("failed authentication"),
            std::string::npos);
  // A changed header field that the header check lets through (the type, to another known one):
  // authenticated as associated data, so the tag fails too.
  EXPECT_NE(refusal([](Bytes f) {
              store_le(&f[6], kData, 2);
              return std::vector<Bytes>{f};
            }).find("failed authentication"),
            std::string::npos);
  // The flag removed (a plaintext frame slipped in): refused by the header check.
  EXPECT_NE(refusal([](Bytes f) {
              store_le(&f[8], 0, 4);
              return std::vector<Bytes>{f};
            }).find("unencrypted frame on an encrypted link"),
            std::string::npos);
}

TEST(LinkEncryption, AReplayedFrameClosesTheLink) {
  // The same frame twice: the second has an old sequence number.
  EXPECT_NE(refusal([](Bytes f) { return std::vector<Bytes>{f, f}; }).find("sequence number 2, expected 3"),
            std::string::npos);
  // Replayed with its sequence number rewritten to the expected one (the next frame dropped, so
  // the stream stays in step): the nonce differs, the tag fails.
  EXPECT_NE(refusal(
                [](Bytes f) {
                  Bytes again = f;
                  store_le(&again[24], 3, 8);
                  return std::vector<Bytes>{f, again};
                })
                .find("frame 3 failed authentication"),
            std::string::npos);
}

TEST(LinkEncryption, KeysDifferPerDirectionAndPerConnection) {
  const ClusterKey key = key_a();
  const Bytes n1(32, std::byte{1}), n2(32, std::byte{2}), n3(32, std::byte{3});
  const LinkKeys i = derive_link_keys(key, Role::initiator, n1, n2);
  const LinkKeys r = derive_link_keys(key, Role::responder, n1, n2);
  EXPECT_EQ(i.send, r.receive);
  EXPECT_EQ(i.receive, r.send);
  EXPECT_NE(i.send, i.receive);
  EXPECT_NE(derive_link_keys(key, Role::initiator, n1, n3).send, i.send);               // a fresh nonce: new keys
  EXPECT_NE(derive_link_keys(key_b(), Role::initiator, n1, n2).send, i.send);           // another cluster key
}

}  // namespace
}  // namespace hearth::transport::test
