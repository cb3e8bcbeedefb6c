// The pipeline's messages on a link (docs/wire-protocol.md): the catalog registered in the
// transport's FrameLimits, and their codecs. Every decoder checks counts, ranges and the exact
// payload size before it touches the data; a violation throws WireError and the link that
// carried it is closed by its owner.
//
//   LoadStage  coordinator -> worker   JSON: which layers, cache sizes, where to send results
//   StageReady worker -> coordinator   JSON: what was loaded
//   Batch      coordinator -> stage 0 -> stage 1 ... : a step's entries, tokens, sampling
//              parameters of sequences that begin, and (after stage 0) the hidden states
//   Sampled    last stage -> coordinator: one token (+ logprobs) per sampling entry
//   WeightChunk, WeightsDone  coordinator -> worker without the model: u64 file offset + bytes
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/batch/sampler.h"
#include "engine/batch/batch.h"
#include "transport/frame.h"
#include "transport/link.h"

namespace hearth::shard {

namespace msg {
inline constexpr transport::MessageType kLoadStage = transport::kFirstUserMessageType + 0;
inline constexpr transport::MessageType kStageReady = transport::kFirstUserMessageType + 1;
inline constexpr transport::MessageType kBatch = transport::kFirstUserMessageType + 2;
inline constexpr transport::MessageType kSampled = transport::kFirstUserMessageType + 3;
inline constexpr transport::MessageType kWeightChunk = transport::kFirstUserMessageType + 4;
inline constexpr transport::MessageType kWeightsDone = transport::kFirstUserMessageType + 5;
}  // namespace msg

inline constexpr uint64_t kWeightChunkBytes = 8u << 20;  // file bytes per WeightChunk (+ 8-byte offset)

inline constexpr uint64_t kMaxJsonBytes = 64 * 1024;
inline constexpr uint64_t kMaxBatchBytes = 256ull << 20;
inline constexpr uint64_t kMaxSampledBytes = 4u << 20;
inline constexpr uint32_t kMaxBatchTokens = 8192;
inline constexpr uint32_t kMaxTopLogprobs = 64;
inline constexpr uint32_t kMaxStages = 64;

// The limits every pipeline link is created with.
std::shared_ptr<const transport::FrameLimits> pipeline_frame_limits();

class WireError : public Error {
 public:
  using Error::Error;
};

// The JSON messages (LoadStage, StageReady): sent as UTF-8 text; parsed with a WireError naming
// the message when the payload is not JSON.
void send_json(transport::Link& link, transport::MessageType type, const nlohmann::json& j, transport::Timeout timeout);
nlohmann::json parse_json(std::span<const std::byte> payload, const char* what);

// How hidden states travel between stages.
enum class WireDtype : uint8_t { F32 = 0, F16 = 1, Q8_0 = 2 };
WireDtype wire_dtype_from_name(const std::string& name);  // "f32", "f16", "q8_0"; throws Error
const char* wire_dtype_name(WireDtype dtype);
// Bytes of one row of n values (q8_0: n must be a multiple of 32).
size_t wire_row_bytes(WireDtype dtype, int64_t n);
// rows x n floats -> wire bytes, and back.
void encode_hidden(WireDtype dtype, std::span<const float> x, int64_t n, std::vector<std::byte>& out);
void decode_hidden(WireDtype dtype, std::span<const std::byte> in, int64_t n, std::span<float> x);

// A decoded Batch. `entries` point into `tokens` and `params`, so the struct must not be
// copied once built (it owns what its entries view).
struct BatchMessage {
  uint64_t id = 0;
  std::vector<engine::Token> tokens;
  std::vector<engine::SamplingParams> params;
  std::vector<engine::BatchEntry> entries;
  int64_t n_embd = 0;                 // 0: no hidden states (to stage 0)
  WireDtype hidden_dtype = WireDtype::F32;
  std::span<const std::byte> hidden;  // views the receive buffer
  std::vector<float> stage_seconds;   // compute time of each stage this step has passed

  BatchMessage() = default;
  BatchMessage(const BatchMessage&) = delete;
  BatchMessage& operator=(const BatchMessage&) = delete;
};

// The header, entries, begins and tokens of a step (everything but the hidden states).
// `stage_seconds`: the compute time of the stages the step has passed (at most kMaxStages).
std::vector<std::byte> encode_batch_head(uint64_t id, std::span<const engine::BatchEntry> entries, int64_t n_embd,
                                         WireDtype hidden_dtype, std::span<const float> stage_seconds = {});
// Decodes and checks a Batch payload: slots < n_slots, positions inside n_ctx, counts and the
// exact size; `expect_hidden` says whether this stage needs hidden states (not stage 0) and
// `n_embd` their width.
void decode_batch(std::span<const std::byte> payload, int32_t n_slots, int32_t n_ctx, bool expect_hidden,
                  int64_t n_embd, BatchMessage& out);

std::vector<std::byte> encode_sampled(uint64_t id, std::span<const engine::SampledToken> tokens,
                                      std::span<const float> stage_seconds = {});
// Decodes and checks a Sampled payload (token ids < n_vocab); `stage_seconds` (if given)
// receives every stage's compute time for the step.
std::vector<engine::SampledToken> decode_sampled(std::span<const std::byte> payload, int32_t n_vocab, uint64_t& id,
                                                 std::vector<float>* stage_seconds = nullptr);

}  // namespace hearth::shard
