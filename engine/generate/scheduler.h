// Continuous batching. Sequences join and leave the running batch at token granularity: each
// step runs one forward pass holding one token for every decoding sequence plus prompt chunks
// of newly admitted ones (up to a token budget), so decode reads the weights once per step for
// all of them and a long prompt never stalls the others for more than one chunk. The number of
// sequence slots of the KV cache bounds admission; a bounded queue holds the rest and refuses
// beyond it.
//
// The scheduler knows nothing of HTTP or of where the layers run: a BatchExecutor runs a step
// (one process: LocalExecutor over a Stage holding every layer; a cluster: the pipeline) and
// returns the sampled tokens. Callbacks run on the scheduler's thread and must be quick.
//
// When the executor fails (a pipeline's stage died) or asks to be rebuilt (a better plan), the
// scheduler stops launching steps, drains those in flight, lets the executor rebuild itself and
// replays every running sequence: its prompt and the tokens it has generated are prefilled
// again and its sampler resumes where it was (BatchEntry::resumed), so its stream pauses but
// goes on with exactly the tokens it would have had. Queued sequences stay queued. Only when the
// executor cannot rebuild do the running and queued sequences end with an error; the scheduler
// then refuses nothing itself but fails what arrives until the executor can serve again.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

#include "engine/batch/batch.h"
#include "engine/batch/sampler.h"
#include "engine/text/tokenizer.h"

namespace hearth::engine {

// What to generate for one sequence (a Scheduler's SequenceRequest, engine::generate).
struct GenerationOptions {
  int32_t max_tokens = 256;  // < 0: until end of generation or the context is full
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop strings, never part of the output
  bool ignore_eos = false;
};

// One sequence's outcome (engine::generate in scheduler.h).
struct GenerationResult {
  std::vector<Token> tokens;     // generated
  std::string text;              // generated text (stop string excluded)
  std::string finish_reason;     // "stop" (end of generation or stop string), "length", or
                                 // "cancelled" (engine::generate: the text callback asked to stop)
  int32_t prompt_tokens = 0;
  double prompt_seconds = 0.0;      // submit to the first generated token (prefill + first sample)
  double generation_seconds = 0.0;  // the first generated token to the end
};

// One generated token as the scheduler reports it.
struct TokenEvent {
  SampledToken sampled;  // token, logprob, top alternatives
  std::string text;      // text that became visible with it (may be empty: a UTF-8 character
                         // or a possible stop string is still incomplete)
};

struct SequenceResult {
  std::string finish_reason;  // "stop", "length", "cancelled" or "error"
  std::string error;          // why, when "error"
  std::string tail;           // visible text released at the end (after the last TokenEvent)
  std::string stop_string;    // the stop string that ended it (finish_reason "stop"), empty for an end token
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_tokens = 0;  // prompt tokens whose KV cache was reused (the prompt cache), not prefilled
};

struct SequenceRequest {
  std::vector<Token> prompt;       // non-empty, shorter than the context
  GenerationOptions options;       // max_tokens < 0: until end of generation or the context is full
  std::function<void(const TokenEvent&)> on_token;
  std::function<void(const SequenceResult&)> on_finish;  // called exactly once
};

// Handle of a submitted sequence: cancel() frees its slot at the next step (e.g. the client
// went away); on_finish then reports "cancelled".
class SequenceHandle {
 public:
  void cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  // The sequence has left the queue for a slot (a server's queue timeout looks at this).
  bool admitted() const { return admitted_.load(std::memory_order_acquire); }

 private:
  friend class Scheduler;
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> admitted_{false};
};

struct SchedulerOptions {
  int32_t max_queue = 16;    // sequences waiting for a slot; more are refused
  int32_t step_tokens = 512;  // tokens per step (decode tokens first, then prompt chunks)
  // The prompt cache: a free slot keeps the KV of its last sequence, and a new sequence whose
  // prompt begins with those tokens takes that slot and prefills only the rest. A slot is worth
  // the tokens it shares with the prompt less the cached tokens it would lose (ties: the least
  // recently used), so a continued conversation finds its slot and an unrelated prompt does not
  // destroy another conversation's cache while a stale or empty slot is free.
  bool prefix_cache = true;
};

struct SchedulerStats {
  int32_t running = 0;             // sequences holding a slot
  int32_t waiting = 0;             // queued
  int32_t slots = 0;
  int64_t kv_positions_used = 0;   // cached positions of running sequences
  int64_t kv_positions_total = 0;  // slots * n_ctx
  uint64_t prompt_tokens = 0;      // processed since start
  uint64_t generated_tokens = 0;
  uint64_t steps = 0;
  double busy_seconds = 0.0;       // time from submitting steps to collecting them
  std::vector<double> stage_busy_seconds;  // computing, per pipeline stage (one in a single process)
  std::string executor_failure;    // non-empty: the executor can run no more steps (BatchExecutor::failure)
  ExecutorHealth executor;         // serving, recovering or down, and why (BatchExecutor::health)
  uint64_t replayed_sequences = 0; // sequences rebuilt on a new executor after a failure or rebalance
  uint64_t replayed_tokens = 0;    // tokens prefilled again for them
  uint64_t prefix_cache_hits = 0;  // sequences that reused a cached prefix
  uint64_t prefix_cache_tokens = 0;  // prompt tokens not prefilled thanks to it
};

class Scheduler {
 public:
  Scheduler(BatchExecutor& executor, const Tokenizer& tokenizer, const SchedulerOptions& options);
  ~Scheduler();  // finishes every queued and running sequence with "cancelled", then stops
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues all of `requests` (the choices of one API request) or none: returns nullopt when the
  // queue has no room for all of them. Throws hearth::Error for a request that can never run
  // (empty prompt, prompt not shorter than the context, more sequences than slots).
  std::optional<std::vector<std::shared_ptr<SequenceHandle>>> submit(std::vector<SequenceRequest> requests);

  SchedulerStats stats() const;
  int32_t n_ctx() const { return executor_.n_ctx(); }

 private:
  struct Sequence;
  struct Step;
  void loop();
  // Builds and submits a step from sequences that are not in flight; false when there is none.
  bool launch_step(int32_t n_active);
  void complete_step();
  // Rebuilds the executor (nothing in flight) and sets every running sequence up for replay, or
  // fails the running and queued sequences when it cannot.
  void rebuild_executor();
  // Gives `seq` a free slot (SchedulerOptions::prefix_cache says which); n_past starts after
  // the tokens it shares with the slot's cache. Under mutex_.
  void admit(Sequence& seq);
  // Ends every running and queued sequence with `error` (the executor cannot serve).
  void fail_everything(const std::string& error);
  // Reports the end once. `release_held`: emit text held back for an incomplete character or a
  // possible stop string (not after a completed stop string, nor on cancel or error).
  void finish(Sequence& seq, const std::string& reason, const std::string& error, bool release_held);

  BatchExecutor& executor_;
  const Tokenizer& tokenizer_;
  SchedulerOptions options_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Sequence>> queue_;     // guarded by mutex_
  std::vector<std::unique_ptr<Sequence>> running_;  // scheduler thread only
  std::deque<std::unique_ptr<Step>> in_flight_;     // scheduler thread only
  std::vector<int32_t> free_slots_;
  // What each slot's KV cache holds (its last sequence's tokens, as far as they were computed)
  // and when it was last used: the prompt cache (scheduler thread, under mutex_ at admission).
  struct SlotCache {
    std::vector<Token> tokens;
    uint64_t last_used = 0;
  };
  std::vector<SlotCache> slot_cache_;
  uint64_t admissions_ = 0;
  bool rebuild_pending_ = false;  // scheduler thread: a step failed with the executor; drain, then rebuild
  bool executor_down_ = false;    // scheduler thread: the last rebuild failed
  SchedulerStats stats_;  // guarded by mutex_
  bool stopping_ = false;
  std::thread thread_;
};

// One sequence through `scheduler`, waited for: what `hearth run` does, in one process (a
// LocalExecutor) as on a cluster. `on_text` (may be empty) receives the generated text as it
// becomes visible (never half a UTF-8 character, never part of a stop string), on the
// scheduler's thread; returning false cancels the sequence (finish_reason "cancelled"; nothing
// more is passed on). Throws hearth::Error when the prompt cannot run (empty, or not shorter
// than the context: the message names --ctx-size), when the scheduler refuses it (queue full,
// shutting down), when a step fails (finish_reason "error"), or what `on_text` threw.
GenerationResult generate(Scheduler& scheduler, std::vector<Token> prompt, const GenerationOptions& options,
                          const std::function<bool(std::string_view)>& on_text);

}  // namespace hearth::engine
