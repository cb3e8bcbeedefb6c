// Token sampling over a vector of logits: logit bias, penalties, then temperature, top-k, top-p,
// min-p, a seeded draw; greedy when temperature <= 0. Also logprobs of the chosen token and the
// top-N.
#pragma once

#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/token.h"

namespace hearth::engine {

// Bounds of SamplingParams::logit_bias (the API checks them, the wire decoder and the Sampler
// enforce them again).
inline constexpr size_t kMaxLogitBias = 1024;     // entries
inline constexpr float kMaxLogitBiasValue = 100;  // |bias|
// Bound of SamplingParams::grammar_end_tokens (the grammar text's is grammar::kMaxGrammarBytes).
inline constexpr size_t kMaxGrammarEndTokens = 64;

struct SamplingParams {
  float temperature = 0.8f;        // <= 0: greedy (argmax)
  int32_t top_k = 40;              // <= 0: off
  float top_p = 0.95f;             // >= 1: off
  float min_p = 0.05f;             // <= 0: off; keep tokens with p >= min_p * p(max)
  float repeat_penalty = 1.0f;     // 1: off; divides positive logits, multiplies negative ones
  int32_t repeat_last_n = 64;      // window of previous tokens the penalties look at
  float presence_penalty = 0.0f;   // subtracted once from tokens present in the window
  float frequency_penalty = 0.0f;  // subtracted per occurrence in the window
  uint64_t seed = 0;               // same seed, same logits -> same tokens
  int32_t n_logprobs = 0;          // top-N alternatives to report (0: none)
  // (token, bias) added to that token's logit before the penalties and everything after them
  // (OpenAI's logit_bias: -100 bans a token in practice, +100 forces it). At most kMaxLogitBias
  // entries, each bias finite in [-100, 100]; tokens outside the vocabulary are ignored.
  std::vector<std::pair<Token, float>> logit_bias;
  // Constrained decoding (engine/grammar, applied by SlotSamplers in engine/batch/batch.h): when
  // `grammar` (GBNF text, root rule `root`) is not empty, every token after the first
  // `grammar_prompt_tokens` tokens of the sequence (its prompt) must keep the output a prefix of
  // a sentence of the grammar, and the end tokens `grammar_end_tokens` (at most
  // kMaxGrammarEndTokens) are allowed only where the sentence is complete.
  std::string grammar;
  int32_t grammar_prompt_tokens = 0;
  std::vector<Token> grammar_end_tokens;
};

struct TokenLogprob {
  Token token;
  float logprob;  // log-softmax of the raw logits (before logit bias, penalties and temperature)
};

struct SampledToken {
  Token token;
  float logprob;                     // of the chosen token, as in TokenLogprob
  std::vector<TokenLogprob> top;     // n_logprobs best, highest first
};

class Sampler {
 public:
  // `resumed`: the sequence already sampled this many tokens under these parameters before (a
  // replay onto a rebuilt pipeline): the random generator continues after their draws, so the
  // sequence goes on exactly as it would have. Every sample() with temperature > 0 takes exactly
  // one draw (even where there is no distribution to draw from), so the count is all it needs.
  explicit Sampler(const SamplingParams& params, uint32_t resumed = 0);

  // Samples from `logits` (size = vocabulary) given the tokens of the sequence so far
  // (prompt and generated; the penalties look at the last repeat_last_n of them).
  // `log_z`: the log-sum-exp of the logits when the caller knows it better than `logits` do (a
  // tensor-parallel stage's candidates spread over a vocabulary of -inf: see
  // SlotSamplers::candidates_needed); NaN: computed from `logits`.
  SampledToken sample(std::span<const float> logits, std::span<const Token> history,
                      double log_z = std::numeric_limits<double>::quiet_NaN());

  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, Token>> candidates_;  // reused between calls
};

// Finds stop strings in streamed text without ever emitting any part of one: text that could
// be the start of a stop string is held back until it is clearly not.
class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops);
  // Appends `text`; returns what can be emitted now. Sets `stopped` when a stop string
  // completed (the returned text then ends just before it and the rest is dropped).
  std::string push(std::string_view text, bool& stopped);
  // End of stream: the held-back text (no stop string completed).
  std::string flush();
  // The stop string that completed (after push() set `stopped`); empty before.
  const std::string& matched() const { return matched_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  std::string matched_;
};

}  // namespace hearth::engine
