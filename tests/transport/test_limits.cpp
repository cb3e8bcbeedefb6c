// Limits: a header is checked field by field before any allocation; a bad one closes its link
// with a logged reason and a Close frame, and the listener keeps serving new peers.
#include "transport_test_util.h"

#include <cstdlib>
#include <new>

// Allocation tracking for this test binary: the largest single allocation while armed.
namespace {
std::atomic<bool> g_tracking{false};
std::atomic<size_t> g_largest{0};
void note_allocation(size_t n) {
  if (!g_tracking.load(std::memory_order_relaxed)) return;
  size_t seen = g_largest.load();
  while (n > seen && !g_largest.compare_exchange_weak(seen, n)) {
  }
}
}  // namespace

// These replace the global allocation functions, so their malloc/free pairing is the point;
// GCC cannot see that through the replacement and warns at -O2.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(size_t n) {
  note_allocation(n);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) { return operator new(n); }
void* operator new(size_t n, std::align_val_t a) {
  note_allocation(n);
  const size_t align = static_cast<size_t>(a);
  if (void* p = std::aligned_alloc(align, (std::max<size_t>(n, 1) + align - 1) / align * align)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n, std::align_val_t a) { return operator new(n, a); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace hearth::transport::test {
namespace {

HeaderBytes header_with(MessageType type, uint64_t length, uint64_t sequence = 0) {
  return encode_frame_header({type, length, sequence});
}

std::string decode_error(const HeaderBytes& h, uint64_t expected_sequence = 0) {
  auto limits = test_limits();
  try {
    decode_frame_header(h, *limits, expected_sequence);
  } catch (const FrameError& e) {
    return e.what();
  }
  return "accepted";
}

TEST(FrameLimitsTest, EachHeaderFieldIsChecked) {
  EXPECT_EQ(decode_error(header_with(kSmall, 1024)), "accepted");
  EXPECT_EQ(decode_error(header_with(msg::kHeartbeat, 0)), "accepted");

  HeaderBytes h = header_with(kSmall, 1);
  h[0] = std::byte{'G'};
  EXPECT_NE(decode_error(h).find("bad frame magic"), std::string::npos) << decode_error(h);

  h = header_with(kSmall, 1);
  store_le(&h[4], 1, 2);  // an older node
  EXPECT_NE(decode_error(h).find(fmt::format("frame of protocol version 1, we speak {}", kProtocolVersion)), std::string::npos) << decode_error(h);

  h = header_with(kSmall, 1);
  h[9] = std::byte{1};
  EXPECT_NE(decode_error(h).find("flags"), std::string::npos);

  h = header_with(kSmall, 1);
  h[14] = std::byte{1};
  EXPECT_NE(decode_error(h).find("reserved"), std::string::npos);

  EXPECT_NE(decode_error(header_with(999, 1)).find("unknown message type 999"), std::string::npos);
  EXPECT_NE(decode_error(header_with(kSmall, 1025)).find("small (257) payload of 1025 bytes exceeds its limit of 1024"),
            std::string::npos)
      << decode_error(header_with(kSmall, 1025));
  EXPECT_NE(decode_error(header_with(msg::kHeartbeat, 1)).find("Heartbeat (3)"), std::string::npos);
  EXPECT_NE(decode_error(header_with(kData, ~0ull)).find("exceeds its limit"), std::string::npos);
  EXPECT_NE(decode_error(header_with(kSmall, 0, 5), 4).find("sequence number 5, expected 4"), std::string::npos);
}

// Each case: a peer sends one bad header; the accepted link must refuse it before allocating,
// close with a logged reason, send a Close frame naming it, and the listener must go on.
struct BadHeader {
  const char* name;
  HeaderBytes header;
  std::string reason;
};

TEST(FrameLimitsTest, BadHeadersOverTcpAreRefusedBeforeAllocation) {
  auto limits = test_limits();
  TcpListener listener(limits);
  HeaderBytes bad_magic = header_with(kData, 16);
  bad_magic[3] = std::byte{0};
  HeaderBytes bad_version = header_with(kData, 16);
  store_le(&bad_version[4], 7, 2);
  const BadHeader cases[] = {
      {"claims 4 GiB", header_with(kData, 4ull << 30), "payload of 4294967296 bytes exceeds its limit"},
      {"claims 2^63", header_with(kData, 1ull << 63), "exceeds its limit"},
      {"unknown type", header_with(4242, 1ull << 40), "unknown message type 4242"},
      {"bad magic", bad_magic, "bad frame magic"},
      {"bad version", bad_version, fmt::format("frame of protocol version 7, we speak {}", kProtocolVersion)},
  };
  for (const BadHeader& c : cases) {
    SCOPED_TRACE(c.name);
    LogCapture log;
    RawSocket raw(listener.port());
    ASSERT_TRUE(raw.connected());
    auto link = listener.accept(Timeout(10000));
    ASSERT_TRUE(link);
    ASSERT_TRUE(raw.write(c.header));

    ByteBuffer buffer;
    g_largest = 0;
    g_tracking = true;
    std::string error;
    try {
      link->receive(buffer, Timeout(10000));
    } catch (const FrameError& e) {
      error = e.what();
    }
    g_tracking = false;
    EXPECT_NE(error.find(c.reason), std::string::npos) << error;
    EXPECT_EQ(buffer.capacity(), 0u);
    EXPECT_LT(g_largest.load(), size_t{64} << 10) << "largest allocation while refusing the header";
    EXPECT_TRUE(link->is_closed());
    EXPECT_TRUE(log.contains(c.reason));

    // The peer is told why, then the connection ends.
    FrameHeader h;
    std::vector<std::byte> payload;
    ASSERT_TRUE(raw.read_frame(h, payload));
    EXPECT_EQ(h.type, msg::kClose);
    EXPECT_NE(as_string(payload).find(c.reason), std::string::npos) << as_string(payload);
    EXPECT_TRUE(raw.read_until_eof());
  }

  // The listener still accepts and serves a well-behaved peer.
  auto client = tcp_connect("127.0.0.1", listener.port(), Timeout(10000), limits);
  auto server = listener.accept(Timeout(10000));
  ASSERT_TRUE(server);
  client->send(kSmall, as_bytes("still here"), Timeout(5000));
  ByteBuffer buffer;
  auto m = server->receive(buffer, Timeout(5000));
  ASSERT_TRUE(m);
  EXPECT_EQ(as_string(m->payload), "still here");
}

}  // namespace
}  // namespace hearth::transport::test
