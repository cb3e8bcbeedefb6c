// Heartbeats: an idle but healthy link stays up; a silent peer (socket open, nothing sent) is
// declared dead 3 s after its last byte; a closed peer at once.
#include "transport/heartbeat.h"

#include "transport_test_util.h"

#include <condition_variable>
#include <cstring>

namespace hearth::transport::test {
namespace {

// A receiver thread as the pipeline runtime runs one: receive until the link fails.
class Receiver {
 public:
  explicit Receiver(Link& link)
      : thread_([this, &link] {
          ByteBuffer buffer;
          try {
            while (true) {
              if (link.receive(buffer, kNoTimeout)) ++messages;
            }
          } catch (const LinkError& e) {
            std::lock_guard lock(mutex_);
            error_ = e.what();
            ended_at_ = std::chrono::steady_clock::now();
          }
        }) {}
  ~Receiver() { join(); }
  // Waits for the receiver to end (the link must be closing).
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  std::string error() const {
    std::lock_guard lock(mutex_);
    return error_;
  }
  std::atomic<int> messages{0};

 private:
  mutable std::mutex mutex_;
  std::string error_;
  std::chrono::steady_clock::time_point ended_at_;
  std::thread thread_;
};

// Records when the monitor reported the peer dead; the test measures from `started`, which
// it sets (in its own thread) to the moment the peer went quiet.
struct DeathClock {
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::atomic<std::chrono::steady_clock::rep> dead_at{0};
  LinkMonitor::DeadCallback callback() {
    return [this](const std::string&) { dead_at = std::chrono::steady_clock::now().time_since_epoch().count(); };
  }
  // Waits (up to `limit` s) for the report; seconds from `started` to it, or -1.
  double wait(double limit) {
    const auto t0 = std::chrono::steady_clock::now();
    while (dead_at.load() == 0 && seconds_since(t0) < limit) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (dead_at.load() == 0) return -1;
    const std::chrono::steady_clock::time_point at{std::chrono::steady_clock::duration(dead_at.load())};
    return std::chrono::duration<double>(at - started).count();
  }
};

TEST(Heartbeat, IdleHealthyLinkStaysAliveOnHeartbeatsAlone) {
  LinkPair p = tcp_pair();
  DeathClock clock_a, clock_b;
  {
    LinkMonitor monitor_a(*p.a, {}, clock_a.callback());
    LinkMonitor monitor_b(*p.b, {}, clock_b.callback());
    Receiver ra(*p.a), rb(*p.b);
    std::this_thread::sleep_for(std::chrono::milliseconds(4500));  // 1.5 times the dead timeout
    EXPECT_FALSE(monitor_a.peer_dead()) << monitor_a.reason();
    EXPECT_FALSE(monitor_b.peer_dead()) << monitor_b.reason();
    EXPECT_GE(monitor_a.heartbeats_sent(), 3u);
    EXPECT_GE(monitor_b.heartbeats_sent(), 3u);
    EXPECT_EQ(ra.messages.load(), 0) << "heartbeats must not reach the application";
    p.a->close("test over");
    p.b->close("test over");
  }
}

TEST(Heartbeat, SilentPeerIsDeclaredDeadWithinThreeSeconds) {
  LogCapture log;
  LinkPair p = tcp_pair();
  // p.b keeps its socket open but never sends anything (no monitor, no heartbeats).
  DeathClock clock;
  clock.started = p.a->last_receive_time();
  LinkMonitor monitor(*p.a, {}, clock.callback());
  Receiver receiver(*p.a);
  const double t = clock.wait(20.0);
  // Default options: dead 3 s after the last byte; the bound above 3 s is slack for a loaded
  // machine's scheduler, not part of the contract.
  EXPECT_GE(t, 2.999);
  EXPECT_LE(t, 3.0 + 1.0);
  EXPECT_TRUE(monitor.peer_dead());
  EXPECT_NE(monitor.reason().find("heartbeat timeout"), std::string::npos) << monitor.reason();
  EXPECT_TRUE(p.a->is_closed());
  EXPECT_TRUE(log.contains("heartbeat timeout"));
  // The silent peer is told, if it ever reads.
  ByteBuffer buffer;
  try {
    p.b->receive(buffer, Timeout(5000));
    FAIL();
  } catch (const LinkClosed& e) {
    EXPECT_NE(std::string(e.what()).find("heartbeat timeout"), std::string::npos) << e.what();
  }
  receiver.join();
  EXPECT_NE(receiver.error().find("heartbeat timeout"), std::string::npos) << receiver.error();
}

TEST(Heartbeat, ClosedPeerIsDeclaredDeadImmediately) {
  // The runtime's setup: a receiver thread reads the peer's Close (or the end of the stream).
  LinkPair p = tcp_pair();
  DeathClock clock;
  LinkMonitor monitor(*p.a, {}, clock.callback());
  Receiver receiver(*p.a);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  clock.started = std::chrono::steady_clock::now();
  p.b.reset();  // the peer closes its link
  const double t = clock.wait(20.0);
  EXPECT_GE(t, 0.0);
  EXPECT_LT(t, 1.0);
  EXPECT_TRUE(p.a->is_closed());
  EXPECT_NE(monitor.reason().find("peer closed the link"), std::string::npos) << monitor.reason();
}

TEST(Heartbeat, KilledPeerIsDeclaredDeadImmediatelyByTheMonitorAlone) {
  // No receiver thread, and the peer vanishes without a Close frame (a killed process: the
  // kernel ends its connection).
  LogCapture log;
  auto limits = test_limits();
  TcpListener listener(limits);
  auto raw = std::make_unique<RawSocket>(listener.port());
  auto link = listener.accept(Timeout(10000));
  ASSERT_TRUE(link);
  DeathClock clock;
  LinkMonitor monitor(*link, {}, clock.callback());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  clock.started = std::chrono::steady_clock::now();
  raw.reset();
  const double t = clock.wait(20.0);
  EXPECT_GE(t, 0.0);
  EXPECT_LT(t, 1.0);
  EXPECT_NE(monitor.reason().find("the peer closed the connection"), std::string::npos) << monitor.reason();
}

TEST(Heartbeat, GracefullyClosedPeerWithNobodyReadingIsDeadAfterTheTimeout) {
  // The peer's Close frame waits unread: the receiver may still want what came before it, so
  // the monitor leaves it the dead timeout to do so.
  LogCapture log;
  LinkPair p = tcp_pair();
  DeathClock clock;
  clock.started = p.a->last_receive_time();
  HeartbeatOptions fast{Timeout(100), Timeout(500)};
  LinkMonitor monitor(*p.a, fast, clock.callback());
  p.b.reset();
  const double t = clock.wait(20.0);
  EXPECT_GE(t, 0.499);
  EXPECT_LT(t, 0.5 + 1.0);
  EXPECT_NE(monitor.reason().find("input left unread"), std::string::npos) << monitor.reason();
}

TEST(Heartbeat, BusyReceiverDoesNotKillALivePeer) {
  // Nobody reads a's input for twice the dead timeout, but the peer's heartbeats are waiting
  // in the socket: the peer is alive.
  LinkPair p = tcp_pair();
  HeartbeatOptions fast{Timeout(100), Timeout(500)};
  LinkMonitor monitor_a(*p.a, fast);
  LinkMonitor monitor_b(*p.b, fast);
  Receiver rb(*p.b);
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  EXPECT_FALSE(monitor_a.peer_dead()) << monitor_a.reason();
  EXPECT_TRUE(p.a->has_unread_input());
  p.b->close("test over");
}

// A link caught in the moment after its receiver has read the peer's Close and before it has
// acted on it: the peer has hung up and no input is left unread, but the reason is in the
// receiver's hands. (receive_frame() holds the Close until deliver().)
class CloseInTheReceiversHands : public Link {
 public:
  static constexpr std::string_view kReason = "the next stage refused a frame (test)";
  CloseInTheReceiversHands() : Link("test:peer", test_limits()) {}
  void deliver() {
    std::lock_guard lock(mutex_);
    delivered_ = true;
    changed_.notify_all();
  }
  bool has_unread_input() const override { return false; }
  bool peer_hung_up() const override { return true; }
  bool start_encryption(const LinkKeys&) override { return false; }

 protected:
  void send_frame(MessageType, std::span<const ByteSpan>, uint64_t, Clock::time_point) override {}
  std::optional<Message> receive_frame(ByteBuffer& buffer, Clock::time_point) override {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return delivered_ || shut_; });
    if (!delivered_) throw LinkClosed("the link was shut before the Close was handled");
    auto bytes = buffer.resize_for_overwrite(kReason.size());
    std::memcpy(bytes.data(), kReason.data(), kReason.size());
    return Message{msg::kClose, buffer.bytes()};
  }
  bool writable_now() const override { return true; }
  void shutdown_transport() override {
    std::lock_guard lock(mutex_);
    shut_ = true;
    changed_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool delivered_ = false, shut_ = false;
};

TEST(Heartbeat, AHangUpIsLeftToTheReceiverThatHoldsThePeersReason) {
  CloseInTheReceiversHands link;
  Receiver receiver(link);
  const auto t0 = std::chrono::steady_clock::now();
  while (!link.receiving() && seconds_since(t0) < 10.0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(link.receiving());
  DeathClock clock;
  LinkMonitor monitor(link, {Timeout(100), Timeout(500)}, clock.callback());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(monitor.peer_dead()) << monitor.reason();
  link.deliver();
  EXPECT_GE(clock.wait(10.0), 0.0);
  receiver.join();
  EXPECT_NE(monitor.reason().find(CloseInTheReceiversHands::kReason), std::string::npos) << monitor.reason();
  EXPECT_NE(receiver.error().find(CloseInTheReceiversHands::kReason), std::string::npos) << receiver.error();
}

TEST(Heartbeat, LocalLinkSilentPeer) {
  LogCapture log;
  LinkPair p = local_pair();
  DeathClock clock;
  clock.started = p.a->last_receive_time();
  HeartbeatOptions fast{Timeout(100), Timeout(400)};
  LinkMonitor monitor(*p.a, fast, clock.callback());
  Receiver receiver(*p.a);
  const double t = clock.wait(20.0);
  EXPECT_GE(t, 0.399);
  EXPECT_LT(t, 0.4 + 1.0);
  receiver.join();  // the close woke it; its error is set once it has ended
  EXPECT_NE(receiver.error().find("heartbeat timeout"), std::string::npos) << receiver.error();
}

}  // namespace
}  // namespace hearth::transport::test
