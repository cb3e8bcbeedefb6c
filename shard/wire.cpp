#include "shard/wire.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "core/quant_blocks.h"
#include "kernels/cpu/quants_ref.h"

namespace hearth::shard {

std::shared_ptr<const transport::FrameLimits> pipeline_frame_limits() {
  static const std::shared_ptr<const transport::FrameLimits> limits = [] {
    auto l = std::make_shared<transport::FrameLimits>();
    l->allow(msg::kLoadStage, kMaxJsonBytes, "LoadStage");
    l->allow(msg::kStageReady, kMaxJsonBytes, "StageReady");
    l->allow(msg::kBatch, kMaxBatchBytes, "Batch");
    l->allow(msg::kSampled, kMaxSampledBytes, "Sampled");
    l->allow(msg::kWeightChunk, kWeightChunkBytes + 8, "WeightChunk");
    l->allow(msg::kWeightsDone, 0, "WeightsDone");
    return l;
  }();
  return limits;
}

void send_json(transport::Link& link, transport::MessageType type, const nlohmann::json& j, transport::Timeout timeout) {
  const std::string text = j.dump();
  link.send(type, std::as_bytes(std::span(text.data(), text.size())), timeout);
}

nlohmann::json parse_json(std::span<const std::byte> payload, const char* what) {
  try {
    return nlohmann::json::parse(std::string(reinterpret_cast<const char*>(payload.data()), payload.size()));
  } catch (const nlohmann::json::exception& e) {
    throw WireError(fmt::format("{} is not JSON: {}", what, e.what()));
  }
}

WireDtype wire_dtype_from_name(const std::string& name) {
  if (name == "f32") return WireDtype::F32;
  if (name == "f16") return WireDtype::F16;
  if (name == "q8_0") return WireDtype::Q8_0;
  throw Error(fmt::format("unknown wire dtype '{}' (f32, f16, q8_0)", name));
}

const char* wire_dtype_name(WireDtype dtype) {
  switch (dtype) {
    case WireDtype::F32: return "f32";
    case WireDtype::F16: return "f16";
    case WireDtype::Q8_0: return "q8_0";
  }
  return "?";
}

size_t wire_row_bytes(WireDtype dtype, int64_t n) {
  switch (dtype) {
    case WireDtype::F32: return static_cast<size_t>(n) * 4;
    case WireDtype::F16: return static_cast<size_t>(n) * 2;
    case WireDtype::Q8_0: return static_cast<size_t>(n / 32) * sizeof(BlockQ8_0);
  }
  return 0;
}

void encode_hidden(WireDtype dtype, std::span<const float> x, int64_t n, std::vector<std::byte>& out) {
  HEARTH_CHECK(n > 0 && x.size() % static_cast<size_t>(n) == 0);
  HEARTH_CHECK(dtype != WireDtype::Q8_0 || n % 32 == 0, "q8_0 rows of {} values", n);
  const size_t rows = x.size() / static_cast<size_t>(n);
  const size_t row_bytes = wire_row_bytes(dtype, n);
  out.resize(rows * row_bytes);
  for (size_t r = 0; r < rows; ++r) {
    const float* src = x.data() + r * static_cast<size_t>(n);
    std::byte* dst = out.data() + r * row_bytes;
    switch (dtype) {
      case WireDtype::F32: std::memcpy(dst, src, row_bytes); break;
      case WireDtype::F16:
        for (int64_t i = 0; i < n; ++i) {
          const uint16_t h = fp32_to_fp16(src[i]);
          std::memcpy(dst + 2 * i, &h, 2);
        }
        break;
      case WireDtype::Q8_0: kernels::ref::quantize_row_q8_0(src, reinterpret_cast<BlockQ8_0*>(dst), n); break;
    }
  }
}

void decode_hidden(WireDtype dtype, std::span<const std::byte> in, int64_t n, std::span<float> x) {
  const size_t rows = x.size() / static_cast<size_t>(n);
  const size_t row_bytes = wire_row_bytes(dtype, n);
  HEARTH_CHECK(in.size() == rows * row_bytes);
  for (size_t r = 0; r < rows; ++r) {
    const std::byte* src = in.data() + r * row_bytes;
    float* dst = x.data() + r * static_cast<size_t>(n);
    switch (dtype) {
      case WireDtype::F32: std::memcpy(dst, src, row_bytes); break;
      case WireDtype::F16:
        for (int64_t i = 0; i < n; ++i) {
          uint16_t h;
          std::memcpy(&h, src + 2 * i, 2);
          dst[i] = fp16_to_fp32(h);
        }
        break;
      case WireDtype::Q8_0: {
        // The payload is not aligned for BlockQ8_0: copy blocks out before dequantizing.
        BlockQ8_0 block;
        for (int64_t b = 0; b < n / 32; ++b) {
          std::memcpy(&block, src + b * static_cast<int64_t>(sizeof(BlockQ8_0)), sizeof(block));
          kernels::ref::dequantize_row_q8_0(&block, dst + b * 32, 32);
        }
        break;
      }
    }
  }
}

namespace {

// Little-endian byte writer / checked reader (the wire is little-endian; so are the machines
// hearth runs on, which the static_assert states).
static_assert(std::endian::native == std::endian::little, "the wire format assumes a little-endian host");

class Writer {
 public:
  template <class T>
  void put(T v) {
    const size_t at = bytes.size();
    bytes.resize(at + sizeof(T));
    std::memcpy(bytes.data() + at, &v, sizeof(T));
  }
  std::vector<std::byte> bytes;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> data, const char* what) : data_(data), what_(what) {}
  template <class T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, data_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return v;
  }
  std::span<const std::byte> take(size_t n) {
    need(n);
    auto s = data_.subspan(at_, n);
    at_ += n;
    return s;
  }
  size_t left() const { return data_.size() - at_; }
  void need(size_t n) const {
    if (n > left()) throw WireError(fmt::format("{} message truncated: {} more bytes needed at offset {}, {} left", what_, n, at_, left()));
  }
  void finish() const {
    if (left() != 0) throw WireError(fmt::format("{} message has {} unexpected trailing bytes", what_, left()));
  }

 private:
  std::span<const std::byte> data_;
  const char* what_;
  size_t at_ = 0;
};

constexpr uint32_t kBatchMagic = 0x48544142;  // "BATH"

void put_params(Writer& w, const engine::SamplingParams& p) {
  w.put(p.temperature);
  w.put(p.top_k);
  w.put(p.top_p);
  w.put(p.min_p);
  w.put(p.repeat_penalty);
  w.put(p.repeat_last_n);
  w.put(p.presence_penalty);
  w.put(p.frequency_penalty);
  w.put(p.seed);
  w.put(p.n_logprobs);
  HEARTH_CHECK(p.logit_bias.size() <= engine::kMaxLogitBias, "{} logit biases", p.logit_bias.size());
  // Sorted by token, as the decoder requires.
  auto sorted = p.logit_bias;
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  w.put(static_cast<uint32_t>(sorted.size()));
  for (const auto& [token, bias] : sorted) {
    w.put(token);
    w.put(bias);
  }
  // Constrained decoding: the GBNF text, the prompt length it skips, the end tokens.
  HEARTH_CHECK(p.grammar.size() <= engine::grammar::kMaxGrammarBytes, "a grammar of {} bytes", p.grammar.size());
  HEARTH_CHECK(p.grammar_end_tokens.size() <= engine::kMaxGrammarEndTokens, "{} grammar end tokens", p.grammar_end_tokens.size());
  w.put(static_cast<uint32_t>(p.grammar.size()));
  for (char c : p.grammar) w.put(static_cast<uint8_t>(c));
  w.put(p.grammar_prompt_tokens);
  w.put(static_cast<uint32_t>(p.grammar_end_tokens.size()));
  for (engine::Token t : p.grammar_end_tokens) w.put(t);
}

engine::SamplingParams get_params(Reader& r) {
  engine::SamplingParams p;
  p.temperature = r.get<float>();
  p.top_k = r.get<int32_t>();
  p.top_p = r.get<float>();
  p.min_p = r.get<float>();
  p.repeat_penalty = r.get<float>();
  p.repeat_last_n = r.get<int32_t>();
  p.presence_penalty = r.get<float>();
  p.frequency_penalty = r.get<float>();
  p.seed = r.get<uint64_t>();
  p.n_logprobs = r.get<int32_t>();
  for (float f : {p.temperature, p.top_p, p.min_p, p.repeat_penalty, p.presence_penalty, p.frequency_penalty}) {
    if (!std::isfinite(f)) throw WireError("Batch message has a non-finite sampling parameter");
  }
  if (p.n_logprobs < 0 || p.n_logprobs > static_cast<int32_t>(kMaxTopLogprobs) || p.repeat_last_n < 0 ||
      p.repeat_last_n > (1 << 20)) {
    throw WireError("Batch message has a sampling parameter out of range");
  }
  const uint32_t n_bias = r.get<uint32_t>();
  if (n_bias > engine::kMaxLogitBias) {
    throw WireError(fmt::format("Batch message has {} logit biases (at most {})", n_bias, engine::kMaxLogitBias));
  }
  r.need(size_t{n_bias} * 8);  // before reserving anything
  p.logit_bias.reserve(n_bias);
  for (uint32_t i = 0; i < n_bias; ++i) {
    const auto token = r.get<engine::Token>();
    const auto bias = r.get<float>();
    // Sorted by token without duplicates, as the Sampler keeps them, so a repeated token is
    // refused here rather than by the Sampler on the last stage.
    if (token < 0 || (!p.logit_bias.empty() && token <= p.logit_bias.back().first)) {
      throw WireError(fmt::format("Batch message has logit bias token {} out of order", token));
    }
    if (!std::isfinite(bias) || std::fabs(bias) > engine::kMaxLogitBiasValue) {
      throw WireError(fmt::format("Batch message has logit bias {} (-{} to {})", bias, engine::kMaxLogitBiasValue,
                                  engine::kMaxLogitBiasValue));
    }
    p.logit_bias.emplace_back(token, bias);
  }
  const uint32_t grammar_bytes = r.get<uint32_t>();
  if (grammar_bytes > engine::grammar::kMaxGrammarBytes) {
    throw WireError(fmt::format("Batch message has a grammar of {} bytes (at most {})", grammar_bytes,
                                engine::grammar::kMaxGrammarBytes));
  }
  const std::span<const std::byte> text = r.take(grammar_bytes);
  p.grammar.assign(reinterpret_cast<const char*>(text.data()), text.size());
  p.grammar_prompt_tokens = r.get<int32_t>();
  if (p.grammar_prompt_tokens < 0) throw WireError("Batch message has a negative grammar prompt length");
  const uint32_t n_end = r.get<uint32_t>();
  if (n_end > engine::kMaxGrammarEndTokens) {
    throw WireError(fmt::format("Batch message has {} grammar end tokens (at most {})", n_end, engine::kMaxGrammarEndTokens));
  }
  p.grammar_end_tokens.resize(n_end);
  for (engine::Token& t : p.grammar_end_tokens) {
    t = r.get<engine::Token>();
    if (t < 0) throw WireError(fmt::format("Batch message has grammar end token {}", t));
  }
  return p;
}

}  // namespace

namespace {
void put_stage_seconds(Writer& w, std::span<const float> stage_seconds) {
  HEARTH_CHECK(stage_seconds.size() <= kMaxStages);
  w.put(static_cast<uint32_t>(stage_seconds.size()));
  for (float f : stage_seconds) w.put(f);
}

std::vector<float> get_stage_seconds(Reader& r, const char* what) {
  const uint32_t n = r.get<uint32_t>();
  if (n > kMaxStages) throw WireError(fmt::format("{} message lists {} stages", what, n));
  std::vector<float> out(n);
  for (float& f : out) {
    f = r.get<float>();
    if (!std::isfinite(f) || f < 0) throw WireError(fmt::format("{} message has a bad stage time", what));
  }
  return out;
}
}  // namespace

std::vector<std::byte> encode_batch_head(uint64_t id, std::span<const engine::BatchEntry> entries, int64_t n_embd,
                                         WireDtype hidden_dtype, std::span<const float> stage_seconds) {
  Writer w;
  uint32_t n_tokens = 0;
  uint32_t n_begins = 0;
  for (const auto& e : entries) {
    n_tokens += static_cast<uint32_t>(e.tokens.size());
    n_begins += e.begin != nullptr ? 1u : 0u;
  }
  w.put(kBatchMagic);
  w.put(id);
  w.put(static_cast<uint32_t>(entries.size()));
  w.put(n_tokens);
  w.put(n_begins);
  w.put(static_cast<uint32_t>(n_embd));
  w.put(static_cast<uint8_t>(hidden_dtype));
  for (const auto& e : entries) {
    w.put(e.slot);
    w.put(e.pos0);
    w.put(static_cast<uint32_t>(e.tokens.size()));
    w.put(static_cast<uint8_t>(e.sample ? 1 : 0));
    w.put(static_cast<uint8_t>(e.begin != nullptr ? 1 : 0));
  }
  for (const auto& e : entries) {
    if (e.begin == nullptr) continue;
    put_params(w, *e.begin);
    w.put(e.resumed);
    w.put(e.kept);
  }
  for (const auto& e : entries) {
    for (engine::Token t : e.tokens) w.put(t);
  }
  put_stage_seconds(w, stage_seconds);
  return std::move(w.bytes);
}

void decode_batch(std::span<const std::byte> payload, int32_t n_slots, int32_t n_ctx, bool expect_hidden,
                  int64_t n_embd, BatchMessage& out) {
  Reader r(payload, "Batch");
  if (r.get<uint32_t>() != kBatchMagic) throw WireError("Batch message has a bad magic number");
  out.id = r.get<uint64_t>();
  const uint32_t n_entries = r.get<uint32_t>();
  const uint32_t n_tokens = r.get<uint32_t>();
  const uint32_t n_begins = r.get<uint32_t>();
  const uint32_t embd = r.get<uint32_t>();
  const uint8_t dtype = r.get<uint8_t>();
  if (n_tokens == 0 || n_tokens > kMaxBatchTokens) {
    throw WireError(fmt::format("Batch message has {} tokens (1..{})", n_tokens, kMaxBatchTokens));
  }
  if (n_entries == 0 || n_entries > n_tokens || n_begins > n_entries) {
    throw WireError(fmt::format("Batch message has {} entries and {} beginnings for {} tokens", n_entries, n_begins, n_tokens));
  }
  if (dtype > static_cast<uint8_t>(WireDtype::Q8_0)) throw WireError(fmt::format("Batch message has wire dtype {}", dtype));
  if (expect_hidden && static_cast<int64_t>(embd) != n_embd) {
    throw WireError(fmt::format("Batch message carries hidden states of width {}, this stage needs {}", embd, n_embd));
  }
  if (!expect_hidden && embd != 0) throw WireError("Batch message to the first stage carries hidden states");
  // Each entry is 14 bytes; check the room before reserving anything.
  r.need(size_t{n_entries} * 14);
  struct Raw {
    int32_t slot, pos0;
    uint32_t count;
    bool sample, begin;
  };
  std::vector<Raw> raw(n_entries);
  uint64_t total = 0;
  uint32_t begins = 0;
  for (Raw& e : raw) {
    e.slot = r.get<int32_t>();
    e.pos0 = r.get<int32_t>();
    e.count = r.get<uint32_t>();
    const uint8_t sample = r.get<uint8_t>();
    const uint8_t begin = r.get<uint8_t>();
    if (sample > 1 || begin > 1) throw WireError("Batch message has a bad entry flag");
    e.sample = sample == 1;
    e.begin = begin == 1;
    begins += e.begin ? 1 : 0;
    if (e.slot < 0 || e.slot >= n_slots) throw WireError(fmt::format("Batch message names slot {} of {}", e.slot, n_slots));
    if (e.count == 0 || e.pos0 < 0 || int64_t{e.pos0} + e.count > n_ctx) {
      throw WireError(fmt::format("Batch message has positions {}..+{} outside the context of {}", e.pos0, e.count, n_ctx));
    }
    total += e.count;
  }
  if (total != n_tokens || begins != n_begins) throw WireError("Batch message entries do not add up to its counts");
  out.params.clear();
  std::vector<uint32_t> resumed(n_begins), kept(n_begins);
  for (uint32_t i = 0; i < n_begins; ++i) {
    out.params.push_back(get_params(r));
    resumed[i] = r.get<uint32_t>();
    kept[i] = r.get<uint32_t>();
    // A replayed sequence generated fewer tokens than the context holds, and a cached prefix is
    // shorter than the context too (SlotSamplers checks it against the slot).
    if (resumed[i] >= static_cast<uint32_t>(n_ctx) || kept[i] >= static_cast<uint32_t>(n_ctx)) {
      throw WireError(fmt::format("Batch message begins a sequence after {} generated and {} cached tokens (context {})",
                                  resumed[i], kept[i], n_ctx));
    }
  }
  r.need(size_t{n_tokens} * 4);
  out.tokens.resize(n_tokens);
  for (auto& t : out.tokens) {
    t = r.get<engine::Token>();
    if (t < 0) throw WireError(fmt::format("Batch message has token id {}", t));
  }
  out.stage_seconds = get_stage_seconds(r, "Batch");
  out.entries.clear();
  size_t at = 0, param = 0;
  for (const Raw& e : raw) {
    engine::BatchEntry entry;
    entry.slot = e.slot;
    entry.pos0 = e.pos0;
    entry.tokens = std::span<const engine::Token>(out.tokens.data() + at, e.count);
    entry.sample = e.sample;
    if (e.begin) {
      entry.resumed = resumed[param];
      entry.kept = kept[param];
      entry.begin = &out.params[param++];
    }
    at += e.count;
    out.entries.push_back(entry);
  }
  out.n_embd = embd;
  out.hidden_dtype = static_cast<WireDtype>(dtype);
  if (expect_hidden) {
    if (out.hidden_dtype == WireDtype::Q8_0 && n_embd % 32 != 0) throw WireError("q8_0 hidden states need a width that is a multiple of 32");
    out.hidden = r.take(wire_row_bytes(out.hidden_dtype, n_embd) * n_tokens);
  } else {
    out.hidden = {};
  }
  r.finish();
}

std::vector<std::byte> encode_sampled(uint64_t id, std::span<const engine::SampledToken> tokens,
                                      std::span<const float> stage_seconds) {
  Writer w;
  w.put(id);
  w.put(static_cast<uint32_t>(tokens.size()));
  for (const auto& t : tokens) {
    w.put(t.token);
    w.put(t.logprob);
    w.put(static_cast<uint32_t>(t.top.size()));
    for (const auto& alt : t.top) {
      w.put(alt.token);
      w.put(alt.logprob);
    }
  }
  put_stage_seconds(w, stage_seconds);
  return std::move(w.bytes);
}

std::vector<engine::SampledToken> decode_sampled(std::span<const std::byte> payload, int32_t n_vocab, uint64_t& id,
                                                 std::vector<float>* stage_seconds) {
  Reader r(payload, "Sampled");
  id = r.get<uint64_t>();
  const uint32_t n = r.get<uint32_t>();
  if (n > kMaxBatchTokens) throw WireError(fmt::format("Sampled message has {} tokens", n));
  r.need(size_t{n} * 12);
  std::vector<engine::SampledToken> out(n);
  auto check = [&](engine::Token t) {
    if (t < 0 || t >= n_vocab) throw WireError(fmt::format("Sampled message has token id {} (vocabulary {})", t, n_vocab));
  };
  for (auto& t : out) {
    t.token = r.get<engine::Token>();
    check(t.token);
    t.logprob = r.get<float>();
    const uint32_t n_top = r.get<uint32_t>();
    if (n_top > kMaxTopLogprobs) throw WireError(fmt::format("Sampled message has {} alternatives", n_top));
    r.need(size_t{n_top} * 8);
    for (uint32_t i = 0; i < n_top; ++i) {
      engine::TokenLogprob alt;
      alt.token = r.get<engine::Token>();
      check(alt.token);
      alt.logprob = r.get<float>();
      t.top.push_back(alt);
    }
  }
  std::vector<float> seconds = get_stage_seconds(r, "Sampled");
  if (stage_seconds != nullptr) *stage_seconds = std::move(seconds);
  r.finish();
  return out;
}

}  // namespace hearth::shard
