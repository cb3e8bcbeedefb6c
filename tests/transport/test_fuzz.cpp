// Fuzz-style hardening over real TCP: thousands of random and mutated frames (flipped bytes,
// truncations, wrong lengths, wrong types, garbage), before and after authentication (then
// encrypted, as links are), on many connections to one listening endpoint. The endpoint must refuse every bad connection cleanly
// (close it; never crash or hang) while an authenticated peer on its own connection keeps
// exchanging frames correctly the whole time. Seeded: the same frames every run.
#include "transport_test_util.h"

#include "transport/frame_cipher.h"

#include <random>

namespace hearth::transport::test {
namespace {

constexpr MessageType kEcho = 300;
constexpr uint64_t kEchoLimit = 64 << 10;

std::shared_ptr<const FrameLimits> fuzz_limits() {
  auto limits = std::make_shared<FrameLimits>();
  limits->allow(kEcho, kEchoLimit, "echo");
  return limits;
}

// The endpoint: accepts, authenticates, then echoes kEcho messages; anything else ends the
// connection. One thread per connection.
class EchoServer {
 public:
  EchoServer(std::shared_ptr<const FrameLimits> limits, const ClusterKey& key)
      : listener_(std::move(limits)), key_(key) {
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~EchoServer() {
    stop_ = true;
    listener_.close();
    acceptor_.join();
    std::lock_guard lock(mutex_);
    for (auto& t : handlers_) t.join();
  }
  uint16_t port() const { return listener_.port(); }

  std::atomic<uint64_t> accepted{0}, authenticated{0}, refused{0}, echoed{0}, unexpected{0};
  std::mutex unexpected_mutex;
  std::string unexpected_what;

 private:
  void accept_loop() {
    while (!stop_) {
      std::unique_ptr<TcpLink> link;
      try {
        link = listener_.accept(Timeout(200));
      } catch (const std::exception& e) {
        note_unexpected(e.what());
        continue;
      }
      if (!link) continue;
      ++accepted;
      std::lock_guard lock(mutex_);
      handlers_.emplace_back([this, l = std::shared_ptr<TcpLink>(std::move(link))] { serve(*l); });
    }
  }
  void serve(Link& link) {
    try {
      HandshakeOptions options;
      options.timeout = Timeout(10000);
      handshake(link, Role::responder, key_, options);
      ++authenticated;
      ByteBuffer buffer;
      while (auto m = link.receive(buffer, Timeout(10000))) {
        if (m->type != kEcho) {
          link.close("unexpected message");
          throw LinkError("unexpected message type");
        }
        link.send(kEcho, m->payload, Timeout(10000));
        ++echoed;
      }
      note_unexpected("a connection went silent for 10 s");
    } catch (const LinkError&) {
      ++refused;
    } catch (const std::exception& e) {
      note_unexpected(e.what());
    }
  }
  void note_unexpected(const std::string& what) {
    ++unexpected;
    std::lock_guard lock(unexpected_mutex);
    unexpected_what = what;
  }

  TcpListener listener_;
  const ClusterKey& key_;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::mutex mutex_;
  std::vector<std::thread> handlers_;
};

using Bytes = std::vector<std::byte>;

// One mutation of a valid frame, or garbage.
Bytes mutate(Bytes frame, std::mt19937_64& rng) {
  auto pick = [&](uint64_t n) { return n == 0 ? 0 : rng() % n; };
  switch (pick(6)) {
    case 0:  // flip 1..4 bytes anywhere
      for (uint64_t i = 0, n = 1 + pick(4); i < n; ++i) frame[pick(frame.size())] ^= std::byte(1 + pick(255));
      break;
    case 1:  // flip a byte of the header
      frame[pick(kFrameHeaderSize)] ^= std::byte(1 + pick(255));
      break;
    case 2:  // truncate
      frame.resize(pick(frame.size()));
      break;
    case 3: {  // a wrong payload length: small, near a limit, or huge
      const uint64_t choices[] = {pick(64), kEchoLimit + 1 + pick(16), 1ull << (32 + pick(31)), ~0ull, pick(1 << 20)};
      store_le(&frame[16], choices[pick(5)], 8);
      break;
    }
    case 4:  // a different type
      store_le(&frame[6], pick(2) ? pick(8) : pick(65536), 2);
      break;
    default: {  // random garbage, sometimes behind a valid magic
      frame.resize(pick(200));
      for (auto& b : frame) b = std::byte(pick(256));
      if (frame.size() >= 4 && pick(2)) store_le(&frame[0], kFrameMagic, 4);
      break;
    }
  }
  return frame;
}

Bytes random_payload(std::mt19937_64& rng, size_t max) {
  Bytes p(rng() % (max + 1));
  for (auto& b : p) b = std::byte(rng() & 0xff);
  return p;
}

// The initiator's side of an encrypted link driven by hand on a raw socket (so the test can
// then write arbitrary bytes): the handshake, then frames sealed and opened as TcpLink does.
struct RawLink {
  uint64_t send_seq = 0, receive_seq = 0;
  std::unique_ptr<FrameCipher> seal, open;

  // A sealed frame of `payload` (not sent; the sequence advances).
  Bytes frame(MessageType type, ByteSpan payload) {
    const HeaderBytes h = encode_frame_header({type, payload.size() + kFrameTagLength, send_seq, kFrameEncrypted});
    Bytes body;
    const ByteSpan segments[] = {payload};
    seal->seal(h, send_seq++, segments, body);
    Bytes out(h.begin(), h.end());
    out.insert(out.end(), body.begin(), body.end());
    return out;
  }
  // The next frame from the peer, opened; false when it is missing or does not authenticate.
  bool read(RawSocket& s, FrameHeader& h, Bytes& payload) {
    HeaderBytes raw;
    if (!s.read_exact(raw.data(), raw.size())) return false;
    h = decode_frame_header(raw, *fuzz_limits(), receive_seq, true);
    payload.resize(h.payload_length);
    if (!s.read_exact(payload.data(), payload.size()) || !open->open(raw, receive_seq++, payload)) return false;
    payload.resize(payload.size() - kFrameTagLength);
    return true;
  }
};

// Does the handshake by hand; false on failure.
bool raw_handshake(RawSocket& s, const ClusterKey& key, std::mt19937_64& rng, RawLink& link) {
  Bytes nonce(32);
  for (auto& b : nonce) b = std::byte(rng() & 0xff);
  const Bytes hello = hello_payload(kProtocolVersion, Role::initiator, nonce, "{\"fuzz\":true}");
  if (!s.write(frame_bytes(msg::kHello, 0, hello))) return false;
  FrameHeader h;
  Bytes peer_hello;
  if (!s.read_frame(h, peer_hello) || h.type != msg::kHello || peer_hello.size() < kHelloFixedBytes) return false;
  const ByteSpan peer_nonce = ByteSpan(peer_hello).subspan(4, 32);
  const auto proof = handshake_proof(key, Role::initiator, nonce, peer_nonce, hello, peer_hello);
  if (!s.write(frame_bytes(msg::kAuth, 1, proof))) return false;
  Bytes peer_proof;
  if (!s.read_frame(h, peer_proof) || h.type != msg::kAuth) return false;
  const LinkKeys keys = derive_link_keys(key, Role::initiator, nonce, peer_nonce);
  link.send_seq = link.receive_seq = 2;
  link.seal = std::make_unique<FrameCipher>(keys.send);
  link.open = std::make_unique<FrameCipher>(keys.receive);
  return true;
}

TEST(TransportFuzz, MutatedFramesNeverHurtTheEndpointOrAnHonestPeer) {
  LogCapture quiet;  // thousands of refusals are logged; keep them off the terminal
  auto limits = fuzz_limits();
  const ClusterKey key = key_a();
  EchoServer server(limits, key);

  // The honest peer: authenticated, echoing random multi-segment payloads until told to stop.
  std::atomic<bool> fuzzing{true};
  std::atomic<uint64_t> honest_round_trips{0};
  std::string honest_error;
  std::thread honest([&] {
    try {
      auto link = tcp_connect("127.0.0.1", server.port(), Timeout(10000), limits);
      handshake(*link, Role::initiator, key, {});
      std::mt19937_64 rng(7);
      ByteBuffer buffer;
      while (fuzzing || honest_round_trips < 100) {
        const Bytes a = random_payload(rng, 3000), b = random_payload(rng, 3000);
        const ByteSpan segments[] = {a, b};
        link->send(kEcho, segments, Timeout(20000));
        auto m = link->receive(buffer, Timeout(20000));
        if (!m) throw Error("no echo within 20 s");
        Bytes expected = a;
        expected.insert(expected.end(), b.begin(), b.end());
        if (m->type != kEcho || !std::equal(expected.begin(), expected.end(), m->payload.begin(), m->payload.end())) {
          throw Error("echo differs from what was sent");
        }
        ++honest_round_trips;
      }
    } catch (const std::exception& e) {
      honest_error = e.what();
    }
  });

  constexpr int kThreads = 4;
  constexpr int kConnectionsPerThread = 1000;
  std::atomic<uint64_t> frames_sent{0}, valid_mutated{0}, bad_connections{0}, not_closed{0}, wrong_echo{0};
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> fuzzers;
  for (int t = 0; t < kThreads; ++t) {
    fuzzers.emplace_back([&, t] {
      std::mt19937_64 rng(1000 + t);
      for (int c = 0; c < kConnectionsPerThread; ++c) {
        RawSocket s(server.port());
        s.set_abortive_close();
        if (!s.connected()) {
          ++not_closed;
          continue;
        }
        ++bad_connections;
        if (c % 2 == 0) {
          // Before authentication: a mutated Hello (and Auth), then random frames.
          Bytes nonce(32, std::byte{3});
          Bytes stream = mutate(frame_bytes(msg::kHello, 0, hello_payload(1, Role::initiator, nonce, "{}")), rng);
          uint64_t frames = 1;
          for (uint64_t i = 0, n = rng() % 3; i < n; ++i, ++frames) {
            Bytes f = mutate(frame_bytes(static_cast<MessageType>(rng() % 6), 1 + i, random_payload(rng, 64)), rng);
            stream.insert(stream.end(), f.begin(), f.end());
          }
          s.write(stream);
          frames_sent += frames;
        } else {
          // After authentication: echo frames with flipped payload bytes (valid: must come
          // back exactly), then one mutated frame (its header or length wrong).
          RawLink link;
          if (!raw_handshake(s, key, rng, link)) {
            ++wrong_echo;
            continue;
          }
          for (int i = 0; i < 6; ++i) {
            Bytes payload = random_payload(rng, 512);
            if (!payload.empty()) payload[rng() % payload.size()] ^= std::byte{0x80};
            s.write(link.frame(kEcho, payload));
            FrameHeader h;
            Bytes echo;
            if (!link.read(s, h, echo) || h.type != kEcho || echo != payload) ++wrong_echo;
            ++valid_mutated;
          }
          // Any change to a sealed frame makes it invalid: the header is checked, and the
          // header and payload are authenticated.
          s.write(mutate(link.frame(kEcho, random_payload(rng, 256)), rng));
          ++frames_sent;
        }
        // Refused cleanly: the endpoint ends the connection (a Close frame may come first).
        s.shutdown_write();
        if (!s.read_until_eof()) ++not_closed;
      }
    });
  }
  for (auto& f : fuzzers) f.join();
  const double fuzz_seconds = seconds_since(t0);
  fuzzing = false;
  honest.join();

  std::printf("[ fuzz     ] %llu bad frames + %llu valid frames with flipped payload bytes on %llu connections "
              "in %.2f s; honest peer: %llu round trips\n",
              static_cast<unsigned long long>(frames_sent.load()),
              static_cast<unsigned long long>(valid_mutated.load()),
              static_cast<unsigned long long>(bad_connections.load()), fuzz_seconds,
              static_cast<unsigned long long>(honest_round_trips.load()));
  EXPECT_GE(frames_sent.load() + valid_mutated.load(), 10000u);
  EXPECT_EQ(not_closed.load(), 0u) << "connections the endpoint did not close";
  EXPECT_EQ(wrong_echo.load(), 0u) << "valid frames after authentication that did not echo correctly";
  EXPECT_TRUE(honest_error.empty()) << honest_error;
  EXPECT_GE(honest_round_trips.load(), 100u);
  {
    std::lock_guard lock(server.unexpected_mutex);
    EXPECT_EQ(server.unexpected.load(), 0u) << server.unexpected_what;
  }
  // Every fuzzing connection ended in a refusal on the server side, and so did the honest one
  // when its thread closed it at the end.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (server.refused.load() < bad_connections.load() + 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server.refused.load(), bad_connections.load() + 1);
  EXPECT_EQ(server.authenticated.load(), bad_connections.load() / 2 + 1);
}

}  // namespace
}  // namespace hearth::transport::test
