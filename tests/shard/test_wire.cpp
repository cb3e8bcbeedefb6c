// The pipeline's message codecs: round trips, and every decoder against truncated, mutated and
// random payloads (run under ASan/UBSan in CI): each either decodes to something within the
// limits it was given or throws WireError — never reads out of bounds, never crashes.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <random>

#include "shard/stage_assignment.h"
#include "shard/wire.h"

namespace hearth::shard {
namespace {

using engine::BatchEntry;
using engine::SamplingParams;
using engine::SampledToken;
using engine::Token;

struct Sample {
  std::vector<Token> tokens_a = {5, 6, 7};
  std::vector<Token> tokens_b = {9};
  SamplingParams params;
  std::vector<BatchEntry> entries;
  Sample() {
    params.temperature = 0.7f;
    params.top_k = 12;
    params.seed = 99;
    params.n_logprobs = 3;
    params.logit_bias = {{7, -100.0f}, {2, 3.5f}};  // unsorted: the encoder sorts
    entries.push_back({1, 10, tokens_a, true, &params, 7, 5});
    entries.push_back({3, 4, tokens_b, false, nullptr});
  }
};

TEST(Wire, BatchRoundTripWithHiddenStates) {
  Sample s;
  const int64_t n_embd = 64;
  std::vector<float> hidden(4 * n_embd);
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = std::sin(0.1f * static_cast<float>(i)) * 3.0f;
  for (WireDtype dtype : {WireDtype::F32, WireDtype::F16, WireDtype::Q8_0}) {
    std::vector<std::byte> payload = encode_batch_head(42, s.entries, n_embd, dtype);
    std::vector<std::byte> wire;
    encode_hidden(dtype, hidden, n_embd, wire);
    EXPECT_EQ(wire.size(), 4 * wire_row_bytes(dtype, n_embd));
    payload.insert(payload.end(), wire.begin(), wire.end());
    BatchMessage m;
    decode_batch(payload, 4, 64, true, n_embd, m);
    EXPECT_EQ(m.id, 42u);
    ASSERT_EQ(m.entries.size(), 2u);
    EXPECT_EQ(m.entries[0].slot, 1);
    EXPECT_EQ(m.entries[0].pos0, 10);
    EXPECT_EQ(std::vector<Token>(m.entries[0].tokens.begin(), m.entries[0].tokens.end()), s.tokens_a);
    EXPECT_TRUE(m.entries[0].sample);
    ASSERT_NE(m.entries[0].begin, nullptr);
    EXPECT_EQ(m.entries[0].begin->top_k, 12);
    EXPECT_EQ(m.entries[0].begin->seed, 99u);
    EXPECT_EQ(m.entries[0].begin->logit_bias, (std::vector<std::pair<Token, float>>{{2, 3.5f}, {7, -100.0f}}));
    EXPECT_EQ(m.entries[0].resumed, 7u);
    EXPECT_EQ(m.entries[0].kept, 5u);
    EXPECT_EQ(m.entries[1].begin, nullptr);
    EXPECT_EQ(m.entries[1].resumed, 0u);
    EXPECT_FALSE(m.entries[1].sample);
    std::vector<float> back(hidden.size());
    decode_hidden(m.hidden_dtype, m.hidden, n_embd, back);
    double err = 0, ref = 0;
    for (size_t i = 0; i < hidden.size(); ++i) {
      err += (back[i] - hidden[i]) * (back[i] - hidden[i]);
      ref += hidden[i] * hidden[i];
    }
    if (dtype == WireDtype::F32) {
      EXPECT_EQ(err, 0.0);
    }
    EXPECT_LT(err / ref, dtype == WireDtype::Q8_0 ? 1e-4 : 1e-6) << wire_dtype_name(dtype);
  }
}

TEST(Wire, BatchLimitsAreEnforced) {
  Sample s;
  const std::vector<std::byte> payload = encode_batch_head(1, s.entries, 0, WireDtype::F32);
  BatchMessage m;
  EXPECT_NO_THROW(decode_batch(payload, 4, 64, false, 64, m));
  EXPECT_THROW(decode_batch(payload, 2, 64, false, 64, m), WireError);   // slot 3 of 2
  EXPECT_THROW(decode_batch(payload, 4, 12, false, 64, m), WireError);   // positions 10..12 of 12
  EXPECT_THROW(decode_batch(payload, 4, 64, true, 64, m), WireError);    // hidden states missing
  std::vector<std::byte> longer = payload;
  longer.push_back(std::byte{0});
  EXPECT_THROW(decode_batch(longer, 4, 64, false, 64, m), WireError);    // trailing bytes
}

// Byte offset of the first beginning's logit-bias count in a Batch head of `entries` entries:
// the 29-byte header, 14 bytes per entry, then 44 bytes of sampling parameters before it.
size_t logit_bias_offset(size_t entries) { return 29 + 14 * entries + 44; }

template <class T>
void poke(std::vector<std::byte>& bytes, size_t at, T value) {
  ASSERT_LE(at + sizeof(T), bytes.size());
  std::memcpy(bytes.data() + at, &value, sizeof(T));
}

TEST(Wire, LogitBiasRoundTripsAndMalformedOnesAreRefused) {
  Sample s;
  const std::vector<std::byte> payload = encode_batch_head(1, s.entries, 0, WireDtype::F32);
  const size_t at = logit_bias_offset(s.entries.size());
  {
    uint32_t n = 0;
    std::memcpy(&n, payload.data() + at, 4);
    ASSERT_EQ(n, 2u) << "the offset of the logit-bias count moved: update logit_bias_offset";
  }
  BatchMessage m;
  ASSERT_NO_THROW(decode_batch(payload, 4, 64, false, 64, m));
  ASSERT_EQ(m.entries[0].begin->logit_bias.size(), 2u);

  // None: a count of 0 and nothing after it.
  {
    Sample plain;
    plain.params.logit_bias.clear();
    const std::vector<std::byte> p = encode_batch_head(1, plain.entries, 0, WireDtype::F32);
    EXPECT_EQ(p.size() + 16, payload.size());
    BatchMessage b;
    ASSERT_NO_THROW(decode_batch(p, 4, 64, false, 64, b));
    EXPECT_TRUE(b.entries[0].begin->logit_bias.empty());
  }
  // The most there may be, and one more (refused by the decoder before it reads them; the
  // scheduler refuses such parameters before they reach the encoder).
  {
    Sample full;
    full.params.logit_bias.clear();
    for (size_t i = 0; i < engine::kMaxLogitBias; ++i) full.params.logit_bias.emplace_back(static_cast<Token>(i), 1.0f);
    std::vector<std::byte> p = encode_batch_head(1, full.entries, 0, WireDtype::F32);
    BatchMessage b;
    ASSERT_NO_THROW(decode_batch(p, 4, 64, false, 64, b));
    EXPECT_EQ(b.entries[0].begin->logit_bias.size(), engine::kMaxLogitBias);
    poke(p, at, static_cast<uint32_t>(engine::kMaxLogitBias + 1));
    EXPECT_THROW(decode_batch(p, 4, 64, false, 64, b), WireError);
  }
  const auto refused = [&](auto mutate) {
    std::vector<std::byte> p = payload;
    mutate(p);
    BatchMessage b;
    EXPECT_THROW(decode_batch(p, 4, 64, false, 64, b), WireError);
  };
  refused([&](auto& p) { poke(p, at, uint32_t{0xFFFFFFFFu}); });             // a huge count
  refused([&](auto& p) { poke(p, at, uint32_t{3}); });                       // more than there are
  refused([&](auto& p) { poke(p, at, uint32_t{1}); });                       // fewer: the rest is misread
  refused([&](auto& p) { poke(p, at + 4, Token{-1}); });                     // a negative token
  refused([&](auto& p) { poke(p, at + 12, Token{2}); });                     // the same token twice
  refused([&](auto& p) { poke(p, at + 12, Token{1}); });                     // out of order
  refused([&](auto& p) { poke(p, at + 8, 100.5f); });                        // above +100
  refused([&](auto& p) { poke(p, at + 16, -101.0f); });                      // below -100
  refused([&](auto& p) { poke(p, at + 8, std::numeric_limits<float>::quiet_NaN()); });
  refused([&](auto& p) { poke(p, at + 8, std::numeric_limits<float>::infinity()); });
  refused([&](auto& p) { p.resize(at + 10); });                              // cut inside the biases
  // After the biases: the grammar's byte count, prompt tokens and end-token count (12 bytes, an
  // unconstrained sequence), then resumed and kept.
  const size_t resumed_at = at + 4 + 16 + 12;
  refused([&](auto& p) { poke(p, resumed_at, uint32_t{64}); });              // resumed after a full context
  refused([&](auto& p) { poke(p, resumed_at + 4, uint32_t{64}); });          // a cached prefix of a full context
  {
    std::vector<std::byte> p = payload;
    poke(p, resumed_at, uint32_t{63});
    BatchMessage b;
    ASSERT_NO_THROW(decode_batch(p, 4, 64, false, 64, b));
    EXPECT_EQ(b.entries[0].resumed, 63u);
  }
}

TEST(Wire, GrammarRoundTripsAndMalformedOnesAreRefused) {
  Sample s;
  s.params.grammar = "root ::= \"a\"+";
  s.params.grammar_prompt_tokens = 3;
  s.params.grammar_end_tokens = {2, 0};
  const std::vector<std::byte> payload = encode_batch_head(1, s.entries, 0, WireDtype::F32);
  BatchMessage m;
  ASSERT_NO_THROW(decode_batch(payload, 4, 64, false, 64, m));
  EXPECT_EQ(m.entries[0].begin->grammar, s.params.grammar);
  EXPECT_EQ(m.entries[0].begin->grammar_prompt_tokens, 3);
  EXPECT_EQ(m.entries[0].begin->grammar_end_tokens, (std::vector<Token>{2, 0}));
  // The grammar's length follows the two logit biases.
  const size_t at = logit_bias_offset(s.entries.size()) + 4 + 2 * 8;
  {
    uint32_t n = 0;
    std::memcpy(&n, payload.data() + at, 4);
    ASSERT_EQ(n, s.params.grammar.size()) << "the offset of the grammar moved";
  }
  const size_t after_text = at + 4 + s.params.grammar.size();
  const auto refused = [&](auto mutate) {
    std::vector<std::byte> p = payload;
    mutate(p);
    BatchMessage b;
    EXPECT_THROW(decode_batch(p, 4, 64, false, 64, b), WireError);
  };
  refused([&](auto& p) { poke(p, at, static_cast<uint32_t>(engine::grammar::kMaxGrammarBytes + 1)); });  // too long
  refused([&](auto& p) { poke(p, at, uint32_t{0xFFFFFFF0u}); });                  // past the payload
  refused([&](auto& p) { poke(p, after_text, int32_t{-1}); });                    // negative prompt length
  refused([&](auto& p) { poke(p, after_text + 4, static_cast<uint32_t>(engine::kMaxGrammarEndTokens + 1)); });
  refused([&](auto& p) { poke(p, after_text + 8, Token{-3}); });                  // a negative end token
  refused([&](auto& p) { p.resize(after_text + 2); });                            // cut inside
}

TEST(Wire, SampledRoundTripAndVocabularyCheck) {
  std::vector<SampledToken> tokens(2);
  tokens[0].token = 17;
  tokens[0].logprob = -0.5f;
  tokens[0].top = {{17, -0.5f}, {3, -1.5f}};
  tokens[1].token = 4;
  tokens[1].logprob = -2.0f;
  const std::vector<std::byte> payload = encode_sampled(8, tokens);
  uint64_t id = 0;
  const auto back = decode_sampled(payload, 100, id);
  EXPECT_EQ(id, 8u);
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].token, 17);
  EXPECT_EQ(back[0].top.size(), 2u);
  EXPECT_EQ(back[0].top[1].token, 3);
  EXPECT_EQ(back[1].logprob, -2.0f);
  EXPECT_THROW(decode_sampled(payload, 10, id), WireError);  // token 17 outside a vocabulary of 10
}

TEST(Wire, MutatedAndRandomPayloadsNeverCrashTheDecoders) {
  Sample s;
  const int64_t n_embd = 32;
  std::vector<std::byte> batch = encode_batch_head(5, s.entries, n_embd, WireDtype::Q8_0);
  std::vector<std::byte> hidden;
  encode_hidden(WireDtype::Q8_0, std::vector<float>(4 * n_embd, 1.0f), n_embd, hidden);
  batch.insert(batch.end(), hidden.begin(), hidden.end());
  std::vector<SampledToken> tokens(3);
  for (auto& t : tokens) t.top = {{1, -1.0f}};
  const std::vector<std::byte> sampled = encode_sampled(5, tokens);
  std::mt19937_64 rng(123);
  int decoded = 0, refused = 0;
  for (int i = 0; i < 30000; ++i) {
    const bool is_batch = i % 2 == 0;
    std::vector<std::byte> p = is_batch ? batch : sampled;
    switch (rng() % 4) {
      case 0:  // flip bytes
        for (int f = 0; f < 1 + static_cast<int>(rng() % 4); ++f) p[rng() % p.size()] = static_cast<std::byte>(rng());
        break;
      case 1:  // truncate
        p.resize(rng() % p.size());
        break;
      case 2:  // random garbage
        p.resize(rng() % 256);
        for (auto& b : p) b = static_cast<std::byte>(rng());
        break;
      default:  // a count field set huge
        if (p.size() >= 16) {
          const uint32_t big = static_cast<uint32_t>(rng());
          std::memcpy(p.data() + 12 + (rng() % 3) * 4, &big, 4);
        }
        break;
    }
    try {
      if (is_batch) {
        BatchMessage m;
        decode_batch(p, 4, 64, true, n_embd, m);
        size_t total = 0;
        for (const auto& e : m.entries) {
          EXPECT_GE(e.slot, 0);
          EXPECT_LT(e.slot, 4);
          EXPECT_LE(e.pos0 + static_cast<int64_t>(e.tokens.size()), 64);
          total += e.tokens.size();
        }
        EXPECT_EQ(total, m.tokens.size());
        EXPECT_EQ(m.hidden.size(), m.tokens.size() * wire_row_bytes(m.hidden_dtype, n_embd));
      } else {
        uint64_t id = 0;
        for (const auto& t : decode_sampled(p, 50, id)) EXPECT_LT(t.token, 50);
      }
      ++decoded;
    } catch (const WireError&) {
      ++refused;
    }
  }
  EXPECT_GT(refused, 20000);
  EXPECT_EQ(decoded + refused, 30000);
}

TEST(Wire, LoadStageJsonIsChecked) {
  StageAssignment a;
  a.n_stages = 2;
  a.stage = 1;
  a.first = 4;
  a.last = 8;
  a.n_ctx = 128;
  a.n_seq = 2;
  a.n_batch = 96;
  a.model_name = "m.gguf";
  a.model_identity = "ab";
  a.wire = WireDtype::F16;
  const StageAssignment back = StageAssignment::from_json(a.to_json());
  EXPECT_EQ(back.first, 4);
  EXPECT_EQ(back.n_batch, 96);
  EXPECT_EQ(back.wire, WireDtype::F16);
  EXPECT_EQ(back.kv_type, DType::F16);
  for (const DType kv : {DType::F32, DType::Q8_0}) {  // every KV cache type travels
    StageAssignment other = a;
    other.kv_type = kv;
    EXPECT_EQ(StageAssignment::from_json(other.to_json()).kv_type, kv);
  }
  nlohmann::json bad = a.to_json();
  bad["last"] = 2;  // before first
  EXPECT_THROW(StageAssignment::from_json(bad), WireError);
  bad = a.to_json();
  bad["model_name"] = "../../etc/passwd";
  EXPECT_THROW(StageAssignment::from_json(bad), WireError);
  bad = a.to_json();
  bad.erase("n_ctx");
  EXPECT_THROW(StageAssignment::from_json(bad), WireError);
  bad = a.to_json();
  bad["n_batch"] = 0;
  EXPECT_THROW(StageAssignment::from_json(bad), WireError);
  bad = a.to_json();
  bad.erase("n_batch");  // an older coordinator: the default
  EXPECT_EQ(StageAssignment::from_json(bad).n_batch, 512);
  bad = a.to_json();
  bad["kv_type"] = "Q4_0";
  EXPECT_THROW(StageAssignment::from_json(bad), WireError);
}

}  // namespace
}  // namespace hearth::shard
