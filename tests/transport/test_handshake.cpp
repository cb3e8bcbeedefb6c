// Handshake: right key accepted on both sides; wrong key, other version, silence, garbage,
// replayed and reflected messages refused with a message that says which.
#include "transport_test_util.h"

#include <future>

namespace hearth::transport::test {
namespace {

struct Outcome {
  bool ok = false;
  std::string error;  // HandshakeError message
  std::string peer_capabilities;
};

Outcome run_handshake(Link& link, Role role, const ClusterKey& key, HandshakeOptions options) {
  Outcome o;
  try {
    o.peer_capabilities = handshake(link, role, key, options).peer_capabilities;
    o.ok = true;
  } catch (const HandshakeError& e) {
    o.error = e.what();
  }
  return o;
}

struct Both {
  Outcome initiator, responder;
};

Both handshake_both(LinkPair& p, const ClusterKey& key_i, const ClusterKey& key_r, HandshakeOptions opt_i = {},
                    HandshakeOptions opt_r = {}) {
  if (opt_i.capabilities.empty()) opt_i.capabilities = R"({"node":"initiator"})";
  if (opt_r.capabilities.empty()) opt_r.capabilities = R"({"node":"responder"})";
  auto responder = std::async(std::launch::async, [&] { return run_handshake(*p.b, Role::responder, key_r, opt_r); });
  Both both;
  both.initiator = run_handshake(*p.a, Role::initiator, key_i, opt_i);
  both.responder = responder.get();
  return both;
}

class HandshakeOverLink : public ::testing::TestWithParam<std::string> {
 protected:
  LinkPair make() { return GetParam() == "tcp" ? tcp_pair() : local_pair(); }
  LogCapture log_;
};

TEST_P(HandshakeOverLink, RightKeyIsAcceptedOnBothSides) {
  LinkPair p = make();
  EXPECT_FALSE(p.a->authenticated());
  const Both r = handshake_both(p, key_a(), key_a());
  ASSERT_TRUE(r.initiator.ok) << r.initiator.error;
  ASSERT_TRUE(r.responder.ok) << r.responder.error;
  EXPECT_EQ(r.initiator.peer_capabilities, R"({"node":"responder"})");
  EXPECT_EQ(r.responder.peer_capabilities, R"({"node":"initiator"})");
  EXPECT_TRUE(p.a->authenticated());
  EXPECT_TRUE(p.b->authenticated());
  EXPECT_EQ(p.b->peer_capabilities(), R"({"node":"initiator"})");

  p.a->send(kSmall, as_bytes("after the handshake"), Timeout(5000));
  ByteBuffer buffer;
  auto m = p.b->receive(buffer, Timeout(5000));
  ASSERT_TRUE(m);
  EXPECT_EQ(as_string(m->payload), "after the handshake");
}

TEST_P(HandshakeOverLink, WrongKeyIsRefusedOnBothSides) {
  LinkPair p = make();
  const Both r = handshake_both(p, key_b(), key_a());
  ASSERT_FALSE(r.initiator.ok);
  ASSERT_FALSE(r.responder.ok);
  EXPECT_NE(r.responder.error.find("peer failed authentication"), std::string::npos) << r.responder.error;
  EXPECT_NE(r.initiator.error.find("peer refused the handshake: authentication failed"), std::string::npos)
      << r.initiator.error;
  EXPECT_TRUE(p.a->is_closed());
  EXPECT_TRUE(p.b->is_closed());
  EXPECT_FALSE(p.a->authenticated());
  EXPECT_FALSE(p.b->authenticated());
  EXPECT_TRUE(log_.contains("peer failed authentication"));
  // Each side's link records its own view; the responder told the initiator its side.
  EXPECT_NE(p.b->close_reason().find("peer failed authentication"), std::string::npos) << p.b->close_reason();
  EXPECT_NE(p.a->close_reason().find("peer closed the link: authentication failed"), std::string::npos)
      << p.a->close_reason();
}

TEST_P(HandshakeOverLink, VersionMismatchIsNamedOnBothSides) {
  for (bool initiator_is_newer : {true, false}) {
    const uint16_t next = kProtocolVersion + 1;
    SCOPED_TRACE(initiator_is_newer ? "the initiator is newer" : "the responder is newer");
    LinkPair p = make();
    HandshakeOptions newer;
    newer.protocol_version = next;
    const Both r = initiator_is_newer ? handshake_both(p, key_a(), key_a(), newer, {})
                                      : handshake_both(p, key_a(), key_a(), {}, newer);
    ASSERT_FALSE(r.initiator.ok);
    ASSERT_FALSE(r.responder.ok);
    // The responder reads the first Hello and detects the mismatch; the initiator learns it
    // from the responder's Close. Both messages name both versions.
    const uint16_t theirs = initiator_is_newer ? next : kProtocolVersion, ours = initiator_is_newer ? kProtocolVersion : next;
    EXPECT_NE(r.responder.error.find(fmt::format("peer speaks protocol version {}, we speak {}", theirs, ours)),
              std::string::npos)
        << r.responder.error;
    const std::string told = fmt::format(
        "peer refused the handshake: protocol version mismatch: you speak {}, this node speaks {}", theirs, ours);
    EXPECT_NE(r.initiator.error.find(told), std::string::npos)
        << r.initiator.error;
  }
}

INSTANTIATE_TEST_SUITE_P(Links, HandshakeOverLink, ::testing::Values("tcp", "local"),
                         [](const auto& param_info) { return param_info.param; });

TEST(Handshake, SilentPeerTimesOut) {
  LogCapture log;
  auto limits = test_limits();
  TcpListener listener(limits);
  RawSocket silent(listener.port());
  auto link = listener.accept(Timeout(10000));
  ASSERT_TRUE(link);
  HandshakeOptions options;
  options.timeout = Timeout(300);
  const auto t0 = std::chrono::steady_clock::now();
  const Outcome o = run_handshake(*link, Role::responder, key_a(), options);
  EXPECT_FALSE(o.ok);
  EXPECT_NE(o.error.find("timed out after 300 ms waiting for the peer's Hello"), std::string::npos) << o.error;
  EXPECT_GE(seconds_since(t0), 0.29);
  EXPECT_LT(seconds_since(t0), 10.0);
  EXPECT_TRUE(link->is_closed());
}

TEST(Handshake, PeerStallingMidHelloTimesOut) {
  LogCapture log;
  auto limits = test_limits();
  TcpListener listener(limits);
  RawSocket raw(listener.port());
  auto link = listener.accept(Timeout(10000));
  ASSERT_TRUE(link);
  const std::byte nonce[32] = {};
  auto hello = frame_bytes(msg::kHello, 0, hello_payload(1, Role::initiator, nonce, "{}"));
  ASSERT_TRUE(raw.write(ByteSpan(hello).first(hello.size() - 3)));
  HandshakeOptions options;
  options.timeout = Timeout(300);
  const Outcome o = run_handshake(*link, Role::responder, key_a(), options);
  EXPECT_NE(o.error.find("timed out"), std::string::npos) << o.error;
}

TEST(Handshake, GarbageIsRefusedWithTheReason) {
  LogCapture log;
  auto limits = test_limits();
  TcpListener listener(limits);
  RawSocket raw(listener.port());
  auto link = listener.accept(Timeout(10000));
  ASSERT_TRUE(link);
  ASSERT_TRUE(raw.write(as_bytes("GET / HTTP/1.1\r\nHost: example\r\n\r\n")));
  const Outcome o = run_handshake(*link, Role::responder, key_a(), {});
  EXPECT_FALSE(o.ok);
  EXPECT_NE(o.error.find("bad frame magic"), std::string::npos) << o.error;
  FrameHeader h;
  std::vector<std::byte> payload;
  ASSERT_TRUE(raw.read_frame(h, payload));
  EXPECT_EQ(h.type, msg::kClose);
  EXPECT_NE(as_string(payload).find("bad frame magic"), std::string::npos);
}

TEST(Handshake, UserMessageBeforeHelloIsRefused) {
  LogCapture log;
  LinkPair p = local_pair();
  p.a->send(kSmall, as_bytes("let me in"), Timeout(1000));
  const Outcome o = run_handshake(*p.b, Role::responder, key_a(), {});
  EXPECT_NE(o.error.find("expected the peer's Hello but it sent small (257)"), std::string::npos) << o.error;
}

// Forwards every message between two link pairs and records what the initiator sent.
struct Tap {
  std::vector<std::pair<MessageType, std::vector<std::byte>>> from_initiator, from_responder;
};

TEST(Handshake, ReplayedHelloAndAuthAreRefused) {
  LogCapture log;
  auto limits = test_limits();
  // A legitimate session, recorded by a man in the middle that forwards everything.
  LinkPair left = local_pair(limits), right = local_pair(limits);
  Tap tap;
  auto forward = [](Link& from, Link& to, std::vector<std::pair<MessageType, std::vector<std::byte>>>& record) {
    ByteBuffer buffer;
    for (int i = 0; i < 2; ++i) {
      auto m = from.receive(buffer, Timeout(10000));
      if (!m) return;
      record.emplace_back(m->type, std::vector<std::byte>(m->payload.begin(), m->payload.end()));
      to.send(m->type, m->payload, Timeout(10000));
    }
  };
  std::thread up([&] { forward(*left.b, *right.a, tap.from_initiator); });
  std::thread down([&] { forward(*right.a, *left.b, tap.from_responder); });
  auto responder =
      std::async(std::launch::async, [&] { return run_handshake(*right.b, Role::responder, key_a(), {}); });
  const Outcome first = run_handshake(*left.a, Role::initiator, key_a(), {});
  up.join();
  down.join();
  ASSERT_TRUE(first.ok) << first.error;
  ASSERT_TRUE(responder.get().ok);
  ASSERT_EQ(tap.from_initiator.size(), 2u);

  // Replay the initiator's Hello and Auth to a fresh responder: its new nonce makes the
  // recorded proof worthless.
  LinkPair fresh = local_pair(limits);
  auto victim = std::async(std::launch::async, [&] { return run_handshake(*fresh.b, Role::responder, key_a(), {}); });
  for (auto& [type, payload] : tap.from_initiator) fresh.a->send(type, payload, Timeout(5000));
  const Outcome replayed = victim.get();
  EXPECT_FALSE(replayed.ok);
  EXPECT_NE(replayed.error.find("peer failed authentication"), std::string::npos) << replayed.error;
  EXPECT_FALSE(fresh.b->authenticated());

  // A responder's recorded Hello sent to a responder: wrong role.
  LinkPair fresh2 = local_pair(limits);
  auto victim2 = std::async(std::launch::async, [&] { return run_handshake(*fresh2.b, Role::responder, key_a(), {}); });
  fresh2.a->send(tap.from_responder[0].first, tap.from_responder[0].second, Timeout(5000));
  const Outcome wrong_role = victim2.get();
  EXPECT_NE(wrong_role.error.find("claims role responder"), std::string::npos) << wrong_role.error;
}

TEST(Handshake, ReflectedHelloIsRefused) {
  LogCapture log;
  // A peer that echoes every message back: the initiator sees its own Hello.
  LinkPair p = local_pair();
  std::thread mirror([&] {
    ByteBuffer buffer;
    try {
      while (auto m = p.b->receive(buffer, Timeout(10000))) p.b->send(m->type, m->payload, Timeout(1000));
    } catch (const LinkError&) {
    }
  });
  const Outcome o = run_handshake(*p.a, Role::initiator, key_a(), {});
  mirror.join();
  EXPECT_FALSE(o.ok);
  EXPECT_NE(o.error.find("claims role initiator"), std::string::npos) << o.error;

  // A reflected Hello with the role byte patched still carries our own nonce.
  LinkPair q = local_pair();
  std::thread patcher([&] {
    ByteBuffer buffer;
    try {
      while (auto m = q.b->receive(buffer, Timeout(10000))) {
        std::vector<std::byte> copy(m->payload.begin(), m->payload.end());
        if (m->type == msg::kHello) copy[2] = static_cast<std::byte>(Role::responder);
        q.b->send(m->type, copy, Timeout(1000));
      }
    } catch (const LinkError&) {
    }
  });
  const Outcome o2 = run_handshake(*q.a, Role::initiator, key_a(), {});
  patcher.join();
  EXPECT_NE(o2.error.find("repeats our own nonce"), std::string::npos) << o2.error;
}

TEST(Handshake, ProofBindsRoleNoncesAndHellos) {
  const ClusterKey key = key_a();
  std::vector<std::byte> ni(32, std::byte{1}), nr(32, std::byte{2});
  const auto hi = as_bytes("hello-i"), hr = as_bytes("hello-r");
  const auto base = handshake_proof(key, Role::initiator, ni, nr, hi, hr);
  EXPECT_EQ(base, handshake_proof(key, Role::initiator, ni, nr, hi, hr));
  EXPECT_NE(base, handshake_proof(key, Role::responder, ni, nr, hi, hr));
  EXPECT_NE(base, handshake_proof(key, Role::initiator, nr, ni, hi, hr));
  EXPECT_NE(base, handshake_proof(key, Role::initiator, ni, nr, hr, hi));
  EXPECT_NE(base, handshake_proof(key_b(), Role::initiator, ni, nr, hi, hr));
  // Length prefixes: moving a byte from one hello to the other changes the proof.
  EXPECT_NE(base, handshake_proof(key, Role::initiator, ni, nr, as_bytes("hello-ih"), as_bytes("ello-r")));
}

}  // namespace
}  // namespace hearth::transport::test
