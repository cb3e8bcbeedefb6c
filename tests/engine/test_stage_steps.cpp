// The step contract of kernels/backend.h, as a Stage keeps it: a backend that records what it is
// asked to do (and forwards it to the CPU backend) sees, for two steps with the same key, the
// same ops on the same tensors — same buffers, offsets, shapes — so a GPU backend could record
// the first and replay it; no buffer is allocated and nothing is written or read inside a step;
// inputs are written before it and results read after; a larger batch than the arena holds
// grows it once and then repeats again. And the results are the CPU backend's own.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "engine/format/gguf.h"
#include "engine/model/model_config.h"
#include "engine/model/stage.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/support/fixtures.h"

namespace hearth::engine {
namespace {

using kernels::Tensor;

// One call: its name and the tensors it touched, as (buffer, offset, shape, type).
struct Call {
  std::string op;
  std::vector<std::tuple<const void*, size_t, std::array<int64_t, 4>, DType>> tensors;
  bool operator==(const Call&) const = default;
};

class RecordingBackend final : public kernels::Backend {
 public:
  explicit RecordingBackend(kernels::Backend& inner) : inner_(inner) {}

  std::vector<Call> calls;        // ops of the current / last step
  std::vector<uint64_t> keys;     // begin_step keys in order
  int in_step_allocations = 0;    // new_buffer / weight / new_kv_layer inside a step
  int in_step_transfers = 0;      // write / read inside a step
  int writes_outside = 0, reads_outside = 0;
  bool in_step = false;

  std::string name() const override { return inner_.name(); }
  kernels::DeviceInfo device() const override { return inner_.device(); }
  bool supports(kernels::Op op, DType type) const override { return inner_.supports(op, type); }
  bool supports_kv_type(DType type, int64_t head_dim) const override { return inner_.supports_kv_type(type, head_dim); }
  std::shared_ptr<kernels::Buffer> new_buffer(size_t bytes) override {
    if (in_step) ++in_step_allocations;
    return inner_.new_buffer(bytes);
  }
  Tensor weight(DType type, std::array<int64_t, 4> ne, const void* host, std::shared_ptr<const void> keep) override {
    if (in_step) ++in_step_allocations;
    return inner_.weight(type, ne, host, std::move(keep));
  }
  void write(const Tensor& dst, const void* host, size_t bytes, size_t offset) override {
    (in_step ? in_step_transfers : writes_outside) += 1;
    inner_.write(dst, host, bytes, offset);
  }
  void read(const Tensor& src, void* host, size_t bytes) override {
    (in_step ? in_step_transfers : reads_outside) += 1;
    inner_.read(src, host, bytes);
  }
  void begin_step(uint64_t key) override {
    EXPECT_FALSE(in_step) << "nested begin_step";
    in_step = true;
    keys.push_back(key);
    calls.clear();
    inner_.begin_step(key);
  }
  void end_step() override {
    EXPECT_TRUE(in_step) << "end_step without begin_step";
    in_step = false;
    inner_.end_step();
  }
  void get_rows(const Tensor& table, const Tensor& ids, const Tensor& out) override {
    record("get_rows", {&table, &ids, &out});
    inner_.get_rows(table, ids, out);
  }
  void matmul(const Tensor& w, const Tensor& x, const Tensor& y) override {
    record("matmul", {&w, &x, &y});
    inner_.matmul(w, x, y);
  }
  void rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) override {
    record("rms_norm", {&x, &w, &y});
    inner_.rms_norm(x, w, eps, y);
  }
  void add(const Tensor& a, const Tensor& b, const Tensor& y) override {
    record("add", {&a, &b, &y});
    inner_.add(a, b, y);
  }
  void add_bias(const Tensor& x, const Tensor& bias) override {
    record("add_bias", {&x, &bias});
    inner_.add_bias(x, bias);
  }
  void scale(const Tensor& x, float s) override {
    record("scale", {&x});
    inner_.scale(x, s);
  }
  void softcap(const Tensor& x, float cap) override {
    record("softcap", {&x});
    inner_.softcap(x, cap);
  }
  void rope(const Tensor& x, int n_heads, const Tensor& positions, const kernels::RopeParams& p) override {
    record("rope", {&x, &positions, &p.freq_factors});
    inner_.rope(x, n_heads, positions, p);
  }
  void glu(const Tensor& gate, const Tensor& up, kernels::Activation act, const Tensor& y) override {
    record("glu", {&gate, &up, &y});
    inner_.glu(gate, up, act, y);
  }
  kernels::KvLayer new_kv_layer(DType type, int32_t n_seq, int32_t n_ctx, int64_t kv_dim) override {
    if (in_step) ++in_step_allocations;
    return inner_.new_kv_layer(type, n_seq, n_ctx, kv_dim);
  }
  void kv_store(const kernels::KvLayer& cache, const Tensor& k, const Tensor& v, const Tensor& slots) override {
    record("kv_store", {&cache.k, &cache.v, &k, &v, &slots});
    inner_.kv_store(cache, k, v, slots);
  }
  void attention(const Tensor& q, const kernels::KvLayer& cache, const Tensor& slots, const kernels::AttentionParams& p,
                 const Tensor& out) override {
    record("attention", {&q, &cache.k, &cache.v, &slots, &out});
    inner_.attention(q, cache, slots, p, out);
  }
  void synchronize() override { inner_.synchronize(); }

 private:
  void record(const char* op, std::initializer_list<const Tensor*> tensors) {
    EXPECT_TRUE(in_step) << op << " outside a step";
    Call c{op, {}};
    for (const Tensor* t : tensors) c.tensors.emplace_back(t->buffer.get(), t->offset, t->ne, t->type);
    calls.push_back(std::move(c));
  }
  kernels::Backend& inner_;
};

struct Fixture {
  gguf::GgufFile file;
  ModelConfig config;
};

Fixture open(const std::string& name) {
  gguf::GgufFile file = gguf::GgufFile::open(test::fixtures_dir() / "arch" / (name + ".gguf"));
  ModelConfig config = ModelConfig::from_gguf(file);
  return {std::move(file), std::move(config)};
}

// A decode step of `n` sequences at positions `pos`, tokens chosen by `salt`.
std::vector<float> decode_step(Stage& stage, int32_t n, int32_t pos, int32_t salt) {
  std::vector<Token> tokens;
  std::vector<kernels::KvSlot> slots;
  std::vector<int32_t> rows;
  for (int32_t s = 0; s < n; ++s) {
    tokens.push_back((s * 7 + salt) % stage.config().n_vocab);
    slots.push_back({s, pos});
    rows.push_back(s);
  }
  std::vector<float> out;
  stage.forward({.tokens = tokens, .hidden = {}, .slots = slots, .output_rows = rows}, out);
  return out;
}

class StageSteps : public testing::TestWithParam<std::string> {};

TEST_P(StageSteps, SameKeySameOpsOnSameTensors) {
  const Fixture m = open(GetParam());
  kernels::CpuBackend cpu(2);
  RecordingBackend rec(cpu);
  StageOptions options;
  options.n_ctx = 40;
  options.n_seq = 3;
  options.max_batch = 8;
  Stage stage(m.file, m.config, rec, 0, m.config.n_layer, options);

  decode_step(stage, 3, 0, 1);
  const std::vector<Call> first = rec.calls;
  const int writes = rec.writes_outside, reads = rec.reads_outside;
  decode_step(stage, 3, 1, 5);  // other tokens, other positions: same shape
  ASSERT_EQ(rec.keys.size(), 2u);
  EXPECT_EQ(rec.keys[0], rec.keys[1]);
  ASSERT_FALSE(first.empty());
  EXPECT_EQ(rec.calls, first) << "a repeated step must replay the same ops on the same tensors";
  EXPECT_EQ(rec.writes_outside - writes, writes) << "the same inputs are written each step";
  EXPECT_EQ(rec.reads_outside - reads, 1) << "one read of the results per step";
  EXPECT_EQ(rec.in_step_allocations, 0);
  EXPECT_EQ(rec.in_step_transfers, 0);

  // Another batch shape is another key; its tensors still live in the arena (same buffers).
  decode_step(stage, 2, 2, 3);
  EXPECT_NE(rec.keys[2], rec.keys[0]);
  const auto arena_of = [](const std::vector<Call>& calls) {
    return std::get<0>(calls.front().tensors.back());  // get_rows' output: x, in the arena
  };
  EXPECT_EQ(arena_of(rec.calls), arena_of(first));

  // A batch larger than the arena grows it once; then steps of that shape repeat again.
  std::vector<Token> prompt(12);
  std::vector<kernels::KvSlot> slots;
  for (int32_t i = 0; i < 12; ++i) {
    prompt[static_cast<size_t>(i)] = i % m.config.n_vocab;
    slots.push_back({2, 10 + i});
  }
  const int32_t last = 11;
  std::vector<float> out;
  stage.forward({.tokens = prompt, .hidden = {}, .slots = slots, .output_rows = std::span(&last, 1)}, out);
  const std::vector<Call> grown = rec.calls;
  EXPECT_NE(arena_of(grown), arena_of(first)) << "a new arena for the larger batch";
  for (int32_t i = 0; i < 12; ++i) slots[static_cast<size_t>(i)].pos += 12;
  stage.forward({.tokens = prompt, .hidden = {}, .slots = slots, .output_rows = std::span(&last, 1)}, out);
  EXPECT_EQ(rec.calls, grown);
  EXPECT_EQ(rec.in_step_allocations, 0);
}

// The recording wrapper changes nothing: the logits are the CPU backend's, step after step.
TEST_P(StageSteps, RecordedStepsGiveTheBackendsResults) {
  const Fixture m = open(GetParam());
  kernels::CpuBackend cpu_a(2), cpu_b(2);
  RecordingBackend rec(cpu_b);
  StageOptions options;
  options.n_ctx = 32;
  options.n_seq = 3;
  Stage plain(m.file, m.config, cpu_a, 0, m.config.n_layer, options);
  Stage recorded(m.file, m.config, rec, 0, m.config.n_layer, options);
  for (int32_t pos = 0; pos < 4; ++pos) {
    EXPECT_EQ(decode_step(plain, 3, pos, pos), decode_step(recorded, 3, pos, pos)) << "position " << pos;
  }
}

// A later pipeline stage: hidden states in (written before the step), the same contract.
TEST_P(StageSteps, StageFedHiddenStatesKeepsTheContract) {
  const Fixture m = open(GetParam());
  if (m.config.n_layer < 2) GTEST_SKIP() << "one layer";
  kernels::CpuBackend cpu(1);
  RecordingBackend rec(cpu);
  StageOptions options;
  options.n_ctx = 16;
  Stage stage(m.file, m.config, rec, 1, std::min(2, m.config.n_layer), options);
  std::vector<float> hidden(static_cast<size_t>(m.config.n_embd), 0.25f), out;
  const kernels::KvSlot slot{0, 0};
  stage.forward({.tokens = {}, .hidden = hidden, .slots = std::span(&slot, 1), .output_rows = {}}, out);
  const std::vector<Call> first = rec.calls;
  const kernels::KvSlot next{0, 1};
  stage.forward({.tokens = {}, .hidden = hidden, .slots = std::span(&next, 1), .output_rows = {}}, out);
  EXPECT_EQ(rec.calls, first);
  EXPECT_EQ(rec.in_step_transfers, 0);
}

INSTANTIATE_TEST_SUITE_P(Arch, StageSteps, testing::Values("llama-ropefreqs-tiny", "qwen2-tiny", "qwen3-tiny"),
                         [](const testing::TestParamInfo<std::string>& p) {
                           std::string n = p.param;
                           for (char& c : n) c = c == '-' ? '_' : c;
                           return n;
                         });

}  // namespace
}  // namespace hearth::engine
