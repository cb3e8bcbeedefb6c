#include "shard/tensor_parallel_steps.h"

#include <algorithm>
#include <array>
#include <climits>

#include "core/error.h"

namespace hearth::shard {
namespace {

enum : int64_t { kStep = 1, kStop = 2 };
// op, tokens, hidden values, slots, output rows, top_k (StageInput::top_k)
using Header = std::array<int64_t, 6>;
constexpr int64_t kMaxValues = int64_t{1} << 31;

template <class T>
std::span<std::byte> bytes_of(std::vector<T>& v) {
  return std::as_writable_bytes(std::span(v));
}

}  // namespace

void lead_steps(engine::StageOptions& options, Collective& comm) {
  HEARTH_CHECK(comm.rank() == 0, "the leader of tensor-parallel steps is rank 0, not {}", comm.rank());
  options.tp_before_forward = [&comm](const engine::StageInput& in) {
    Header h = {kStep, static_cast<int64_t>(in.tokens.size()), static_cast<int64_t>(in.hidden.size()),
                static_cast<int64_t>(in.slots.size()), static_cast<int64_t>(in.output_rows.size()), in.top_k};
    // The followers wait for the header with broadcast_idle; the leader must send it with the
    // same call (MPI does not match a blocking broadcast with a non-blocking one).
    comm.broadcast_idle(std::as_writable_bytes(std::span(h)), 0);
    // broadcast() writes on non-root ranks only: the leader's spans are read, never written.
    const auto send = [&](auto span) {
      if (!span.empty()) comm.broadcast({const_cast<std::byte*>(std::as_bytes(span).data()), span.size_bytes()}, 0);
    };
    send(in.tokens);
    send(in.hidden);
    send(in.slots);
    send(in.output_rows);
  };
}

void follow_steps(engine::Stage& stage, Collective& comm) {
  HEARTH_CHECK(comm.rank() != 0, "rank 0 leads the tensor-parallel steps");
  std::vector<engine::Token> tokens;
  std::vector<float> hidden, out;
  std::vector<kernels::KvSlot> slots;
  std::vector<int32_t> rows;
  for (;;) {
    Header h{};
    comm.broadcast_idle(std::as_writable_bytes(std::span(h)), 0);  // the leader may be idle for long
    if (h[0] == kStop) return;
    for (size_t i = 1; i < h.size(); ++i) {
      if (h[0] != kStep || h[i] < 0 || h[i] > kMaxValues) {
        throw Error(fmt::format("tensor-parallel step from rank 0: malformed header ({} {} {} {} {} {})", h[0], h[1],
                                h[2], h[3], h[4], h[5]));
      }
    }
    tokens.resize(static_cast<size_t>(h[1]));
    hidden.resize(static_cast<size_t>(h[2]));
    slots.resize(static_cast<size_t>(h[3]));
    rows.resize(static_cast<size_t>(h[4]));
    if (!tokens.empty()) comm.broadcast(bytes_of(tokens), 0);
    if (!hidden.empty()) comm.broadcast(bytes_of(hidden), 0);
    if (!slots.empty()) comm.broadcast(bytes_of(slots), 0);
    if (!rows.empty()) comm.broadcast(bytes_of(rows), 0);
    stage.forward({.tokens = tokens, .hidden = hidden, .slots = slots, .output_rows = rows,
                   .top_k = static_cast<int32_t>(std::min<int64_t>(h[5], INT32_MAX))},
                  out);
  }
}

void stop_followers(Collective& comm) {
  Header h = {kStop, 0, 0, 0, 0, 0};
  comm.broadcast_idle(std::as_writable_bytes(std::span(h)), 0);
}

}  // namespace hearth::shard
