#include "engine/generate/scheduler.h"

#include <algorithm>
#include <exception>

#include "core/error.h"

namespace hearth::engine {

// ---- Scheduler --------------------------------------------------------------------------

struct Scheduler::Sequence {
  SequenceRequest request;
  std::shared_ptr<SequenceHandle> handle = std::make_shared<SequenceHandle>();
  int32_t slot = -1;
  int32_t n_past = 0;       // positions already in the KV cache
  int32_t limit = 0;        // tokens to generate at most
  std::vector<Token> generated;
  // A replay after the executor was rebuilt: the prompt and the tokens generated before, all
  // prefilled again (empty: the prompt alone is prefilled).
  std::vector<Token> replay;
  std::optional<IncrementalDecoder> decoder;
  std::optional<StopStringMatcher> stops;
  bool begun = false;       // its first entry has been submitted (the executor knows its sampler)
  int32_t kept = 0;         // prompt tokens whose KV its slot already held (the prompt cache)
  bool in_flight = false;   // part of a submitted step not yet collected
  bool finished = false;

  int32_t prompt_size() const { return static_cast<int32_t>(request.prompt.size()); }
  const std::vector<Token>& prefill() const { return replay.empty() ? request.prompt : replay; }
  int32_t prefill_size() const { return static_cast<int32_t>(prefill().size()); }
  bool prefilling() const { return n_past < prefill_size(); }
};

Scheduler::Scheduler(BatchExecutor& executor, const Tokenizer& tokenizer, const SchedulerOptions& options)
    : executor_(executor), tokenizer_(tokenizer), options_(options) {
  HEARTH_CHECK(options.step_tokens > 0 && options.max_queue >= 0);
  for (int32_t s = executor.n_slots() - 1; s >= 0; --s) free_slots_.push_back(s);
  slot_cache_.resize(static_cast<size_t>(executor.n_slots()));
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
    Sampler{r.options.sampling};  // throws Error for bad parameters here, not on a pipeline's last stage
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
  SchedulerStats s;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    s = stats_;
  }
  s.stage_busy_seconds = executor_.stage_busy_seconds();
  s.executor_failure = executor_.failure();
  s.executor = executor_.health();
  return s;
}

void Scheduler::finish(Sequence& seq, const std::string& reason, const std::string& error, bool release_held) {
  if (seq.finished) return;
  seq.finished = true;
  SequenceResult result;
  result.finish_reason = reason;
  result.error = error;
  result.prompt_tokens = seq.prompt_size();
  result.completion_tokens = static_cast<int32_t>(seq.generated.size());
  result.cached_tokens = seq.kept;
  if (reason == "stop") result.stop_string = seq.stops->matched();
  if (release_held) {
    // Release what was held back: an incomplete character (as U+FFFD) or a partial stop string.
    bool stopped = false;
    result.tail = seq.stops->push(seq.decoder->flush(), stopped);
    if (!stopped) result.tail += seq.stops->flush();
  }
  if (seq.request.on_finish) seq.request.on_finish(result);
}

// A submitted step: what it holds, to apply the results when it is collected.
struct Scheduler::Step {
  std::vector<BatchEntry> entries;
  std::vector<Sequence*> members;                         // every sequence in the step
  std::vector<Sequence*> sampled_for;                     // one per sampling entry, in order
  std::vector<Sequence*> decoded;                         // fed back their last token
  std::vector<std::pair<Sequence*, int32_t>> prefilled;   // prompt tokens taken
  std::chrono::steady_clock::time_point start;
};

void Scheduler::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    // The executor may ask for a rebuild at any time (a node came back): look twice a second.
    const bool work = wake_.wait_for(lock, std::chrono::milliseconds(500), [&] {
      if (stopping_ || !queue_.empty() || !in_flight_.empty() || rebuild_pending_) return true;
      return std::any_of(running_.begin(), running_.end(), [](const auto& s) { return !s->in_flight; });
    });
    if (stopping_) break;
    if (!work && !executor_.rebuild_wanted()) continue;

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
    while (!queue_.empty() && !free_slots_.empty()) {
      std::unique_ptr<Sequence> seq = std::move(queue_.front());
      queue_.pop_front();
      admit(*seq);
      seq->handle->admitted_.store(true, std::memory_order_release);
      running_.push_back(std::move(seq));
    }
    stats_.waiting = static_cast<int32_t>(queue_.size());
    lock.unlock();

    for (auto& seq : dropped) finish(*seq, "cancelled", "", false);
    // Cancelled sequences leave between their steps.
    for (auto& seq : running_) {
      if (!seq->finished && !seq->in_flight && seq->handle->cancelled()) finish(*seq, "cancelled", "", false);
    }
    // A failed executor, or one that asks for a rebuild: launch nothing, drain, rebuild. One that
    // could not rebuild fails what arrives until it asks again.
    const bool rebuild = rebuild_pending_ || executor_.rebuild_wanted();
    if (executor_down_ && !rebuild) {
      fail_everything(fmt::format("the model cannot be served now: {}", executor_.failure()));
    } else if (!rebuild) {
      const int32_t n_active = static_cast<int32_t>(
          std::count_if(running_.begin(), running_.end(), [](const auto& s) { return !s->finished; }));
      while (static_cast<int32_t>(in_flight_.size()) < executor_.max_in_flight() && launch_step(n_active)) {
      }
    }
    if (!in_flight_.empty()) {
      complete_step();
    } else if (rebuild) {
      rebuild_executor();
    }

    // Free the slots of finished sequences that no step still holds.
    std::vector<int32_t> released;
    for (auto& seq : running_) {
      if (!seq->finished || seq->in_flight) continue;
      released.push_back(seq->slot);
      // The slot's KV holds the sequence's tokens up to n_past: the prompt cache of that slot.
      SlotCache& cache = slot_cache_[static_cast<size_t>(seq->slot)];
      cache.tokens = seq->request.prompt;
      cache.tokens.insert(cache.tokens.end(), seq->generated.begin(), seq->generated.end());
      cache.tokens.resize(std::min(cache.tokens.size(), static_cast<size_t>(seq->n_past)));
    }
    std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s->finished && !s->in_flight; });

    lock.lock();
    for (int32_t slot : released) free_slots_.push_back(slot);
    stats_.running = static_cast<int32_t>(running_.size());
    int64_t used = 0;
    for (auto& seq : running_) used += seq->n_past;
    stats_.kv_positions_used = used;
  }
  // Shutting down: nobody waits forever. Steps still in flight are collected first, so the
  // executor holds no pointer into the sequences.
  lock.unlock();
  while (!in_flight_.empty()) {
    try {
      executor_.collect();
    } catch (const Error&) {
    }
    in_flight_.pop_front();
  }
  lock.lock();
  std::vector<std::unique_ptr<Sequence>> left;
  for (auto& s : queue_) left.push_back(std::move(s));
  queue_.clear();
  for (auto& s : running_) left.push_back(std::move(s));
  running_.clear();
  lock.unlock();
  for (auto& s : left) finish(*s, "cancelled", "the server is shutting down", false);
}

bool Scheduler::launch_step(int32_t n_active) {
  // With several steps in flight (a pipeline), the active sequences are spread over them so
  // that every stage has a share; one step in flight takes them all.
  const int32_t depth = std::max(1, executor_.max_in_flight());
  const int32_t group = std::max(1, (n_active + depth - 1) / depth);
  auto step = std::make_unique<Step>();
  int32_t budget = options_.step_tokens;
  // One token per decoding sequence, then prompt chunks in admission order.
  for (auto& seq : running_) {
    if (static_cast<int32_t>(step->members.size()) >= group) break;
    if (seq->finished || seq->in_flight || seq->prefilling()) continue;
    HEARTH_CHECK(!seq->generated.empty());
    step->entries.push_back({seq->slot, seq->n_past, std::span<const Token>(&seq->generated.back(), 1), true, nullptr});
    step->sampled_for.push_back(seq.get());
    step->decoded.push_back(seq.get());
    step->members.push_back(seq.get());
    --budget;
  }
  for (auto& seq : running_) {
    if (budget <= 0 || static_cast<int32_t>(step->members.size()) >= group) break;
    if (seq->finished || seq->in_flight || !seq->prefilling()) continue;
    const int32_t count = std::min(budget, seq->prefill_size() - seq->n_past);
    const bool completes = seq->n_past + count == seq->prefill_size();
    const SamplingParams* begin = seq->begun ? nullptr : &seq->request.options.sampling;
    const uint32_t resumed = begin != nullptr ? static_cast<uint32_t>(seq->generated.size()) : 0;
    const uint32_t kept = begin != nullptr ? static_cast<uint32_t>(seq->n_past) : 0;
    step->entries.push_back({seq->slot, seq->n_past,
                             std::span<const Token>(seq->prefill().data() + seq->n_past, static_cast<size_t>(count)),
                             completes, begin, resumed, kept});
    if (completes) step->sampled_for.push_back(seq.get());
    step->prefilled.emplace_back(seq.get(), count);
    step->members.push_back(seq.get());
    budget -= count;
  }
  if (step->entries.empty()) return false;
  for (Sequence* seq : step->members) {
    seq->in_flight = true;
    seq->begun = true;
  }
  step->start = std::chrono::steady_clock::now();
  executor_.submit(step->entries);
  in_flight_.push_back(std::move(step));
  return true;
}

void Scheduler::complete_step() {
  std::unique_ptr<Step> step = std::move(in_flight_.front());
  in_flight_.pop_front();
  std::vector<SampledToken> sampled;
  std::string error;
  try {
    sampled = executor_.collect();
    HEARTH_CHECK(sampled.size() == step->sampled_for.size(), "executor returned {} tokens for {} sequences",
                 sampled.size(), step->sampled_for.size());
  } catch (const Error& e) {
    error = e.what();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - step->start).count();
  for (Sequence* seq : step->members) seq->in_flight = false;
  uint64_t n_prompt = 0, n_generated = 0;
  if (!error.empty() && !executor_.failure().empty()) {
    // The executor failed (a stage died): its steps are lost, not the sequences. Drain the
    // rest, then rebuild and replay (loop()).
    rebuild_pending_ = true;
  } else if (rebuild_pending_) {
    // A step that completed after another failed: its work is lost with the executor's state.
  } else if (!error.empty()) {
    for (Sequence* seq : step->members) finish(*seq, "error", error, false);  // this step's input was bad
  } else {
    for (auto& [seq, count] : step->prefilled) {
      seq->n_past += count;
      n_prompt += static_cast<uint64_t>(count);
    }
    for (Sequence* seq : step->decoded) ++seq->n_past;  // the fed-back token is now cached
    for (size_t i = 0; i < step->sampled_for.size(); ++i) {
      Sequence& seq = *step->sampled_for[i];
      if (seq.finished) continue;  // cancelled meanwhile
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
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.prompt_tokens += n_prompt;
  stats_.generated_tokens += n_generated;
  ++stats_.steps;
  stats_.busy_seconds += seconds;
}

void Scheduler::rebuild_executor() {
  rebuild_pending_ = false;
  if (!executor_.rebuild()) {
    executor_down_ = true;
    fail_everything(fmt::format("the model cannot be served now: {}", executor_.failure()));
    return;
  }
  executor_down_ = false;
  for (SlotCache& cache : slot_cache_) cache.tokens.clear();
  // Every KV slot is empty now: each running sequence prefills its prompt and what it generated
  // again, and its sampler resumes after those tokens.
  uint64_t sequences = 0, tokens = 0;
  for (auto& seq : running_) {
    if (seq->finished) continue;
    seq->replay = seq->request.prompt;
    seq->replay.insert(seq->replay.end(), seq->generated.begin(), seq->generated.end());
    seq->n_past = 0;
    seq->begun = false;
    ++sequences;
    tokens += seq->replay.size();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.replayed_sequences += sequences;
  stats_.replayed_tokens += tokens;
}

void Scheduler::admit(Sequence& seq) {
  // Each free slot is worth the prompt tokens its cache shares (at least one prompt token is left
  // to compute: its logits give the first token) less the cached tokens the new sequence would
  // overwrite: a continued conversation takes its own slot, and a prompt that shares only a BOS
  // or a short system prompt with a long cached conversation takes an empty or stale slot rather
  // than destroy it. Ties go to the least recently used slot.
  size_t best = 0, best_shared = 0;
  int64_t best_value = 0;
  const std::vector<Token>& prompt = seq.request.prompt;
  for (size_t i = 0; i < free_slots_.size(); ++i) {
    const SlotCache& cache = slot_cache_[static_cast<size_t>(free_slots_[i])];
    size_t shared = 0;
    if (options_.prefix_cache) {
      const size_t limit = std::min(cache.tokens.size(), prompt.size() - 1);
      while (shared < limit && cache.tokens[shared] == prompt[shared]) ++shared;
    }
    const int64_t value = 2 * static_cast<int64_t>(shared) - static_cast<int64_t>(cache.tokens.size());
    const SlotCache& held = slot_cache_[static_cast<size_t>(free_slots_[best])];
    if (i == 0 || value > best_value || (value == best_value && cache.last_used < held.last_used)) {
      best = i;
      best_shared = shared;
      best_value = value;
    }
  }
  seq.slot = free_slots_[best];
  free_slots_.erase(free_slots_.begin() + static_cast<std::ptrdiff_t>(best));
  SlotCache& cache = slot_cache_[static_cast<size_t>(seq.slot)];
  cache.last_used = ++admissions_;
  cache.tokens.clear();  // what the slot holds from now on is the new sequence's (rebuilt on release)
  seq.n_past = static_cast<int32_t>(best_shared);
  seq.kept = static_cast<int32_t>(best_shared);
  if (best_shared > 0) {
    ++stats_.prefix_cache_hits;
    stats_.prefix_cache_tokens += best_shared;
  }
}

void Scheduler::fail_everything(const std::string& error) {
  std::vector<std::unique_ptr<Sequence>> queued;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& s : queue_) queued.push_back(std::move(s));
    queue_.clear();
    stats_.waiting = 0;
  }
  for (auto& seq : queued) finish(*seq, "error", error, false);
  // Their slots go back at the end of the loop's pass (finished, not in flight).
  for (auto& seq : running_) finish(*seq, "error", error, false);
}

// ---- One sequence, waited for -----------------------------------------------------------

GenerationResult generate(Scheduler& scheduler, std::vector<Token> prompt, const GenerationOptions& options,
                          const std::function<bool(std::string_view)>& on_text) {
  using Clock = std::chrono::steady_clock;
  GenerationResult result;
  result.prompt_tokens = static_cast<int32_t>(prompt.size());
  if (!prompt.empty() && result.prompt_tokens >= scheduler.n_ctx()) {
    throw Error(fmt::format("the prompt has {} tokens but the context holds {}; use a shorter prompt or a larger "
                            "--ctx-size",
                            result.prompt_tokens, scheduler.n_ctx()));
  }

  // Written by the callbacks on the scheduler's thread; read here once `done` is seen under the
  // mutex (on_finish is the last callback and takes it).
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  bool stopped = false;  // on_text asked to stop, or threw: pass nothing more on
  std::exception_ptr thrown;
  std::string error;
  std::optional<Clock::time_point> first_token;
  std::mutex handle_mutex;
  std::shared_ptr<SequenceHandle> handle;  // guarded by handle_mutex

  auto cancel = [&] {
    stopped = true;
    std::lock_guard<std::mutex> lock(handle_mutex);
    if (handle) handle->cancel();
  };
  auto emit = [&](const std::string& text) {
    if (stopped || text.empty()) return;
    result.text += text;
    if (!on_text) return;
    try {
      if (!on_text(text)) cancel();
    } catch (...) {
      thrown = std::current_exception();
      cancel();
    }
  };

  std::vector<SequenceRequest> requests(1);
  requests[0].prompt = std::move(prompt);
  requests[0].options = options;
  requests[0].on_token = [&](const TokenEvent& e) {
    if (stopped) return;
    if (!first_token) first_token = Clock::now();
    result.tokens.push_back(e.sampled.token);
    emit(e.text);
  };
  requests[0].on_finish = [&](const SequenceResult& r) {
    emit(r.tail);
    std::lock_guard<std::mutex> lock(mutex);
    result.finish_reason = r.finish_reason;
    error = r.error;
    done = true;
    done_cv.notify_all();
  };

  const Clock::time_point start = Clock::now();
  // Callbacks may run before submit returns: one that cancels waits on handle_mutex until the
  // handle is there.
  std::unique_lock<std::mutex> handle_lock(handle_mutex);
  auto handles = scheduler.submit(std::move(requests));
  if (!handles) {
    throw Error("the scheduler refused the sequence: its queue is full or it is shutting down");
  }
  handle = (*handles)[0];
  handle_lock.unlock();
  std::unique_lock<std::mutex> lock(mutex);
  done_cv.wait(lock, [&] { return done; });
  if (thrown) std::rethrow_exception(thrown);
  if (result.finish_reason == "error") throw Error(error);

  const Clock::time_point end = Clock::now();
  const Clock::time_point first = first_token.value_or(end);
  result.prompt_seconds = std::chrono::duration<double>(first - start).count();
  result.generation_seconds = std::chrono::duration<double>(end - first).count();
  return result;
}

}  // namespace hearth::engine
