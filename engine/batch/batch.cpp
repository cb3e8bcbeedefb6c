#include "engine/batch/batch.h"

#include <algorithm>
#include <chrono>
#include <limits>

#include "core/error.h"

namespace hearth::engine {

void flatten_entries(std::span<const BatchEntry> entries, std::vector<Token>& tokens,
                     std::vector<kernels::KvSlot>& slots, std::vector<int32_t>& output_rows) {
  tokens.clear();
  slots.clear();
  output_rows.clear();
  for (const BatchEntry& e : entries) {
    for (size_t i = 0; i < e.tokens.size(); ++i) {
      tokens.push_back(e.tokens[i]);
      slots.push_back({e.slot, e.pos0 + static_cast<int32_t>(i)});
    }
    if (e.sample) output_rows.push_back(static_cast<int32_t>(tokens.size()) - 1);
  }
}

int32_t SlotSamplers::candidates_needed(std::span<const BatchEntry> entries, size_t n_vocab) const {
  constexpr int32_t kMostCandidates = 1024;  // beyond this, gathering the logits costs little more
  int32_t k = 0;
  for (const BatchEntry& e : entries) {
    if (e.slot < 0 || static_cast<size_t>(e.slot) >= slots_.size()) return 0;  // sample() says why
    const Slot& s = slots_[static_cast<size_t>(e.slot)];
    if (!e.sample) continue;
    const SamplingParams* p = e.begin != nullptr ? e.begin : (s.sampler ? &s.sampler->params() : nullptr);
    if (p == nullptr || !p->grammar.empty() || (e.begin == nullptr && s.matcher) || p->n_logprobs > 0 ||
        !p->logit_bias.empty() || p->repeat_penalty != 1.0f || p->presence_penalty != 0.0f ||
        p->frequency_penalty != 0.0f) {
      return 0;
    }
    if (p->temperature <= 0.0f) {
      k = std::max(k, 1);
    } else if (p->top_k > 0 && static_cast<size_t>(p->top_k) < n_vocab && p->top_k <= kMostCandidates) {
      k = std::max(k, p->top_k);
    } else {
      return 0;
    }
  }
  return k;
}

std::vector<SampledToken> SlotSamplers::sample(std::span<const BatchEntry> entries, std::span<const float> logits,
                                               size_t n_vocab, std::span<const double> log_z) {
  std::vector<SampledToken> sampled;
  size_t row = 0;
  for (const BatchEntry& e : entries) {
    if (e.slot < 0 || static_cast<size_t>(e.slot) >= slots_.size()) {
      throw Error(fmt::format("sequence slot {} is outside the {} slots", e.slot, slots_.size()));
    }
    Slot& s = slots_[static_cast<size_t>(e.slot)];
    if (e.begin != nullptr) {
      // The slot's history is the tokens its KV cache holds; a prompt cache hit keeps a prefix.
      if (e.kept > s.history.size() || static_cast<int64_t>(e.kept) != e.pos0) {
        throw Error(fmt::format("sequence slot {} keeps {} cached tokens at position {} but holds {}", e.slot, e.kept,
                                e.pos0, s.history.size()));
      }
      s.sampler.emplace(*e.begin, e.resumed);
      s.history.resize(e.kept);
      s.matcher.reset();
      if (!e.begin->grammar.empty()) {
        s.matcher.emplace(compiled(*e.begin));
        s.grammar_prompt_tokens = e.begin->grammar_prompt_tokens;
      }
    }
    if (!s.sampler) throw Error(fmt::format("sequence slot {} was stepped before its sequence began", e.slot));
    if (s.matcher) {
      // The generated tokens among these advance the grammar (see the class comment). A token
      // the grammar refuses leaves it where it was (only a dead end's end token can be one).
      for (size_t i = 0; i < e.tokens.size(); ++i) {
        if (s.history.size() + i >= static_cast<size_t>(std::max(s.grammar_prompt_tokens, 0))) {
          s.matcher->accept_token(e.tokens[i]);
        }
      }
    }
    s.history.insert(s.history.end(), e.tokens.begin(), e.tokens.end());
    if (!e.sample) continue;
    HEARTH_CHECK((row + 1) * n_vocab <= logits.size(), "{} logit rows for more sampling entries", logits.size() / n_vocab);
    std::span<const float> row_logits = logits.subspan(row * n_vocab, n_vocab);
    if (s.matcher) {
      // The output head may have rows beyond the tokenizer's tokens (padding): masked too.
      s.matcher->fill_mask(mask_);
      masked_logits_.assign(row_logits.begin(), row_logits.end());
      mask_.apply(masked_logits_);
      row_logits = masked_logits_;
    }
    sampled.push_back(log_z.empty() ? s.sampler->sample(row_logits, s.history)
                                    : s.sampler->sample(row_logits, s.history, log_z[row]));
    ++row;
  }
  return sampled;
}

const char* executor_state_name(ExecutorHealth::State state) {
  switch (state) {
    case ExecutorHealth::State::serving: return "serving";
    case ExecutorHealth::State::recovering: return "recovering";
    case ExecutorHealth::State::down: return "down";
  }
  return "?";
}

std::shared_ptr<grammar::CompiledGrammar> SlotSamplers::compiled(const SamplingParams& params) {
  if (vocabulary_ == nullptr) throw Error("this stage has no vocabulary to match a grammar with");
  if (params.grammar.size() > grammar::kMaxGrammarBytes || params.grammar_end_tokens.size() > kMaxGrammarEndTokens) {
    throw Error("a grammar over its limits");
  }
  std::string key = params.grammar;
  key.push_back('\0');
  for (Token t : params.grammar_end_tokens) key.append(reinterpret_cast<const char*>(&t), sizeof(t));
  for (size_t i = 0; i < grammar_cache_.size(); ++i) {
    if (grammar_cache_[i].first == key) {
      auto hit = std::move(grammar_cache_[i]);
      grammar_cache_.erase(grammar_cache_.begin() + static_cast<std::ptrdiff_t>(i));
      grammar_cache_.push_back(std::move(hit));
      return grammar_cache_.back().second;
    }
  }
  constexpr size_t kCachedGrammars = 16;
  auto g = std::make_shared<grammar::CompiledGrammar>(grammar::parse_gbnf(params.grammar), vocabulary_,
                                                      params.grammar_end_tokens);
  if (grammar_cache_.size() >= kCachedGrammars) grammar_cache_.erase(grammar_cache_.begin());
  grammar_cache_.emplace_back(std::move(key), g);
  return g;
}

LocalExecutor::LocalExecutor(Stage& stage, std::shared_ptr<const grammar::Vocabulary> vocabulary)
    : stage_(stage), samplers_(stage.options().n_seq, std::move(vocabulary)) {
  // Every layer, or the first stage of a pipeline whose rest it runs (StageOptions::rest_of_pipeline).
  HEARTH_CHECK(stage.is_first() && (stage.is_last() || stage.options().rest_of_pipeline),
               "a local executor needs every layer");
}

void LocalExecutor::submit(std::span<const BatchEntry> entries) {
  const auto start = std::chrono::steady_clock::now();
  try {
    done_.emplace_back(run(entries));
  } catch (const Error& e) {
    done_.emplace_back(std::string(e.what()));
  }
  busy_ns_ += static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count());
}

std::vector<SampledToken> LocalExecutor::collect() {
  HEARTH_CHECK(!done_.empty(), "collect() without a submitted step");
  auto result = std::move(done_.front());
  done_.pop_front();
  if (auto* error = std::get_if<std::string>(&result)) throw Error(*error);
  return std::move(std::get<std::vector<SampledToken>>(result));
}

std::vector<SampledToken> LocalExecutor::run(std::span<const BatchEntry> entries) {
  flatten_entries(entries, tokens_, kv_slots_, output_rows_);
  const auto n_vocab = static_cast<size_t>(stage_.config().n_vocab);
  // A tensor-parallel stage sends its shards' best tokens instead of gathering the logits when
  // the samplers need no more; so does the last stage of a pipeline this stage leads in other
  // processes (StageOptions::rest_of_pipeline), which would otherwise send a vocabulary of floats
  // back a token (llama 3: 513 KB) where 12 bytes do for greedy.
  const bool remote_logits = stage_.tensor_parallel() || static_cast<bool>(stage_.options().rest_of_pipeline);
  const int32_t k = remote_logits ? samplers_.candidates_needed(entries, n_vocab) : 0;
  stage_.forward({.tokens = tokens_, .hidden = {}, .slots = kv_slots_, .output_rows = output_rows_, .top_k = k},
                 logits_);
  if (k == 0) return samplers_.sample(entries, logits_, n_vocab);
  const int64_t width = candidate_row_width(k);
  const size_t rows = logits_.size() / static_cast<size_t>(width);
  candidates_.assign(rows * n_vocab, -std::numeric_limits<float>::infinity());
  log_z_.resize(rows);
  for (size_t row = 0; row < rows; ++row) {
    const float* src = logits_.data() + row * static_cast<size_t>(width);
    log_z_[row] = src[0];
    for (int32_t j = 0; j < k; ++j) {
      const float id = src[kCandidateHeader + 2 * j + 1];
      if (id >= 0.0f) candidates_[row * n_vocab + static_cast<size_t>(id)] = src[kCandidateHeader + 2 * j];
    }
  }
  return samplers_.sample(entries, candidates_, n_vocab, log_z_);
}

}  // namespace hearth::engine
