// Frames round-trip over TcpLink and LocalLink: several types, scatter-gather segments,
// zero-length and 64 MiB payloads, a peer that writes one byte at a time, close and sequence.
#include "transport_test_util.h"

#include <numeric>

namespace hearth::transport::test {
namespace {

TEST(FrameHeader, LayoutIsLittleEndianWithMagicHRTH) {
  const HeaderBytes h = encode_frame_header({kData, 0x0102030405060708ull, 0x1122334455667788ull});
  EXPECT_EQ(as_string(ByteSpan(h.data(), 4)), "HRTH");
  EXPECT_EQ(load_le(&h[4], 2), kProtocolVersion);
  EXPECT_EQ(load_le(&h[6], 2), kData);
  EXPECT_EQ(load_le(&h[8], 8), 0u);  // flags + reserved
  EXPECT_EQ(static_cast<unsigned>(h[16]), 0x08u);
  EXPECT_EQ(load_le(&h[16], 8), 0x0102030405060708ull);
  EXPECT_EQ(load_le(&h[24], 8), 0x1122334455667788ull);

  FrameLimits limits;
  limits.allow(kData, ~0ull, "data");
  const FrameHeader d = decode_frame_header(h, limits, 0x1122334455667788ull);
  EXPECT_EQ(d.type, kData);
  EXPECT_EQ(d.payload_length, 0x0102030405060708ull);
}

class FramesOverLink : public ::testing::TestWithParam<std::string> {
 protected:
  LinkPair make() { return GetParam() == "tcp" ? tcp_pair() : local_pair(); }
};

TEST_P(FramesOverLink, RoundTripTypesSegmentsAndEmptyPayloads) {
  LinkPair p = make();
  const std::string s1 = "hello, ", s2 = "scatter", s3 = "", s4 = "-gather";
  const ByteSpan segments[] = {as_bytes(s1), as_bytes(s2), as_bytes(s3), as_bytes(s4)};
  p.a->send(kData, segments, Timeout(5000));
  p.a->send(kSmall, ByteSpan{}, Timeout(5000));
  p.a->send(kSmall, std::span<const ByteSpan>{}, Timeout(5000));
  p.a->send(kSmall, as_bytes("x"), Timeout(5000));

  ByteBuffer buffer;
  auto m = p.b->receive(buffer, Timeout(5000));
  ASSERT_TRUE(m);
  EXPECT_EQ(m->type, kData);
  EXPECT_EQ(as_string(m->payload), "hello, scatter-gather");
  const size_t capacity = buffer.capacity();
  for (int i = 0; i < 2; ++i) {
    m = p.b->receive(buffer, Timeout(5000));
    ASSERT_TRUE(m);
    EXPECT_EQ(m->type, kSmall);
    EXPECT_TRUE(m->payload.empty());
  }
  m = p.b->receive(buffer, Timeout(5000));
  ASSERT_TRUE(m);
  EXPECT_EQ(as_string(m->payload), "x");
  EXPECT_EQ(buffer.capacity(), capacity) << "a smaller message must not reallocate the buffer";

  // And back the other way.
  p.b->send(kSmall, as_bytes("reply"), Timeout(5000));
  ByteBuffer other;
  m = p.a->receive(other, Timeout(5000));
  ASSERT_TRUE(m);
  EXPECT_EQ(as_string(m->payload), "reply");

  // Nothing more: a short receive times out and keeps the link open.
  EXPECT_FALSE(p.b->receive(buffer, Timeout(20)));
  EXPECT_FALSE(p.b->is_closed());
}

TEST_P(FramesOverLink, SixtyFourMebibytesInFourSegments) {
  LinkPair p = make();
  constexpr size_t kSize = 64u << 20;
  std::vector<uint32_t> words(kSize / 4);
  std::iota(words.begin(), words.end(), 0x9e3779b9u);
  const auto* base = reinterpret_cast<const std::byte*>(words.data());
  const ByteSpan segments[] = {{base, 1}, {base + 1, kSize / 2 - 1}, {base + kSize / 2, 12345},
                               {base + kSize / 2 + 12345, kSize / 2 - 12345}};
  std::thread sender([&] { p.a->send(kData, segments, Timeout(60000)); });
  ByteBuffer buffer;
  auto m = p.b->receive(buffer, Timeout(60000));
  sender.join();
  ASSERT_TRUE(m);
  ASSERT_EQ(m->payload.size(), kSize);
  EXPECT_EQ(std::memcmp(m->payload.data(), base, kSize), 0);
  EXPECT_EQ(buffer.capacity(), kSize);
}

TEST_P(FramesOverLink, CloseReachesThePeerWithItsReason) {
  LinkPair p = make();
  p.a->send(kSmall, as_bytes("last words"), Timeout(5000));
  p.a->close("stage shutting down");
  EXPECT_TRUE(p.a->is_closed());
  EXPECT_THROW(p.a->send(kSmall, as_bytes("x"), Timeout(1000)), LinkClosed);

  ByteBuffer buffer;
  auto m = p.b->receive(buffer, Timeout(5000));  // data sent before the close still arrives
  ASSERT_TRUE(m);
  EXPECT_EQ(as_string(m->payload), "last words");
  try {
    p.b->receive(buffer, Timeout(5000));
    FAIL() << "receive after the peer closed must throw";
  } catch (const LinkClosed& e) {
    EXPECT_NE(std::string(e.what()).find("peer closed the link: stage shutting down"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(p.b->is_closed());
  EXPECT_THROW(p.b->receive(buffer, Timeout(10)), LinkClosed);
}

TEST_P(FramesOverLink, CloseFromAnotherThreadWakesABlockedReceive) {
  LinkPair p = make();
  std::atomic<bool> threw{false};
  std::thread receiver([&] {
    ByteBuffer buffer;
    try {
      p.b->receive(buffer, kNoTimeout);
    } catch (const LinkClosed&) {
      threw = true;
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto t0 = std::chrono::steady_clock::now();
  p.b->close("shutting down");
  receiver.join();
  EXPECT_TRUE(threw);
  EXPECT_LT(seconds_since(t0), 5.0);
  EXPECT_EQ(p.b->close_reason(), "shutting down");
}

// close() from one thread while another streams frames: the frame in flight is finished, then
// the peer gets the Close with its reason (not a connection cut in the middle of a frame, nor a
// reason lost because the sender held the link's send lock at that moment).
TEST_P(FramesOverLink, ACloseWhileAnotherThreadSendsTellsThePeerWhyAfterTheFrameInFlight) {
  LinkPair p = make();
  const std::vector<std::byte> frame(2u << 20, std::byte{0x42});
  std::atomic<int> sent{0};
  std::thread sender([&] {
    try {
      while (true) {
        p.a->send(kData, frame, Timeout(10000));
        ++sent;
      }
    } catch (const LinkError&) {
    }
  });
  std::string why;
  int received = 0;
  bool whole = true;
  std::thread receiver([&] {
    ByteBuffer buffer;
    try {
      while (auto m = p.b->receive(buffer, Timeout(10000))) {
        whole = whole && m->payload.size() == frame.size();
        ++received;
      }
      why = "receive timed out";
    } catch (const LinkError& e) {
      why = e.what();
    }
  });
  const auto t0 = std::chrono::steady_clock::now();
  while (sent < 20 && seconds_since(t0) < 30.0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  p.a->close("the stage is stopping (test reason)");
  sender.join();
  receiver.join();
  EXPECT_NE(why.find("peer closed the link: the stage is stopping (test reason)"), std::string::npos) << why;
  EXPECT_TRUE(whole);
  EXPECT_GE(received, 20);
}

TEST_P(FramesOverLink, ConcurrentSendersNeverInterleaveFrames) {
  LinkPair p = make();
  constexpr int kThreads = 4, kPerThread = 200;
  std::vector<std::thread> senders;
  for (int t = 0; t < kThreads; ++t) {
    senders.emplace_back([&, t] {
      // Thread t sends payloads of 1..5000 bytes, all bytes equal to t, in three segments.
      for (int i = 0; i < kPerThread; ++i) {
        const std::vector<std::byte> body(1 + (i * 37 + t * 1009) % 5000, std::byte(t));
        const ByteSpan all(body);
        const ByteSpan segments[] = {all.first(1), all.subspan(1, (all.size() - 1) / 2),
                                     all.subspan(1 + (all.size() - 1) / 2)};
        p.a->send(kData, segments, Timeout(30000));
        p.a->try_send_heartbeat();  // heartbeats from any thread never land inside a frame
      }
    });
  }
  ByteBuffer buffer;
  int counts[kThreads] = {};
  for (int n = 0; n < kThreads * kPerThread; ++n) {
    auto m = p.b->receive(buffer, Timeout(30000));
    ASSERT_TRUE(m);
    ASSERT_FALSE(m->payload.empty());
    const auto t = static_cast<int>(m->payload[0]);
    ASSERT_LT(t, kThreads);
    for (std::byte b : m->payload) ASSERT_EQ(static_cast<int>(b), t);
    ++counts[t];
  }
  for (auto& s : senders) s.join();
  for (int c : counts) EXPECT_EQ(c, kPerThread);
}

TEST_P(FramesOverLink, ThousandsOfSegments) {
  LinkPair p = make();
  std::string text(3000, ' ');
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>('a' + i % 26);
  std::vector<ByteSpan> segments;
  for (size_t i = 0; i < text.size(); ++i) segments.push_back(as_bytes(std::string_view(text).substr(i, 1)));
  std::thread sender([&] { p.a->send(kData, segments, Timeout(30000)); });
  ByteBuffer buffer;
  auto m = p.b->receive(buffer, Timeout(30000));
  sender.join();
  ASSERT_TRUE(m);
  EXPECT_EQ(as_string(m->payload), text);
}

TEST_P(FramesOverLink, SendToAPeerThatDoesNotReadTimesOutAndClosesTheLink) {
  LinkPair p = make();
  const std::vector<std::byte> big(1u << 20);
  LogCapture log;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    for (int i = 0; i < 1000; ++i) p.a->send(kData, big, Timeout(200));  // never read by p.b
    FAIL() << "the sends should have timed out";
  } catch (const LinkTimeout& e) {
    EXPECT_NE(std::string(e.what()).find("timed out"), std::string::npos) << e.what();
  }
  EXPECT_LT(seconds_since(t0), 30.0);
  EXPECT_TRUE(p.a->is_closed());
  EXPECT_THROW(p.a->send(kSmall, as_bytes("x"), Timeout(100)), LinkClosed);
}

INSTANTIATE_TEST_SUITE_P(Links, FramesOverLink, ::testing::Values("tcp", "local"),
                         [](const auto& param_info) { return param_info.param; });

TEST(TcpLinkFrames, PeerWritingOneByteAtATime) {
  auto limits = test_limits();
  TcpListener listener(limits);
  RawSocket raw(listener.port());
  ASSERT_TRUE(raw.connected());
  auto link = listener.accept(Timeout(10000));
  ASSERT_TRUE(link);

  std::vector<std::byte> stream;
  std::string payloads[3] = {"first payload", "", std::string(300, 'z')};
  for (uint64_t i = 0; i < 3; ++i) {
    auto f = frame_bytes(i == 1 ? kSmall : kData, i, as_bytes(payloads[i]));
    stream.insert(stream.end(), f.begin(), f.end());
  }
  std::thread writer([&] {
    for (std::byte b : stream) {
      if (!raw.write(ByteSpan(&b, 1))) return;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  // Short receive timeouts: a frame is resumed across calls, never lost or duplicated.
  ByteBuffer buffer;
  int timeouts = 0;
  for (int i = 0; i < 3; ++i) {
    std::optional<Message> m;
    const auto t0 = std::chrono::steady_clock::now();
    while (!(m = link->receive(buffer, Timeout(1)))) {
      ++timeouts;
      ASSERT_LT(seconds_since(t0), 30.0);
    }
    EXPECT_EQ(as_string(m->payload), payloads[i]);
  }
  writer.join();
  EXPECT_GT(timeouts, 0);
}

TEST(TcpLinkFrames, RepeatedSequenceNumberIsRefused) {
  LogCapture log;
  auto limits = test_limits();
  TcpListener listener(limits);
  RawSocket raw(listener.port());
  auto link = listener.accept(Timeout(10000));
  ASSERT_TRUE(link);
  const auto f = frame_bytes(kSmall, 0, as_bytes("once"));
  ASSERT_TRUE(raw.write(f));
  ASSERT_TRUE(raw.write(f));  // replayed frame: sequence 0 again
  ByteBuffer buffer;
  ASSERT_TRUE(link->receive(buffer, Timeout(5000)));
  try {
    link->receive(buffer, Timeout(5000));
    FAIL() << "a repeated sequence number must be refused";
  } catch (const FrameError& e) {
    EXPECT_NE(std::string(e.what()).find("sequence number 0, expected 1"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(link->is_closed());
  EXPECT_TRUE(log.contains("sequence number 0, expected 1"));
}

TEST(TcpLinkFrames, PeerVanishingMidFrameIsAClearError) {
  auto limits = test_limits();
  TcpListener listener(limits);
  auto link = [&] {
    RawSocket raw(listener.port());
    auto accepted = listener.accept(Timeout(10000));
    auto f = frame_bytes(kData, 0, as_bytes("truncated payload"));
    f.resize(f.size() - 5);
    EXPECT_TRUE(raw.write(f));
    return accepted;
  }();  // the raw socket closes here
  LogCapture log;
  ByteBuffer buffer;
  try {
    link->receive(buffer, Timeout(5000));
    FAIL();
  } catch (const LinkClosed& e) {
    EXPECT_NE(std::string(e.what()).find("in the middle of a frame"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace hearth::transport::test
