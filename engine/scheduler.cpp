#include "engine/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace hearth::engine {

// ---- LocalExecutor ----------------------------------------------------------------------

LocalExecutor::LocalExecutor(Stage& stage) : stage_(stage), slots_(static_cast<size_t>(stage.options().n_seq)) {
  HEARTH_CHECK(stage.is_first() && stage.is_last(), "a local executor needs every layer");
}

void LocalExecutor::begin_sequence(int32_t slot, const SamplingParams& params) {
  Slot& s = slots_.at(static_cast<size_t>(slot));
  s.sampler.emplace(params);
  s.history.clear();
}

void LocalExecutor::end_sequence(int32_t slot) {
  Slot& s = slots_.at(static_cast<size_t>(slot));
  s.sampler.reset();
  s.history.clear();
}

std::vector<SampledToken> LocalExecutor::step(std::span<const BatchEntry> entries) {
  tokens_.clear();
  kv_slots_.clear();
  output_rows_.clear();
  for (const BatchEntry& e : entries) {
    for (size_t i = 0; i < e.tokens.size(); ++i) {
      tokens_.push_back(e.tokens[i]);
      kv_slots_.push_back({e.slot, e.pos0 + static_cast<int32_t>(i)});
    }
    if (e.sample) output_rows_.push_back(static_cast<int32_t>(tokens_.size()) - 1);
  }
  stage_.forward({.tokens = tokens_, .hidden = {}, .slots = kv_slots_, .output_rows = output_rows_}, logits_);

  std::vector<SampledToken> sampled;
  const size_t n_vocab = static_cast<size_t>(stage_.config().n_vocab);
  size_t row = 0;
  for (const BatchEntry& e : entries) {
    Slot& s = slots_.at(static_cast<size_t>(e.slot));
    HEARTH_CHECK(s.sampler.has_value(), "step for slot {} without begin_sequence", e.slot);
    s.history.insert(s.history.end(), e.tokens.begin(), e.tokens.end());
    if (!e.sample) continue;
    sampled.push_back(s.sampler->sample(std::span<const float>(logits_.data() + row * n_vocab, n_vocab), s.history));
    ++row;
  }
  return sampled;
}

// ---- Scheduler --------------------------------------------------------------------------

struct Scheduler::Sequence {
  SequenceRequest request;
  std::shared_ptr<SequenceHandle> handle = std::make_shared<SequenceHandle>();
  int32_t slot = -1;
  int32_t n_past = 0;       // positions already in the KV cache
  int32_t limit = 0;        // tokens to generate at most
  std::vector<Token> generated;
  std::optional<IncrementalDecoder> decoder;
  std::optional<StopStringMatcher> stops;
  bool finished = false;

  int32_t prompt_size() const { return static_cast<int32_t>(request.prompt.size()); }
  bool prefilling() const { return n_past < prompt_size(); }
};

Scheduler::Scheduler(BatchExecutor& executor, const Tokenizer& tokenizer, const SchedulerOptions& options)
    : executor_(executor), tokenizer_(tokenizer), options_(options) {
  HEARTH_CHECK(options.step_tokens > 0 && options.max_queue >= 0);
  for (int32_t s = executor.n_slots() - 1; s >= 0; --s) free_slots_.push_back(s);
  stats_.slots = executor.n_slots();
  stats_.kv_positions_total = int64_t{executor.n_slots()} * executor.n_ctx();
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

std::optional<std::vector<std::shared_ptr<SequenceHandle>>> Scheduler::submit(std::vector<SequenceRequest> requests) {
  const int32_t n_ctx = executor_.n_ctx();
  if (static_cast<int32_t>(requests.size()) > executor_.n_slots()) {
    throw Error(fmt::format("{} sequences requested at once but the server runs at most {} in parallel",
                            requests.size(), executor_.n_slots()));
  }
  std::vector<std::unique_ptr<Sequence>> sequences;
  for (SequenceRequest& r : requests) {
    if (r.prompt.empty()) throw Error("the prompt is empty (no tokens)");
    if (static_cast<int32_t>(r.prompt.size()) >= n_ctx) {
      throw Error(fmt::format("the prompt has {} tokens but the context holds {}", r.prompt.size(), n_ctx));
    }
    auto seq = std::make_unique<Sequence>();
    seq->request = std::move(r);
    const int32_t room = n_ctx - seq->prompt_size();
    const int32_t max_tokens = seq->request.options.max_tokens;
    seq->limit = max_tokens < 0 ? room : std::min(max_tokens, room);
    seq->decoder.emplace(tokenizer_);
    seq->stops.emplace(seq->request.options.stop);
    sequences.push_back(std::move(seq));
  }
  std::vector<std::shared_ptr<SequenceHandle>> handles;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return std::nullopt;
    // Room: free slots not yet claimed by the queue, plus the queue's own bound.
    const int64_t capacity = static_cast<int64_t>(free_slots_.size()) + options_.max_queue;
    if (static_cast<int64_t>(queue_.size() + sequences.size()) > capacity) return std::nullopt;
    for (auto& seq : sequences) {
      handles.push_back(seq->handle);
      queue_.push_back(std::move(seq));
    }
    stats_.waiting = static_cast<int32_t>(queue_.size());
  }
  wake_.notify_all();
  return handles;
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void Scheduler::finish(Sequence& seq, const std::string& reason, const std::string& error, bool release_held) {
  if (seq.finished) return;
  seq.finished = true;
  SequenceResult result;
  result.finish_reason = reason;
  result.error = error;
  result.prompt_tokens = seq.prompt_size();
  result.completion_tokens = static_cast<int32_t>(seq.generated.size());
  if (release_held) {
    // Release what was held back: an incomplete character (as U+FFFD) or a partial stop string.
    bool stopped = false;
    result.tail = seq.stops->push(seq.decoder->flush(), stopped);
    if (!stopped) result.tail += seq.stops->flush();
  }
  if (seq.request.on_finish) seq.request.on_finish(result);
}

void Scheduler::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    wake_.wait(lock, [&] { return stopping_ || !queue_.empty() || !running_.empty(); });
    if (stopping_) break;
    run_step(lock);
  }
  // Shutting down: nobody waits forever.
  std::vector<std::unique_ptr<Sequence>> left;
  for (auto& s : queue_) left.push_back(std::move(s));
  queue_.clear();
  for (auto& s : running_) left.push_back(std::move(s));
  running_.clear();
  lock.unlock();
  for (auto& s : left) finish(*s, "cancelled", "the server is shutting down", false);
}

// Called with the lock held; releases it while the executor runs.
void Scheduler::run_step(std::unique_lock<std::mutex>& lock) {
  // Admit from the queue into free slots, dropping what was cancelled while waiting.
  std::vector<std::unique_ptr<Sequence>> dropped;
  for (auto it = queue_.begin(); it != queue_.end();) {
    if ((*it)->handle->cancelled()) {
      dropped.push_back(std::move(*it));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  std::vector<Sequence*> admitted;
  while (!queue_.empty() && !free_slots_.empty()) {
    std::unique_ptr<Sequence> seq = std::move(queue_.front());
    queue_.pop_front();
    seq->slot = free_slots_.back();
    free_slots_.pop_back();
    admitted.push_back(seq.get());
    running_.push_back(std::move(seq));
  }
  stats_.waiting = static_cast<int32_t>(queue_.size());
  lock.unlock();

  for (auto& seq : dropped) finish(*seq, "cancelled", "", false);
  for (Sequence* seq : admitted) executor_.begin_sequence(seq->slot, seq->request.options.sampling);

  // Cancelled running sequences leave before the step.
  std::vector<int32_t> released;
  for (auto& seq : running_) {
    if (!seq->finished && seq->handle->cancelled()) finish(*seq, "cancelled", "", false);
  }

  // The batch: one token per decoding sequence, then prompt chunks in admission order.
  std::vector<BatchEntry> entries;
  std::vector<Sequence*> sampled_for;
  std::vector<Sequence*> decoded;
  int32_t budget = options_.step_tokens;
  for (auto& seq : running_) {
    if (seq->finished || seq->prefilling()) continue;
    entries.push_back({seq->slot, seq->n_past, std::span<const Token>(&seq->generated.back(), 1), true});
    sampled_for.push_back(seq.get());
    decoded.push_back(seq.get());
    --budget;
  }
  std::vector<std::pair<Sequence*, int32_t>> prefilled;  // sequence, tokens taken this step
  for (auto& seq : running_) {
    if (budget <= 0) break;
    if (seq->finished || !seq->prefilling()) continue;
    const int32_t count = std::min(budget, seq->prompt_size() - seq->n_past);
    const bool completes = seq->n_past + count == seq->prompt_size();
    entries.push_back({seq->slot, seq->n_past,
                       std::span<const Token>(seq->request.prompt.data() + seq->n_past, static_cast<size_t>(count)),
                       completes});
    if (completes) sampled_for.push_back(seq.get());
    prefilled.emplace_back(seq.get(), count);
    budget -= count;
  }

  uint64_t n_prompt = 0, n_generated = 0;
  double seconds = 0.0;
  if (!entries.empty()) {
    const auto start = std::chrono::steady_clock::now();
    std::vector<SampledToken> sampled;
    std::string step_error;
    try {
      sampled = executor_.step(entries);
      HEARTH_CHECK(sampled.size() == sampled_for.size(), "executor returned {} tokens for {} sequences", sampled.size(),
                   sampled_for.size());
    } catch (const Error& e) {
      step_error = e.what();
    }
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!step_error.empty()) {
      for (const BatchEntry& e : entries) {
        for (auto& seq : running_) {
          if (seq->slot == e.slot) finish(*seq, "error", step_error, false);
        }
      }
    } else {
      for (auto& [seq, count] : prefilled) {
        seq->n_past += count;
        n_prompt += static_cast<uint64_t>(count);
      }
      for (Sequence* seq : decoded) ++seq->n_past;  // the fed-back token is now cached
      for (size_t i = 0; i < sampled_for.size(); ++i) {
        Sequence& seq = *sampled_for[i];
        const SampledToken& st = sampled[i];
        if (!seq.request.options.ignore_eos && tokenizer_.is_end_of_generation(st.token)) {
          finish(seq, "stop", "", true);
          continue;
        }
        seq.generated.push_back(st.token);
        ++n_generated;
        bool stopped = false;
        TokenEvent event{st, seq.stops->push(seq.decoder->push(st.token), stopped)};
        if (seq.request.on_token) seq.request.on_token(event);
        if (stopped) {
          finish(seq, "stop", "", /*release_held=*/false);  // the stop string ends the text
        } else if (static_cast<int32_t>(seq.generated.size()) >= seq.limit) {
          finish(seq, "length", "", true);
        }
      }
    }
  }

  // Free the slots of finished sequences.
  for (auto& seq : running_) {
    if (seq->finished) {
      executor_.end_sequence(seq->slot);
      released.push_back(seq->slot);
    }
  }
  std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s->finished; });

  lock.lock();
  for (int32_t slot : released) free_slots_.push_back(slot);
  stats_.running = static_cast<int32_t>(running_.size());
  int64_t used = 0;
  for (auto& seq : running_) used += seq->n_past;
  stats_.kv_positions_used = used;
  stats_.prompt_tokens += n_prompt;
  stats_.generated_tokens += n_generated;
  if (!entries.empty()) ++stats_.steps;
  stats_.busy_seconds += seconds;
}

}  // namespace hearth::engine
