// One step of a continuous batch, below the scheduler: what a step holds (BatchEntry), how it is
// run (BatchExecutor: one process's LocalExecutor over a Stage with every layer, or a cluster's
// pipeline) and how its tokens are sampled where the logits are (SlotSamplers). A worker running a
// pipeline's last stage needs this and nothing of text: no tokenizer, no stop strings.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "engine/batch/sampler.h"
#include "engine/grammar/matcher.h"
#include "engine/model/stage.h"
#include "engine/token.h"

namespace hearth::engine {

// One sequence's share of a step: `tokens` at positions pos0, pos0 + 1, ... of sequence slot
// `slot`; when `sample`, the executor samples the token that follows the last of them. `begin`
// marks the first entry of a new sequence in that slot: its sampler starts from these
// parameters and its token history (which the penalties read) starts empty. Every token of an
// entry joins the slot's history.
//
// A replay (the sequence rebuilt on a new pipeline after a failure) begins like a new sequence
// whose tokens are its prompt followed by the tokens it had generated, with `resumed` (on the
// `begin` entry) = how many of them were generated: the last `resumed` tokens of the history
// when it first samples. The sampler's state is a function of that count and the history (the
// random generator skips `resumed` draws), so the continuation is what it would have been.
struct BatchEntry {
  int32_t slot = 0;
  int32_t pos0 = 0;
  std::span<const Token> tokens;
  bool sample = false;
  const SamplingParams* begin = nullptr;
  uint32_t resumed = 0;  // with `begin`: tokens already generated (a replay); 0 for a new sequence
  // With `begin`: the first `kept` positions of the slot still hold the KV of the slot's previous
  // sequence, which the new one shares (a prompt cache hit): the entry starts at pos0 == kept
  // and the history keeps those tokens instead of starting empty.
  uint32_t kept = 0;
};

// The stage input of a step's entries: every token with its KV slot, and the rows whose logits
// are wanted (the last token of each sampling entry).
void flatten_entries(std::span<const BatchEntry> entries, std::vector<Token>& tokens,
                     std::vector<kernels::KvSlot>& slots, std::vector<int32_t>& output_rows);

// The sampling half of a step, per sequence slot: a Sampler, the token history its penalties
// read, and the grammar matcher of a constrained sequence (SamplingParams::grammar). Used where
// the logits are: in this process, or on a pipeline's last stage.
//
// Grammar state is a pure function of (grammar, the sequence's tokens): every token an entry
// carries beyond the first SamplingParams::grammar_prompt_tokens of its sequence advances the
// matcher when the entry is applied (a sampled token advances it when it comes back as the next
// entry's token, not when it is sampled). So a sequence replayed onto a fresh stage — a `begin`
// entry (or several entries) holding the prompt and the tokens generated so far, with the same
// SamplingParams — has the same grammar state as before, with nothing else to restore.
class SlotSamplers {
 public:
  // `vocabulary`: the model's token bytes (grammar::vocabulary_from_gguf), needed for sequences
  // with a grammar; null: such a sequence is refused.
  explicit SlotSamplers(int32_t n_slots, std::shared_ptr<const grammar::Vocabulary> vocabulary = nullptr)
      : slots_(static_cast<size_t>(n_slots)), vocabulary_(std::move(vocabulary)) {}
  // Applies the entries in order (a `begin` resets its slot; every token joins its slot's
  // history) and samples one token per sampling entry from consecutive rows of `logits`
  // [n_sampling_entries, n_vocab], a grammar's disallowed tokens masked to -inf first. Throws
  // hearth::Error for a slot out of range, a slot stepped before its sequence began, or a
  // grammar that does not parse or cannot be used here (a peer can send those).
  // `log_z` (empty, or one per sampling entry): each row's log-sum-exp, passed to the Sampler.
  std::vector<SampledToken> sample(std::span<const BatchEntry> entries, std::span<const float> logits, size_t n_vocab,
                                   std::span<const double> log_z = {});
  // How many of the best tokens of each sampling row these entries' samplers need: 1 when every
  // one is greedy, the largest top_k when they draw from the top-k, 0 when any needs the whole
  // vocabulary (logprobs, penalties, logit bias, a grammar, no top-k, or a slot not begun). The
  // tokens sample() then picks from logits that are -inf outside those candidates are the ones
  // it picks from the whole logits (the greedy best and the top-k come first in both), so a
  // tensor-parallel stage can send its shards' best instead of gathering the logits. Call it
  // before sample() with the same entries.
  int32_t candidates_needed(std::span<const BatchEntry> entries, size_t n_vocab) const;

 private:
  struct Slot {
    std::optional<Sampler> sampler;
    std::vector<Token> history;
    std::optional<grammar::GrammarMatcher> matcher;
    int32_t grammar_prompt_tokens = 0;
  };
  // The compiled grammar for these parameters, from a small cache (a compiled grammar keeps the
  // token classes it has computed, so later requests with the same schema are fast).
  std::shared_ptr<grammar::CompiledGrammar> compiled(const SamplingParams& params);

  std::vector<Slot> slots_;
  std::shared_ptr<const grammar::Vocabulary> vocabulary_;
  std::vector<std::pair<std::string, std::shared_ptr<grammar::CompiledGrammar>>> grammar_cache_;  // newest last
  grammar::TokenMask mask_;
  std::vector<float> masked_logits_;
};

// What an executor can do now, for /health and /metrics.
// One pipeline stage as the executor runs it now (for dashboards: /v1/cluster).
struct StageHealth {
  std::string address;           // the node ("" for this process)
  std::string backend, device;   // what runs it
  int32_t first = 0, last = 0;   // layers [first, last)
  uint64_t memory_used = 0;      // weights + KV + compute buffers, planned
  uint64_t memory_budget = 0;    // what the node offered
  double bandwidth_gbps = 0;     // the node's measured bandwidth (0: unknown)
};

struct ExecutorHealth {
  enum class State { serving, recovering, down };
  State state = State::serving;
  std::string reason;               // why recovering or down
  std::string plan;                 // where the layers run now (printable; empty: in this process)
  // Every node the executor knows, with what it does now: "stage 1, layers [10, 20)",
  // "standby", "unreachable: ...".
  std::vector<std::pair<std::string, std::string>> nodes;
  std::vector<StageHealth> stages;  // the pipeline's stages in order (empty: every layer in this process)
  uint64_t stage_failures = 0;      // failures seen (a dead, silent or misbehaving stage)
  uint64_t recoveries = 0;          // rebuilds after a failure that succeeded
  uint64_t rebalances = 0;          // rebuilds for a better plan
  double rebuild_seconds = 0;       // spent rebuilding, all rebuilds together
  double last_rebuild_seconds = 0;  // the last one
};
const char* executor_state_name(ExecutorHealth::State state);  // "serving", "recovering", "down"

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
  // Why this executor can run no more steps (a dead stage of a pipeline), or empty while it can.
  // Any thread may ask.
  virtual std::string failure() const { return {}; }

  // Recovery (shard/recovery.h: a pipeline re-planned onto the nodes left). rebuild() is called
  // by the scheduler's thread with no step in flight, after a step failed or when
  // rebuild_wanted() says a better plan is waiting (a node came back). It may take seconds.
  // true: steps can run again, every KV slot is empty and every sequence must be replayed from
  // its tokens (BatchEntry::resumed); false: it cannot serve now (failure() says why), and
  // rebuild_wanted() turns true when it might. An executor that cannot rebuild returns false.
  virtual bool rebuild() { return false; }
  virtual bool rebuild_wanted() const { return false; }
  virtual ExecutorHealth health() const {
    ExecutorHealth h;
    h.reason = failure();
    h.state = h.reason.empty() ? ExecutorHealth::State::serving : ExecutorHealth::State::down;
    return h;
  }
};

// Every layer in this process: a Stage over all layers with one KV slot per sequence (or the first
// stage of an mpirun pipeline, whose StageOptions::rest_of_pipeline runs the others). A step runs
// inside submit(); collect() hands its result over.
class LocalExecutor final : public BatchExecutor {
 public:
  // `vocabulary`: the model's token bytes, for sequences with a grammar (null: refused).
  explicit LocalExecutor(Stage& stage, std::shared_ptr<const grammar::Vocabulary> vocabulary = nullptr);
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
  // Under tensor parallelism: the stage's candidates, spread over a vocabulary of -inf, and each
  // row's log-sum-exp (see SlotSamplers::candidates_needed).
  std::vector<float> candidates_;
  std::vector<double> log_z_;
  std::deque<std::variant<std::vector<SampledToken>, std::string>> done_;  // results or errors
};

}  // namespace hearth::engine
