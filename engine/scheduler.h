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

#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/stage.h"
#include "engine/tokenizer.h"

namespace hearth::engine {

// One sequence's share of a step: `tokens` at positions pos0, pos0 + 1, ... of sequence slot
// `slot`; when `sample`, the executor samples the token that follows the last of them. `begin`
// marks the first entry of a new sequence in that slot: its sampler starts from these
// parameters and its token history (which the penalties read) starts empty. Every token of an
// entry joins the slot's history.
struct BatchEntry {
  int32_t slot = 0;
  int32_t pos0 = 0;
  std::span<const Token> tokens;
  bool sample = false;
  const SamplingParams* begin = nullptr;
};

// The stage input of a step's entries: every token with its KV slot, and the rows whose logits
// are wanted (the last token of each sampling entry).
void flatten_entries(std::span<const BatchEntry> entries, std::vector<Token>& tokens,
                     std::vector<kernels::KvSlot>& slots, std::vector<int32_t>& output_rows);

// The sampling half of a step, per sequence slot: a Sampler and the token history its
// penalties read. Used where the logits are: in this process, or on a pipeline's last stage.
class SlotSamplers {
 public:
  explicit SlotSamplers(int32_t n_slots) : slots_(static_cast<size_t>(n_slots)) {}
  // Applies the entries in order (a `begin` resets its slot; every token joins its slot's
  // history) and samples one token per sampling entry from consecutive rows of `logits`
  // [n_sampling_entries, n_vocab]. Throws hearth::Error for a slot out of range or a slot
  // stepped before its sequence began (a peer can send that).
  std::vector<SampledToken> sample(std::span<const BatchEntry> entries, std::span<const float> logits, size_t n_vocab);

 private:
  struct Slot {
    std::optional<Sampler> sampler;
    std::vector<Token> history;
  };
  std::vector<Slot> slots_;
};

// Runs steps of the continuous batch. Steps are submitted and collected in order; a pipeline of
// S stages keeps up to max_in_flight() steps moving at once, so every stage has work.
class BatchExecutor {
 public:
  virtual ~BatchExecutor() = default;
  virtual int32_t n_slots() const = 0;  // sequences the KV cache holds at once
  virtual int32_t n_ctx() const = 0;    // positions per sequence
  virtual int32_t max_in_flight() const { return 1; }
  // Starts a step. The entries (and the tokens and parameters they point to) stay valid and
  // unchanged until the step is collected. May block while max_in_flight() steps are running.
  virtual void submit(std::span<const BatchEntry> entries) = 0;
  // The oldest submitted step's sampled tokens: one per entry with `sample`, in entry order.
  // Blocks until it is done; throws hearth::Error when it failed (a dead stage, a bad input).
  virtual std::vector<SampledToken> collect() = 0;
  // Seconds each stage has spent computing so far (any thread may ask).
  virtual std::vector<double> stage_busy_seconds() const = 0;
};

// Every layer in this process: a Stage over all layers with one KV slot per sequence. A step
// runs inside submit(); collect() hands its result over.
class LocalExecutor final : public BatchExecutor {
 public:
  explicit LocalExecutor(Stage& stage);
  int32_t n_slots() const override { return stage_.options().n_seq; }
  int32_t n_ctx() const override { return stage_.options().n_ctx; }
  void submit(std::span<const BatchEntry> entries) override;
  std::vector<SampledToken> collect() override;
  std::vector<double> stage_busy_seconds() const override { return {static_cast<double>(busy_ns_.load()) * 1e-9}; }

 private:
  std::vector<SampledToken> run(std::span<const BatchEntry> entries);
  std::atomic<uint64_t> busy_ns_{0};

  Stage& stage_;
  SlotSamplers samplers_;
  std::vector<Token> tokens_;
  std::vector<kernels::KvSlot> kv_slots_;
  std::vector<int32_t> output_rows_;
  std::vector<float> logits_;
  std::deque<std::variant<std::vector<SampledToken>, std::string>> done_;  // results or errors
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
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
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

 private:
  std::atomic<bool> cancelled_{false};
};

struct SchedulerOptions {
  int32_t max_queue = 16;    // sequences waiting for a slot; more are refused
  int32_t step_tokens = 512;  // tokens per step (decode tokens first, then prompt chunks)
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
