// Link: a connection to one peer that carries framed messages (frame.h). Implementations:
// TcpLink (tcp_link.h) and the in-process LocalLink pair (local_link.h).
//
// Thread-safety contract:
//  - send() may be called from any number of threads; each frame is written whole (an internal
//    mutex serializes frames), so a heartbeat or a Close never lands inside another frame.
//  - receive() is called by ONE thread at a time (checked: a second concurrent receiver is a
//    programming error and aborts).
//  - close(), is_closed(), close_reason(), peer(), last_*_time() may be called from any thread
//    at any time; close() wakes a send() or receive() blocked in another thread, which then
//    throws LinkClosed.
// The intended use is one sender thread and one receiver thread per link, plus a LinkMonitor
// (heartbeat.h) that sends heartbeats while the link is idle.
//
// Failure contract: every error on a link (malformed frame, timeout in the middle of a frame,
// peer gone, Close received) closes the link and throws a LinkError subclass (frame.h) whose
// message says what happened; every later call throws LinkClosed with the same reason. A link
// never recovers: the runtime makes a new one.
#pragma once

#include "transport/byte_buffer.h"
#include "transport/frame.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace hearth::transport {

struct LinkKeys;  // frame_cipher.h

using Clock = std::chrono::steady_clock;
using Timeout = std::chrono::milliseconds;
inline constexpr Timeout kNoTimeout = Timeout::max();
// How long close() waits for a frame another thread is writing, and then for room to write its
// Close frame, before it gives up telling the peer why (the peer then learns of the close from
// the connection alone).
inline constexpr Timeout kCloseSendWait{250};
inline constexpr Timeout kCloseDrainWait{100};

// now + timeout, saturating (kNoTimeout → time_point::max()).
Clock::time_point deadline_after(Timeout timeout);

using ByteSpan = std::span<const std::byte>;

// A received message. `payload` views the ByteBuffer passed to receive() and stays valid until
// that buffer is used again.
struct Message {
  MessageType type = 0;
  ByteSpan payload;
};

class Link {
 public:
  virtual ~Link() = default;
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  // Sends one message whose payload is the concatenation of `segments` (scatter-gather: the
  // segments are written from where they lie, never copied into a frame). Blocks until the
  // whole frame is handed to the transport or `timeout` passes (LinkTimeout; the link is then
  // closed, since a half-written frame cannot be taken back). Waiting for another thread's
  // frame to finish is not bounded by `timeout`; the runtime's single sender never waits. `type` must be known to this
  // link's FrameLimits and the payload within its limit, and must not be Heartbeat or Close
  // (use close()): programming errors.
  void send(MessageType type, std::span<const ByteSpan> segments, Timeout timeout = kNoTimeout);
  void send(MessageType type, ByteSpan payload, Timeout timeout = kNoTimeout) {
    send(type, std::span<const ByteSpan>(&payload, 1), timeout);
  }

  // Receives the next message into `buffer` (grown only when the payload does not fit).
  // Heartbeats are consumed here and never returned; a Close from the peer closes the link
  // and throws LinkClosed("peer closed the link: <its reason>"). Returns nullopt when no whole
  // frame arrived within `timeout`; bytes of a frame already read are kept, and the next call
  // MUST pass the same buffer (checked) to continue that frame.
  std::optional<Message> receive(ByteBuffer& buffer, Timeout timeout = kNoTimeout);

  // Closes the link (idempotent). When no frame is being sent, tells the peer why with a Close
  // frame first (best effort, at most ~100 ms). Wakes blocked calls in other threads.
  void close(std::string_view reason = "closed") { close(reason, reason); }
  // The same, recording `reason` locally and telling the peer `tell_peer` (a refusal phrased
  // for the other side: "authentication failed: your proof ... does not match").
  void close(std::string_view reason, std::string_view tell_peer);

  // Sends an empty Heartbeat if no frame is being sent and the transport can take it without
  // waiting; returns whether one was sent. For LinkMonitor.
  bool try_send_heartbeat();

  bool is_closed() const { return closed_.load(std::memory_order_acquire); }
  // True while a thread is inside receive(): it will see the peer's Close or hang-up itself.
  bool receiving() const { return receiving_.load(std::memory_order_acquire); }
  // Why the link closed ("" while open).
  std::string close_reason() const;
  // The peer, for messages: "127.0.0.1:5000", "[::1]:5000", "local:a".
  const std::string& peer() const { return peer_; }
  const FrameLimits& limits() const { return *limits_; }

  // When bytes last arrived from the peer / a frame was last sent (creation time before any).
  Clock::time_point last_receive_time() const { return Clock::time_point(Clock::duration(last_receive_.load())); }
  Clock::time_point last_send_time() const { return Clock::time_point(Clock::duration(last_send_.load())); }
  // True when the peer has sent bytes that no receive() has consumed yet (it was alive then).
  virtual bool has_unread_input() const = 0;
  // True when the peer has closed its end of the connection (input may still be left unread).
  virtual bool peer_hung_up() const = 0;

  // Set by handshake() once both sides proved the cluster key; the capabilities the peer sent
  // (written once, before the link is shared between threads).
  bool authenticated() const { return authenticated_.load(std::memory_order_acquire); }
  const std::string& peer_capabilities() const { return peer_capabilities_; }
  void mark_authenticated(std::string peer_capabilities);

  // From the next frame on, every frame this side sends is encrypted with keys.send and every
  // frame it receives must be, under keys.receive (frame_cipher.h). Called by handshake(),
  // before the link is shared between threads. Returns false for a link that carries no bytes
  // over a wire (the in-process LocalLink), which stays as it is.
  virtual bool start_encryption(const LinkKeys& keys) = 0;
  // Whether frames on this link are encrypted now.
  bool encrypted() const { return encrypted_.load(std::memory_order_acquire); }

 protected:
  Link(std::string peer, std::shared_ptr<const FrameLimits> limits);

  // Writes one whole frame (called with the send mutex held) or throws a LinkError.
  virtual void send_frame(MessageType type, std::span<const ByteSpan> segments, uint64_t payload_length,
                          Clock::time_point deadline) = 0;
  // Reads frames until one is complete (nullopt at the deadline, progress kept) or throws a
  // LinkError. Control frames are returned too; receive() handles them.
  virtual std::optional<Message> receive_frame(ByteBuffer& buffer, Clock::time_point deadline) = 0;
  // True when a small frame can be written now without blocking.
  virtual bool writable_now() const = 0;
  // Wakes blocked calls and stops the transport (called once, by close).
  virtual void shutdown_transport() = 0;

  void note_received() { last_receive_.store(Clock::now().time_since_epoch().count()); }
  void mark_encrypted() { encrypted_.store(true, std::memory_order_release); }

 private:
  // Closes with `reason`; `notify_peer`: try to send a Close frame saying `tell_peer` (or
  // `reason` when empty), after the frame another thread may be writing (waiting up to
  // kCloseSendWait for it, then kCloseDrainWait for room); `log`: report it.
  void close_impl(std::string reason, bool notify_peer, bool log, std::string_view tell_peer = {});
  [[noreturn]] void rethrow_closed();

  const std::string peer_;
  const std::shared_ptr<const FrameLimits> limits_;
  std::timed_mutex send_mutex_;
  std::atomic<bool> closed_{false};
  std::atomic<bool> receiving_{false};
  mutable std::mutex reason_mutex_;
  std::string close_reason_;
  std::atomic<Clock::rep> last_receive_;
  std::atomic<Clock::rep> last_send_;
  std::atomic<bool> authenticated_{false};
  std::atomic<bool> encrypted_{false};
  std::string peer_capabilities_;
};

}  // namespace hearth::transport
