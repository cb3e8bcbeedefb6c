// The CPU backend's attention at every CPU level this machine has, against the scalar reference
// ref::attention_head: f16, f32 and q8_0 caches, grouped-query heads, head dims with a SIMD tail
// (38) and without one (40, 64, 72: whole 8-float lanes, not whole 64-float chunks; q8_0: 32 to
// 128, whole blocks), sliding
// windows, a logit softcap, several sequences in one batch, whole prompts (tiles of tokens that
// pass over each block of K / V rows together, several blocks per row range) and
// continuous-batching decode.
//
// And batch invariance, bit for bit: every (token, head) gives the same output computed alone,
// inside a whole prompt, in prompt chunks, beside other sequences' tokens, and at 1 or 3
// threads — the contract test_scheduler and the server's "8 streams = alone" rely
// on.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/ops_ref.h"
#include "kernels/cpu/ops_simd.h"

namespace hearth::kernels {
namespace {

// A KV cache of `n_seq` sequences filled with random K / V at positions [0, lengths[s]).
struct Filled {
  KvLayer cache;
  std::vector<int32_t> lengths;
};

Filled fill_cache(CpuBackend& backend, DType kv_type, const AttentionParams& p, int32_t n_ctx,
                  const std::vector<int32_t>& lengths, std::mt19937& rng) {
  const int64_t kv_dim = int64_t{p.n_head_kv} * p.head_dim;
  Filled f{backend.new_kv_layer(kv_type, static_cast<int32_t>(lengths.size()), n_ctx, kv_dim), lengths};
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<KvSlot> fill;
  for (size_t s = 0; s < lengths.size(); ++s) {
    for (int32_t i = 0; i < lengths[s]; ++i) fill.push_back({static_cast<int32_t>(s), i});
  }
  Tensor k = backend.new_tensor(DType::F32, {kv_dim, static_cast<int64_t>(fill.size()), 1, 1});
  Tensor v = backend.new_tensor(DType::F32, {kv_dim, static_cast<int64_t>(fill.size()), 1, 1});
  for (int64_t i = 0; i < k.n_elements(); ++i) static_cast<float*>(CpuBackend::host(k))[i] = normal(rng);
  for (int64_t i = 0; i < v.n_elements(); ++i) static_cast<float*>(CpuBackend::host(v))[i] = normal(rng);
  backend.kv_store(f.cache, k, v, upload_slots(backend, fill));
  return f;
}

// One query vector per (sequence, position): the same token always asks the same question.
std::vector<float> query_of(const AttentionParams& p, KvSlot s) {
  std::mt19937 rng(static_cast<uint32_t>(1000003 * s.seq + s.pos));
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> q(static_cast<size_t>(p.n_head) * static_cast<size_t>(p.head_dim));
  for (float& x : q) x = normal(rng);
  return q;
}

// The backend's output for `slots` in one call: [n_tokens][n_head * head_dim].
std::vector<float> run_attention(CpuBackend& backend, const KvLayer& cache, const AttentionParams& p,
                                 const std::vector<KvSlot>& slots) {
  const int64_t q_dim = int64_t{p.n_head} * p.head_dim;
  Tensor q = backend.new_tensor(DType::F32, {q_dim, static_cast<int64_t>(slots.size()), 1, 1});
  for (size_t t = 0; t < slots.size(); ++t) {
    const std::vector<float> qt = query_of(p, slots[t]);
    std::memcpy(static_cast<float*>(CpuBackend::host(q)) + static_cast<int64_t>(t) * q_dim, qt.data(), qt.size() * sizeof(float));
  }
  Tensor out = backend.new_tensor(DType::F32, q.ne);
  backend.attention(q, cache, upload_slots(backend, slots), p, out);
  const auto* o = static_cast<const float*>(CpuBackend::host(out));
  return {o, o + out.n_elements()};
}

// Largest |backend - ref::attention_head| over every head of every token of `slots` (one call).
double max_error_vs_reference(CpuBackend& backend, const KvLayer& cache, const AttentionParams& p,
                              const std::vector<KvSlot>& slots) {
  const std::vector<float> got = run_attention(backend, cache, p, slots);
  const int64_t kv_dim = int64_t{p.n_head_kv} * p.head_dim;
  const size_t row_bytes = dtype_row_bytes(cache.k.type, kv_dim);
  std::vector<float> scores(static_cast<size_t>(cache.n_ctx)), expected(static_cast<size_t>(p.head_dim));
  double max_err = 0.0;
  for (size_t t = 0; t < slots.size(); ++t) {
    const std::vector<float> q = query_of(p, slots[t]);
    const int32_t first = p.window > 0 ? std::max(0, slots[t].pos - p.window + 1) : 0;
    const size_t seq_offset = static_cast<size_t>(slots[t].seq) * static_cast<size_t>(cache.n_ctx) * row_bytes;
    for (int h = 0; h < p.n_head; ++h) {
      ref::attention_head(q.data() + static_cast<int64_t>(h) * p.head_dim,
                          static_cast<const uint8_t*>(CpuBackend::host(cache.k)) + seq_offset,
                          static_cast<const uint8_t*>(CpuBackend::host(cache.v)) + seq_offset, cache.k.type, kv_dim,
                          static_cast<int64_t>(h / (p.n_head / p.n_head_kv)) * p.head_dim, p.head_dim, first,
                          slots[t].pos, p.scale, p.softcap, scores.data(), expected.data());
      for (int d = 0; d < p.head_dim; ++d) {
        const float g = got[(t * static_cast<size_t>(p.n_head) + static_cast<size_t>(h)) * static_cast<size_t>(p.head_dim) +
                            static_cast<size_t>(d)];
        max_err = std::max(max_err, std::fabs(double(g) - double(expected[static_cast<size_t>(d)])));
      }
    }
  }
  return max_err;
}

// Outputs are averages of unit-variance values; float partial sums against the reference's
// double ones differ by ~1e-6, and an f16 probability may round the other way (one f16 ulp of
// p times |v|). q8_0 is held to the f32 bound: both sides quantize q to the same bytes and read
// the same exact K / V values, only the sums' precision differs (largest seen: 2.4e-6).
double tolerance(DType kv_type) { return kv_type == DType::F16 ? 2e-3 : 1e-5; }

struct Case {
  CpuLevel level;
  DType kv_type;
  int head_dim;
  int32_t window;
  float softcap;
};

std::string case_name(const testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  std::string name = std::string(cpu_level_name(c.level)) + "_" + std::string(dtype_name(c.kv_type)) + "_d" +
                     std::to_string(c.head_dim);
  if (c.window > 0) name += "_window" + std::to_string(c.window);
  if (c.softcap > 0.0f) name += "_softcap";
  return name;
}

class AttentionVsReference : public testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!cpu_level_supported(GetParam().level)) GTEST_SKIP() << "CPU lacks " << cpu_level_name(GetParam().level);
  }
  AttentionParams params() const {
    AttentionParams p;
    p.n_head = 6;
    p.n_head_kv = 2;
    p.head_dim = GetParam().head_dim;
    p.scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));
    p.window = GetParam().window;
    p.softcap = GetParam().softcap;
    return p;
  }
};

// Queries at assorted positions of three sequences, in one batch.
TEST_P(AttentionVsReference, ScatteredTokens) {
  const Case c = GetParam();
  CpuBackend backend(2, c.level);
  const AttentionParams p = params();
  std::mt19937 rng(11);
  const Filled f = fill_cache(backend, c.kv_type, p, 64, {37, 20, 64}, rng);
  const std::vector<KvSlot> slots = {{0, 0}, {0, 36}, {1, 19}, {0, 17}, {1, 3}, {2, 63}, {2, 8}};
  EXPECT_LT(max_error_vs_reference(backend, f.cache, p, slots), tolerance(c.kv_type));
}

// A whole prompt of 300 tokens in one call: tiles of many tokens, K / V rows in several blocks.
TEST_P(AttentionVsReference, WholePrompt) {
  const Case c = GetParam();
  CpuBackend backend(3, c.level);
  const AttentionParams p = params();
  std::mt19937 rng(12);
  const Filled f = fill_cache(backend, c.kv_type, p, 304, {300, 7}, rng);
  std::vector<KvSlot> slots;
  for (int32_t i = 0; i < 300; ++i) slots.push_back({0, i});
  for (int32_t i = 0; i < 7; ++i) slots.push_back({1, i});  // a second prompt in the same batch
  EXPECT_LT(max_error_vs_reference(backend, f.cache, p, slots), tolerance(c.kv_type));
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const CpuLevel level : kAllCpuLevels) {
    for (const DType kv : {DType::F16, DType::F32}) {
      for (const int d : {38, 40, 64, 72}) cases.push_back({level, kv, d, 0, 0.0f});
      cases.push_back({level, kv, 40, 8, 0.0f});
      cases.push_back({level, kv, 72, 5, 30.0f});
    }
    for (const int d : {32, 64, 96, 128}) cases.push_back({level, DType::Q8_0, d, 0, 0.0f});
    cases.push_back({level, DType::Q8_0, 64, 8, 0.0f});
    cases.push_back({level, DType::Q8_0, 96, 5, 30.0f});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Levels, AttentionVsReference, testing::ValuesIn(all_cases()), case_name);

// Continuous batching: 11 sequences of odd, different lengths each decode one token in one
// batch (the batch order is not the sequence order, one cache slot stays unused), at 1, 2 and
// 3 threads, over f16, f32 and q8_0 caches, with and without a window, at every level.
TEST(Attention, ManySequencesDecodeInOneBatch) {
  for (const CpuLevel level : kAllCpuLevels) {
    if (!cpu_level_supported(level)) continue;
    for (const DType kv_type : {DType::F16, DType::F32, DType::Q8_0}) {
      for (const int32_t window : {0, 13}) {
        for (const int threads : {1, 2, 3}) {
          CpuBackend backend(threads, level);
          AttentionParams p;
          p.n_head = 9;
          p.n_head_kv = 3;
          p.head_dim = kv_type == DType::Q8_0 ? 32 : 24;  // 24: not a multiple of 16; q8_0: one block
          p.scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));
          p.window = window;
          constexpr int32_t kSeqs = 12, kCtx = 53;
          std::vector<int32_t> lengths;
          std::vector<KvSlot> slots;
          for (int32_t seq = 0; seq < kSeqs; ++seq) {
            const int32_t len = seq == 4 ? 0 : 1 + (seq * 19 + 3) % kCtx;  // 4, 23, 42, 8, (free), 46, ...
            lengths.push_back(len);
            if (len > 0) slots.push_back({seq, len - 1});
          }
          std::swap(slots[0], slots[7]);
          std::swap(slots[2], slots[9]);
          std::mt19937 rng(static_cast<uint32_t>(100 + threads + window));
          const Filled f = fill_cache(backend, kv_type, p, kCtx, lengths, rng);
          // The whole batch, and a batch of one or two tokens (fewer (token, kv head) jobs than
          // 4 per thread: every query head becomes its own job).
          for (const size_t n_slots : {slots.size(), size_t{1}, size_t{2}}) {
            const std::vector<KvSlot> batch(slots.begin(), slots.begin() + static_cast<ptrdiff_t>(n_slots));
            EXPECT_LT(max_error_vs_reference(backend, f.cache, p, batch), tolerance(kv_type))
                << cpu_level_name(level) << " " << dtype_name(kv_type) << " window " << window << " threads "
                << threads << " tokens " << n_slots;
          }
        }
      }
    }
  }
}

// Batch invariance. Reference: every token of three sequences computed alone, at one thread
// (a single token: each query head is its own job). Then the same tokens inside whole prompts
// (tiles of 16 tokens, all query heads of a kv head in one job, two heads per kernel call, rows
// in several blocks), in chunks of 5 beside decode tokens of the other sequences, all sequences
// interleaved in one batch, each at 1 and 3 threads: every output bit must agree. Without a
// window, and with a window of 250 rows and a softcap.
TEST(Attention, TokenGetsTheSameBitsInAnyBatch) {
  std::vector<const OpsKernels*> tested;
  for (const CpuLevel level : kAllCpuLevels) {
    if (!cpu_level_supported(level)) continue;
    // A level that runs the same attention kernels as one already tested (dotprod: neon's) adds
    // nothing but minutes under emulation.
    const OpsKernels& ops = ops_kernels(level);
    if (std::any_of(tested.begin(), tested.end(), [&](const OpsKernels* o) { return o->qk_f16 == ops.qk_f16; })) continue;
    tested.push_back(&ops);
    // Head dims with and without a SIMD tail (38: 6 past the last 8 lanes, 2 past the last 4).
    // With the window of 250 rows, a tile's rows start elsewhere than a lone token's and span
    // more than one block (f16, head dim 64: blocks of 256 rows; f32, 38: of 208), so block
    // boundaries fall differently: a blockwise partial sum would show.
    struct Config {
      DType kv_type;
      int head_dim;
      int32_t window;
    };
    // q8_0 (V widened to f32 a block of 128 rows at a time at head dim 64): with the window,
    // and with one block per head.
    for (const Config config : {Config{DType::F16, 64, 250}, Config{DType::F16, 38, 0}, Config{DType::F32, 64, 0},
                                Config{DType::F32, 38, 250}, Config{DType::Q8_0, 64, 250},
                                Config{DType::Q8_0, 32, 0}}) {
      const DType kv_type = config.kv_type;
      const int head_dim = config.head_dim;
      const int32_t window = config.window;
      AttentionParams p;
      p.n_head = 6;
      p.n_head_kv = 2;
      p.head_dim = head_dim;
      p.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
      p.window = window;
      p.softcap = window > 0 ? 20.0f : 0.0f;
      const std::vector<int32_t> lengths = {300, 41, 9};
      CpuBackend one(1, level);
      std::mt19937 rng(static_cast<uint32_t>(7 + head_dim + window));
      const Filled f = fill_cache(one, kv_type, p, 304, lengths, rng);
      const size_t row = static_cast<size_t>(p.n_head) * static_cast<size_t>(head_dim);

      // alone[seq][pos]: the reference bits.
      std::vector<std::vector<std::vector<float>>> alone(lengths.size());
      for (size_t s = 0; s < lengths.size(); ++s) {
        for (int32_t pos = 0; pos < lengths[s]; ++pos) {
          alone[s].push_back(run_attention(one, f.cache, p, {{static_cast<int32_t>(s), pos}}));
        }
      }
      const auto check = [&](const std::vector<float>& got, const std::vector<KvSlot>& slots, const std::string& what) {
        for (size_t t = 0; t < slots.size(); ++t) {
          const std::vector<float>& want = alone[static_cast<size_t>(slots[t].seq)][static_cast<size_t>(slots[t].pos)];
          ASSERT_EQ(std::memcmp(got.data() + t * row, want.data(), row * sizeof(float)), 0)
              << what << ": token (" << slots[t].seq << ", " << slots[t].pos << ") differs from alone, "
              << cpu_level_name(level) << " " << dtype_name(kv_type) << " head_dim " << head_dim << " window "
              << window;
        }
      };
      for (const int threads : {1, 3}) {
        CpuBackend backend(threads, level);
        const std::string at = std::to_string(threads) + " threads";
        // Whole prompts, one call per sequence.
        for (size_t s = 0; s < lengths.size(); ++s) {
          std::vector<KvSlot> prompt;
          for (int32_t pos = 0; pos < lengths[s]; ++pos) prompt.push_back({static_cast<int32_t>(s), pos});
          check(run_attention(backend, f.cache, p, prompt), prompt, "whole prompt, " + at);
        }
        // Sequence 0 in chunks of 5, with a decode token of sequences 1 and 2 first in each batch.
        for (int32_t c0 = 0; c0 < lengths[0]; c0 += 5) {
          std::vector<KvSlot> batch = {{1, (c0 / 5) % lengths[1]}, {2, (c0 / 5) % lengths[2]}};
          for (int32_t pos = c0; pos < std::min(lengths[0], c0 + 5); ++pos) batch.push_back({0, pos});
          check(run_attention(backend, f.cache, p, batch), batch, "chunks of 5, " + at);
        }
        // Everything at once, sequences interleaved in runs of 3 positions.
        std::vector<KvSlot> mixed;
        for (int32_t pos = 0; pos < lengths[0]; pos += 3) {
          for (int32_t s = 0; s < 3; ++s) {
            for (int32_t i = pos; i < std::min(pos + 3, lengths[static_cast<size_t>(s)]); ++i) mixed.push_back({s, i});
          }
        }
        check(run_attention(backend, f.cache, p, mixed), mixed, "interleaved, " + at);
      }
    }
  }
}

}  // namespace
}  // namespace hearth::kernels
