// Continuous batching on the default model: sequences that run together produce exactly the
// tokens they produce alone (and that a greedy loop written out over Stage::forward produces),
// prompts prefilled in small chunks give the same tokens as whole ones, the queue bound refuses,
// cancel frees the slot; `generate` (one sequence waited for, as `hearth run` does) streams,
// stops and fails as the scheduler says.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

#include "engine/generate/model.h"
#include "engine/generate/scheduler.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/support/fixtures.h"

namespace hearth::engine {
namespace {

std::filesystem::path smollm2() { return test::models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"; }

const std::vector<std::string> kPrompts = {
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "1, 2, 3, 4,",
    "Water boils at",
    "The three primary colors are",
};

// What one sequence produced.
struct Outcome {
  std::vector<Token> tokens;
  std::string text;
  SequenceResult result;
};

// Collects a sequence's events; wait() blocks until on_finish.
class Collector {
 public:
  SequenceRequest request(std::vector<Token> prompt, const GenerationOptions& options) {
    SequenceRequest r;
    r.prompt = std::move(prompt);
    r.options = options;
    r.on_token = [this](const TokenEvent& e) {
      std::lock_guard<std::mutex> lock(mutex_);
      outcome_.tokens.push_back(e.sampled.token);
      outcome_.text += e.text;
    };
    r.on_finish = [this](const SequenceResult& result) {
      std::lock_guard<std::mutex> lock(mutex_);
      outcome_.result = result;
      outcome_.text += result.tail;
      done_ = true;
      cv_.notify_all();
    };
    return r;
  }
  Outcome wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    EXPECT_TRUE(cv_.wait_for(lock, std::chrono::minutes(5), [&] { return done_; }));
    return outcome_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  Outcome outcome_;
};

// The independent oracle: greedy decoding written out over Stage::forward in slot 0 — the whole
// prompt in one pass, then one token at a time — taking the first largest logit, until end of
// generation or `max_tokens`. No Scheduler, Sampler or executor involved.
std::vector<Token> greedy_reference(Model& model, const std::vector<Token>& prompt, int32_t max_tokens) {
  Stage& stage = model.stage();
  const auto n_vocab = static_cast<size_t>(model.config().n_vocab);
  std::vector<kernels::KvSlot> slots;
  for (size_t i = 0; i < prompt.size(); ++i) slots.push_back({0, static_cast<int32_t>(i)});
  const int32_t last_row = static_cast<int32_t>(prompt.size()) - 1;
  std::vector<float> logits;
  stage.forward({.tokens = prompt, .hidden = {}, .slots = slots, .output_rows = std::span(&last_row, 1)}, logits);
  std::vector<Token> out;
  while (static_cast<int32_t>(out.size()) < max_tokens) {
    EXPECT_EQ(logits.size(), n_vocab);
    const auto best = std::max_element(logits.begin(), logits.begin() + static_cast<std::ptrdiff_t>(n_vocab));
    const Token token = static_cast<Token>(best - logits.begin());
    if (model.tokenizer().is_end_of_generation(token)) break;
    out.push_back(token);
    const kernels::KvSlot slot{0, static_cast<int32_t>(prompt.size() + out.size()) - 1};
    const int32_t row0 = 0;
    stage.forward({.tokens = std::span(&token, 1), .hidden = {}, .slots = std::span(&slot, 1),
                   .output_rows = std::span(&row0, 1)},
                  logits);
  }
  return out;
}

// A stand-in executor for the failure paths: its steps fail, or wait until released and then fail.
class FailingExecutor final : public BatchExecutor {
 public:
  explicit FailingExecutor(bool wait_for_release) : wait_(wait_for_release) {}
  int32_t n_slots() const override { return 1; }
  int32_t n_ctx() const override { return 64; }
  void submit(std::span<const BatchEntry>) override {}
  std::vector<SampledToken> collect() override {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return !wait_ || released_; });
    throw Error("stage 2 of 2 stopped answering");
  }
  std::vector<double> stage_busy_seconds() const override { return {0.0}; }
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  bool wait_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool released_ = false;
};

// Stats are updated at the end of a step, just after the callbacks of that step ran.
SchedulerStats wait_idle(const Scheduler& scheduler) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  SchedulerStats stats = scheduler.stats();
  while ((stats.running != 0 || stats.waiting != 0) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    stats = scheduler.stats();
  }
  return stats;
}

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(smollm2())) GTEST_SKIP() << "default model not fetched (scripts/get-model.sh smollm2)";
  }

  std::unique_ptr<Model> open(int32_t n_seq, int32_t n_ctx = 512) {
    ModelOptions options;
    options.n_ctx = n_ctx;
    options.n_seq = n_seq;
    return std::make_unique<Model>(smollm2(), backend_, options);
  }

  static GenerationOptions greedy(int32_t max_tokens) {
    GenerationOptions o;
    o.max_tokens = max_tokens;
    o.sampling.temperature = 0.0f;
    return o;
  }

  // Runs `prompts` concurrently (all submitted at once) and returns their outcomes.
  static std::vector<Outcome> run_together(Scheduler& scheduler, const Model& model,
                                           const std::vector<std::string>& prompts, const GenerationOptions& options) {
    std::vector<std::unique_ptr<Collector>> collectors;
    std::vector<SequenceRequest> requests;
    for (const std::string& p : prompts) {
      collectors.push_back(std::make_unique<Collector>());
      requests.push_back(collectors.back()->request(model.tokenize_prompt(p), options));
    }
    auto handles = scheduler.submit(std::move(requests));
    EXPECT_TRUE(handles.has_value());
    std::vector<Outcome> outcomes;
    for (auto& c : collectors) outcomes.push_back(c->wait());
    return outcomes;
  }

  kernels::CpuBackend backend_{2};
};

TEST_F(SchedulerTest, ConcurrentSequencesMatchSequencesAloneAndAGreedyLoop) {
  const GenerationOptions options = greedy(24);
  auto model = open(static_cast<int32_t>(kPrompts.size()));
  LocalExecutor executor(model->stage());
  Scheduler scheduler(executor, model->tokenizer(), {});

  std::vector<Outcome> alone;
  for (const std::string& p : kPrompts) alone.push_back(run_together(scheduler, *model, {p}, options)[0]);
  const std::vector<Outcome> together = run_together(scheduler, *model, kPrompts, options);
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << kPrompts[i];
    EXPECT_EQ(together[i].text, alone[i].text) << kPrompts[i];
    EXPECT_EQ(together[i].result.finish_reason, alone[i].result.finish_reason);
    EXPECT_EQ(together[i].result.completion_tokens, static_cast<int32_t>(together[i].tokens.size()));
    EXPECT_EQ(together[i].result.prompt_tokens, static_cast<int32_t>(model->tokenize_prompt(kPrompts[i]).size()));
  }
  const SchedulerStats stats = wait_idle(scheduler);
  EXPECT_EQ(stats.running, 0);
  EXPECT_EQ(stats.waiting, 0);
  EXPECT_GT(stats.generated_tokens, 0u);

  // The oracle (a greedy loop over the stage, no scheduler) agrees token for token, and so does
  // the path of `hearth run`: `generate` on a one-slot scheduler over its own model.
  auto single = open(1);
  for (size_t i = 0; i < 3; ++i) {
    const std::vector<Token> prompt = single->tokenize_prompt(kPrompts[i]);
    const std::vector<Token> expected = greedy_reference(*single, prompt, 24);
    EXPECT_EQ(alone[i].tokens, expected) << kPrompts[i];
    EXPECT_EQ(alone[i].text, single->tokenizer().decode(expected)) << kPrompts[i];
  }
  LocalExecutor single_executor(single->stage());
  Scheduler run_scheduler(single_executor, single->tokenizer(), {});
  for (size_t i = 0; i < 3; ++i) {
    std::string streamed;
    const GenerationResult r = generate(run_scheduler, single->tokenize_prompt(kPrompts[i]), options,
                                        [&](std::string_view s) {
                                          streamed += s;
                                          return true;
                                        });
    EXPECT_EQ(r.tokens, alone[i].tokens) << kPrompts[i];
    EXPECT_EQ(r.text, alone[i].text);
    EXPECT_EQ(streamed, r.text);
    EXPECT_EQ(r.finish_reason, alone[i].result.finish_reason);
    EXPECT_EQ(r.prompt_tokens, alone[i].result.prompt_tokens);
  }
}

TEST_F(SchedulerTest, GenerateStopsAtEndOfGenerationStopStringsAndLength) {
  auto model = open(1);
  LocalExecutor executor(model->stage());
  Scheduler scheduler(executor, model->tokenizer(), {});
  const std::vector<Token> counting = model->tokenize_prompt("1, 2, 3, 4,");

  const auto start = std::chrono::steady_clock::now();
  const GenerationResult free_run = generate(scheduler, counting, greedy(20), nullptr);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(free_run.finish_reason, "length");
  EXPECT_EQ(free_run.tokens.size(), 20u);
  EXPECT_EQ(free_run.tokens, greedy_reference(*model, counting, 20));
  ASSERT_NE(free_run.text.find(" 7"), std::string::npos) << free_run.text;
  // Time to the first token, then the rest: both measured, together within the call.
  EXPECT_GT(free_run.prompt_seconds, 0.0);
  EXPECT_GT(free_run.generation_seconds, 0.0);
  EXPECT_LE(free_run.prompt_seconds + free_run.generation_seconds, wall);

  GenerationOptions stop = greedy(20);
  stop.stop = {" 7"};
  std::string streamed;
  const GenerationResult stopped = generate(scheduler, counting, stop, [&](std::string_view s) {
    streamed += s;
    return true;
  });
  EXPECT_EQ(stopped.finish_reason, "stop");
  EXPECT_EQ(stopped.text, free_run.text.substr(0, free_run.text.find(" 7")));
  EXPECT_EQ(streamed, stopped.text);
  EXPECT_LT(stopped.tokens.size(), 20u);

  // A chat answer ends with the end-of-generation token, which is not part of the output;
  // ignore_eos runs on to the length limit.
  const std::vector<Token> chat = model->tokenize_prompt(model->format_chat({{"user", "Say hello."}}));
  const GenerationResult answer = generate(scheduler, chat, greedy(64), nullptr);
  EXPECT_EQ(answer.finish_reason, "stop") << answer.text;
  EXPECT_LT(answer.tokens.size(), 64u);
  EXPECT_EQ(answer.tokens, greedy_reference(*model, chat, 64));
  GenerationOptions on = greedy(static_cast<int32_t>(answer.tokens.size()) + 3);
  on.ignore_eos = true;
  const GenerationResult past_eos = generate(scheduler, chat, on, nullptr);
  EXPECT_EQ(past_eos.finish_reason, "length");
  ASSERT_EQ(past_eos.tokens.size(), answer.tokens.size() + 3);
  EXPECT_TRUE(model->tokenizer().is_end_of_generation(past_eos.tokens[answer.tokens.size()]));
}

TEST_F(SchedulerTest, GenerateReportsFailuresAsErrors) {
  auto model = open(1, 32);
  {  // a prompt that does not fit names the option that makes room
    LocalExecutor executor(model->stage());
    Scheduler scheduler(executor, model->tokenizer(), {});
    try {
      generate(scheduler, std::vector<Token>(40, model->tokenize_prompt("a")[0]), greedy(4), nullptr);
      FAIL() << "a prompt longer than the context was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("40 tokens but the context holds 32"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("--ctx-size"), std::string::npos) << e.what();
    }
    EXPECT_THROW(generate(scheduler, {}, greedy(4), nullptr), Error);
    // What the callback throws reaches the caller; the scheduler goes on.
    EXPECT_THROW(generate(scheduler, model->tokenize_prompt("Hello"), greedy(4),
                          [](std::string_view) -> bool { throw Error("the output pipe closed"); }),
                 Error);
    EXPECT_EQ(generate(scheduler, model->tokenize_prompt("Hello"), greedy(4), nullptr).tokens.size(), 4u);
  }
  {  // a failed step (a dead stage) is an error with the executor's reason
    FailingExecutor failing(false);
    Scheduler scheduler(failing, model->tokenizer(), {});
    try {
      generate(scheduler, model->tokenize_prompt("Hello"), greedy(4), nullptr);
      FAIL() << "a failed step was not reported";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("stage 2 of 2 stopped answering"), std::string::npos) << e.what();
    }
  }
  {  // a full scheduler refuses, and generate says so
    FailingExecutor blocked(true);
    SchedulerOptions no_queue;
    no_queue.max_queue = 0;
    Scheduler scheduler(blocked, model->tokenizer(), no_queue);
    Collector holder;
    std::vector<SequenceRequest> first;
    first.push_back(holder.request(model->tokenize_prompt("Hello"), greedy(4)));
    ASSERT_TRUE(scheduler.submit(std::move(first)).has_value());
    try {
      generate(scheduler, model->tokenize_prompt("Hello"), greedy(4), nullptr);
      ADD_FAILURE() << "a sequence beyond the slots and the queue was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("refused"), std::string::npos) << e.what();
    }
    blocked.release();
    EXPECT_EQ(holder.wait().result.finish_reason, "error");
  }
}

TEST_F(SchedulerTest, PromptsPrefilledInSmallChunksGiveTheSameTokens) {
  const GenerationOptions options = greedy(12);
  auto model = open(3);
  LocalExecutor executor(model->stage());
  const std::vector<std::string> prompts(kPrompts.begin(), kPrompts.begin() + 3);
  std::vector<Outcome> a;
  {  // one scheduler per executor at a time: the first one's thread is joined here
    Scheduler whole(executor, model->tokenizer(), {});
    a = run_together(whole, *model, prompts, options);
  }

  SchedulerOptions small;
  small.step_tokens = 5;  // prompts take several steps, interleaved with the others' decodes
  Scheduler chunked(executor, model->tokenizer(), small);
  const std::vector<Outcome> b = run_together(chunked, *model, prompts, options);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(a[i].tokens, b[i].tokens) << prompts[i];
}

TEST_F(SchedulerTest, SeededSamplingIsReproducibleInAnyCompany) {
  GenerationOptions options;
  options.max_tokens = 16;
  options.sampling.temperature = 1.0f;
  options.sampling.seed = 1234;
  auto model = open(3);
  LocalExecutor executor(model->stage());
  Scheduler scheduler(executor, model->tokenizer(), {});
  const Outcome alone = run_together(scheduler, *model, {kPrompts[2]}, options)[0];
  const std::vector<Outcome> together = run_together(scheduler, *model, {kPrompts[0], kPrompts[2], kPrompts[1]}, options);
  EXPECT_EQ(together[1].tokens, alone.tokens);
}

// An executor that loses its state as a failed pipeline does: at chosen collects it fails
// (failure() set, that step and every one still in flight throw), and rebuild() starts over on
// a fresh Stage — a new KV cache and new samplers, nothing kept — or refuses while `refuse` is
// set. `want` asks for a rebuild with no failure (a rebalance). Two steps may be in flight.
class RebuildingExecutor final : public BatchExecutor {
 public:
  RebuildingExecutor(const Model& model, kernels::Backend& backend) : model_(model), backend_(backend) { fresh(); }
  int32_t n_slots() const override { return stage_->options().n_seq; }
  int32_t n_ctx() const override { return stage_->options().n_ctx; }
  int32_t max_in_flight() const override { return 2; }
  void submit(std::span<const BatchEntry> entries) override { inner_->submit(entries); }
  std::vector<SampledToken> collect() override {
    std::vector<SampledToken> out = inner_->collect();
    ++collected_;
    if (std::find(fail_at.begin(), fail_at.end(), collected_) != fail_at.end()) {
      std::lock_guard<std::mutex> lock(mutex_);
      failure_ = "stage 1 (127.0.0.1:7001, layers [15, 30)): peer silent for 3.0 s (heartbeat timeout)";
    }
    if (std::find(want_at.begin(), want_at.end(), collected_) != want_at.end()) want = true;
    if (!failure().empty()) throw Error(fmt::format("the pipeline failed: {}", failure()));
    return out;
  }
  std::vector<double> stage_busy_seconds() const override { return {0.0}; }
  std::string failure() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return failure_;
  }
  bool rebuild() override {
    ++rebuilds;
    want = false;
    if (refuse) {
      std::lock_guard<std::mutex> lock(mutex_);
      failure_ = "no worker left can hold layers [0, 30): 127.0.0.1:7001 unreachable";
      return false;
    }
    fresh();
    std::lock_guard<std::mutex> lock(mutex_);
    failure_.clear();
    return true;
  }
  bool rebuild_wanted() const override { return want; }

  std::vector<int> fail_at, want_at;  // collect counts (1-based) at which to fail / ask for a rebuild
  std::atomic<bool> want{false};
  std::atomic<bool> refuse{false};
  std::atomic<int> rebuilds{0};

 private:
  void fresh() {
    inner_.reset();
    StageOptions options = const_cast<Model&>(model_).stage().options();
    stage_ = std::make_unique<Stage>(model_.file(), model_.config(), backend_, 0, model_.config().n_layer, options);
    inner_ = std::make_unique<LocalExecutor>(*stage_);
  }
  const Model& model_;
  kernels::Backend& backend_;
  std::unique_ptr<Stage> stage_;
  std::unique_ptr<LocalExecutor> inner_;
  int collected_ = 0;
  mutable std::mutex mutex_;
  std::string failure_;
};

// Four greedy sequences and one seeded sampled one, submitted together; their outcomes.
std::vector<Outcome> run_mixed(Scheduler& scheduler, const Model& model) {
  std::vector<std::unique_ptr<Collector>> collectors;
  std::vector<SequenceRequest> requests;
  for (size_t i = 0; i < 5; ++i) {
    GenerationOptions o;
    o.max_tokens = 20;
    o.sampling.temperature = i == 4 ? 0.9f : 0.0f;
    o.sampling.seed = 4242;
    o.sampling.repeat_penalty = i == 4 ? 1.1f : 1.0f;  // the penalties read the replayed history
    collectors.push_back(std::make_unique<Collector>());
    requests.push_back(collectors.back()->request(model.tokenize_prompt(kPrompts[i]), o));
  }
  auto handles = scheduler.submit(std::move(requests));
  EXPECT_TRUE(handles.has_value());
  std::vector<Outcome> outcomes;
  for (auto& c : collectors) outcomes.push_back(c->wait());
  return outcomes;
}

// The replay oracle: sequences whose executor fails twice mid-generation (and is rebuilt once
// more for a rebalance) end with exactly the tokens and text of an undisturbed run, the sampled
// one included: each is prefilled again from its prompt and generated tokens on a fresh KV cache
// and its sampler resumes after them.
TEST_F(SchedulerTest, SequencesReplayedAfterExecutorFailuresGiveTheUndisturbedTokens) {
  auto model = open(5, 256);
  std::vector<Outcome> undisturbed;
  {
    LocalExecutor executor(model->stage());
    SchedulerOptions o;
    o.step_tokens = 16;  // prompts in chunks
    Scheduler scheduler(executor, model->tokenizer(), o);
    undisturbed = run_mixed(scheduler, *model);
  }
  ASSERT_GE(undisturbed[4].tokens.size(), 10u);

  RebuildingExecutor executor(*model, backend_);
  executor.fail_at = {3, 11, 12};  // during the prompts; mid-generation (two steps lost)
  executor.want_at = {17};         // a rebalance with no failure
  SchedulerOptions o;
  o.step_tokens = 16;
  Scheduler scheduler(executor, model->tokenizer(), o);
  const std::vector<Outcome> replayed = run_mixed(scheduler, *model);
  for (size_t i = 0; i < replayed.size(); ++i) {
    EXPECT_EQ(replayed[i].result.finish_reason, undisturbed[i].result.finish_reason) << replayed[i].result.error;
    EXPECT_EQ(replayed[i].tokens, undisturbed[i].tokens) << kPrompts[i];
    EXPECT_EQ(replayed[i].text, undisturbed[i].text) << kPrompts[i];
    EXPECT_EQ(replayed[i].result.prompt_tokens, undisturbed[i].result.prompt_tokens);
  }
  EXPECT_EQ(executor.rebuilds.load(), 3);  // fail_at 11 and 12 are one failure: the drained step is lost too
  const SchedulerStats stats = wait_idle(scheduler);
  EXPECT_GE(stats.replayed_sequences, 10u);
  EXPECT_GT(stats.replayed_tokens, stats.replayed_sequences * 5);
}

// An executor that cannot rebuild: what runs and what waits ends with an error naming why, what
// arrives meanwhile fails at once, and once the executor asks again it serves as before.
TEST_F(SchedulerTest, AnExecutorThatCannotRebuildFailsTheSequencesUntilItCanAgain) {
  auto model = open(2, 256);
  RebuildingExecutor executor(*model, backend_);
  executor.fail_at = {4};
  executor.refuse = true;
  Scheduler scheduler(executor, model->tokenizer(), {});
  std::vector<std::unique_ptr<Collector>> collectors;
  for (size_t i = 0; i < 3; ++i) {  // two run, one waits for a slot
    collectors.push_back(std::make_unique<Collector>());
    std::vector<SequenceRequest> one;
    one.push_back(collectors.back()->request(model->tokenize_prompt(kPrompts[i]), greedy(16)));
    ASSERT_TRUE(scheduler.submit(std::move(one)).has_value());
  }
  for (auto& c : collectors) {
    const Outcome out = c->wait();
    EXPECT_EQ(out.result.finish_reason, "error");
    EXPECT_NE(out.result.error.find("no worker left can hold layers"), std::string::npos) << out.result.error;
  }
  EXPECT_THROW(generate(scheduler, model->tokenize_prompt(kPrompts[3]), greedy(4), {}), Error);
  EXPECT_EQ(wait_idle(scheduler).executor_failure.find("no worker left"), 0u);

  executor.refuse = false;
  executor.want = true;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!executor.failure().empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(executor.failure().empty()) << "the scheduler did not rebuild when asked";
  const GenerationResult r = generate(scheduler, model->tokenize_prompt(kPrompts[0]), greedy(8), {});
  auto reference = open(1, 256);
  EXPECT_EQ(r.tokens, greedy_reference(*reference, reference->tokenize_prompt(kPrompts[0]), 8));
}

// One sequence through `scheduler`, waited for, with its result.
Outcome run_one(Scheduler& scheduler, std::vector<Token> prompt, const GenerationOptions& options) {
  Collector c;
  std::vector<SequenceRequest> one;
  one.push_back(c.request(std::move(prompt), options));
  EXPECT_TRUE(scheduler.submit(std::move(one)).has_value());
  return c.wait();
}

// The prompt cache: turn 2 of a conversation (turn 1's prompt, its answer, a new message)
// reuses the KV its slot kept — an unrelated sequence in between takes the other, least
// recently used slot — and prefills only the rest; the tokens equal those of a scheduler
// without the cache, for greedy decoding and for a seeded sampler whose repeat penalty reads
// the kept prefix.
TEST_F(SchedulerTest, APromptCacheHitPrefillsOnlyTheRestAndChangesNoToken) {
  auto model = open(2, 512);
  LocalExecutor executor(model->stage());
  GenerationOptions sampled;
  sampled.max_tokens = 24;
  sampled.sampling.temperature = 0.8f;
  sampled.sampling.seed = 7;
  sampled.sampling.repeat_penalty = 1.5f;
  sampled.sampling.repeat_last_n = 256;
  for (const GenerationOptions& options : {greedy(24), sampled}) {
    std::vector<Outcome> runs[2];
    for (bool cache : {true, false}) {
      SchedulerOptions o;
      o.prefix_cache = cache;
      o.step_tokens = 32;
      Scheduler scheduler(executor, model->tokenizer(), o);
      const std::vector<Token> turn1 = model->tokenize_prompt(kPrompts[2]);
      const Outcome first = run_one(scheduler, turn1, options);
      const Outcome other = run_one(scheduler, model->tokenize_prompt(kPrompts[4]), options);
      std::vector<Token> turn2 = turn1;
      turn2.insert(turn2.end(), first.tokens.begin(), first.tokens.end());
      const std::vector<Token> more = model->tokenizer().encode(" And then what happened next?", false, false);
      turn2.insert(turn2.end(), more.begin(), more.end());
      const Outcome second = run_one(scheduler, turn2, options);
      EXPECT_GE(second.tokens.size(), 8u) << "turn 2 must generate for the comparison to mean much";
      runs[cache ? 0 : 1] = {first, other, second};
      const SchedulerStats stats = wait_idle(scheduler);
      if (cache) {
        // The slot held turn 1's prompt and every generated token but the last (never fed back).
        EXPECT_EQ(second.result.cached_tokens, static_cast<int32_t>(turn1.size() + first.tokens.size()) - 1);
        EXPECT_EQ(first.result.cached_tokens, 0);
        EXPECT_EQ(stats.prefix_cache_hits, 1u);
        EXPECT_EQ(stats.prefix_cache_tokens, static_cast<uint64_t>(second.result.cached_tokens));
        // (A sequence that ends at its first token is counted just after its callbacks ran.)
        const uint64_t prefilled = turn1.size() + model->tokenize_prompt(kPrompts[4]).size() + turn2.size() -
                                   static_cast<size_t>(second.result.cached_tokens);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (scheduler.stats().prompt_tokens < prefilled && std::chrono::steady_clock::now() < deadline) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        EXPECT_EQ(scheduler.stats().prompt_tokens, prefilled);
      } else {
        EXPECT_EQ(second.result.cached_tokens, 0);
        EXPECT_EQ(stats.prefix_cache_hits, 0u);
      }
    }
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(runs[0][i].tokens, runs[1][i].tokens) << "run " << i << (options.sampling.temperature > 0 ? " sampled" : " greedy");
      EXPECT_EQ(runs[0][i].text, runs[1][i].text);
    }
  }
}

TEST_F(SchedulerTest, StopStringsAndLengthLimits) {
  auto model = open(2);
  LocalExecutor executor(model->stage());
  Scheduler scheduler(executor, model->tokenizer(), {});
  const Outcome free_run = run_together(scheduler, *model, {"1, 2, 3, 4,"}, greedy(20))[0];
  ASSERT_EQ(free_run.result.finish_reason, "length");
  EXPECT_EQ(free_run.result.completion_tokens, 20);
  ASSERT_NE(free_run.text.find(" 7"), std::string::npos) << free_run.text;

  GenerationOptions stop = greedy(20);
  stop.stop = {" 7"};
  const Outcome stopped = run_together(scheduler, *model, {"1, 2, 3, 4,"}, stop)[0];
  EXPECT_EQ(stopped.result.finish_reason, "stop");
  EXPECT_EQ(stopped.text, free_run.text.substr(0, free_run.text.find(" 7")));
  EXPECT_LT(stopped.result.completion_tokens, 20);
}

TEST_F(SchedulerTest, QueueBoundRefusesAndCancelFreesTheSlot) {
  auto model = open(1);
  LocalExecutor executor(model->stage());
  SchedulerOptions options;
  options.max_queue = 1;
  Scheduler scheduler(executor, model->tokenizer(), options);
  const std::vector<Token> prompt = model->tokenize_prompt(kPrompts[0]);

  // One slot + a queue of one: two sequences fit, a third is refused, and a group of two that
  // does not fit whole is refused whole.
  Collector a, b, c;
  auto ha = scheduler.submit([&] {
    std::vector<SequenceRequest> r;
    r.push_back(a.request(prompt, greedy(-1)));  // until the context is full: must be cancelled
    return r;
  }());
  ASSERT_TRUE(ha.has_value());
  auto hb = scheduler.submit([&] {
    std::vector<SequenceRequest> r;
    r.push_back(b.request(prompt, greedy(4)));
    return r;
  }());
  ASSERT_TRUE(hb.has_value());
  std::vector<SequenceRequest> third;
  third.push_back(c.request(prompt, greedy(4)));
  EXPECT_FALSE(scheduler.submit(std::move(third)).has_value());

  // The first holds the slot (until cancelled: 512 positions take far longer than this), the
  // second waits for it: admitted() tells them apart (the server's queue timeout reads it).
  for (int i = 0; i < 1000 && !(*ha)[0]->admitted(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_TRUE((*ha)[0]->admitted());
  EXPECT_FALSE((*hb)[0]->admitted());

  // Cancel the first: it reports "cancelled", and the waiting one gets the slot and completes.
  (*ha)[0]->cancel();
  const Outcome first = a.wait();
  EXPECT_EQ(first.result.finish_reason, "cancelled");
  const Outcome second = b.wait();
  EXPECT_EQ(second.result.finish_reason, "length");
  EXPECT_EQ(second.result.completion_tokens, 4);
  EXPECT_TRUE((*hb)[0]->admitted());
  const SchedulerStats stats = wait_idle(scheduler);
  EXPECT_EQ(stats.running, 0);
  EXPECT_EQ(stats.kv_positions_used, 0);
}

TEST_F(SchedulerTest, RequestsThatCanNeverRunAreRefusedWithTheReason) {
  auto model = open(2, 32);
  LocalExecutor executor(model->stage());
  Scheduler scheduler(executor, model->tokenizer(), {});
  std::vector<SequenceRequest> too_long(1);
  too_long[0].prompt.assign(40, model->tokenize_prompt("a")[0]);
  try {
    scheduler.submit(std::move(too_long));
    FAIL() << "a prompt longer than the context was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("40 tokens but the context holds 32"), std::string::npos) << e.what();
  }
  std::vector<SequenceRequest> too_many(3);
  for (auto& r : too_many) r.prompt = {1};
  EXPECT_THROW(scheduler.submit(std::move(too_many)), Error);
  std::vector<SequenceRequest> empty(1);
  EXPECT_THROW(scheduler.submit(std::move(empty)), Error);
}

TEST_F(SchedulerTest, ContextFullEndsWithLength) {
  auto model = open(1, 24);
  LocalExecutor executor(model->stage());
  Scheduler scheduler(executor, model->tokenizer(), {});
  GenerationOptions options = greedy(-1);
  options.ignore_eos = true;
  const std::vector<Token> prompt = model->tokenize_prompt(kPrompts[0]);
  const Outcome o = run_together(scheduler, *model, {kPrompts[0]}, options)[0];
  EXPECT_EQ(o.result.finish_reason, "length");
  EXPECT_EQ(o.result.completion_tokens, 24 - static_cast<int32_t>(prompt.size()));
}

}  // namespace
}  // namespace hearth::engine
