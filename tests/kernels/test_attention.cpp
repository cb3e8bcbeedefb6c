// The CPU backend's attention (f32 partial sums, f16 K/V slices converted per job) against the
// scalar reference ref::attention_head, over f16 and f32 caches, grouped-query heads, two
// sequences in one batch, a sliding window and a logit softcap; and continuous-batching decode:
// many sequences of different lengths, one token each, in one batch; and the f16 -> f32
// conversion kernels of every level against core/fp16.h.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/fp16.h"

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/ops_ref.h"

namespace hearth::kernels {
namespace {

struct Case {
  DType kv_type;
  int32_t window;
  float softcap;
};

class AttentionVsReference : public testing::TestWithParam<Case> {};

TEST_P(AttentionVsReference, Agrees) {
  const Case c = GetParam();
  CpuBackend backend(2);
  AttentionParams p;
  p.n_head = 6;
  p.n_head_kv = 2;
  p.head_dim = 40;  // not a multiple of the SIMD width
  p.scale = 1.0f / std::sqrt(40.0f);
  p.window = c.window;
  p.softcap = c.softcap;
  const int64_t kv_dim = int64_t{p.n_head_kv} * p.head_dim, q_dim = int64_t{p.n_head} * p.head_dim;
  KvLayer cache = backend.new_kv_layer(c.kv_type, 2, 64, kv_dim);

  // Fill both sequences' caches: 37 positions of sequence 0, 20 of sequence 1.
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<KvSlot> fill;
  for (int32_t i = 0; i < 37; ++i) fill.push_back({0, i});
  for (int32_t i = 0; i < 20; ++i) fill.push_back({1, i});
  Tensor k = backend.new_tensor(DType::F32, {kv_dim, static_cast<int64_t>(fill.size()), 1, 1});
  Tensor v = backend.new_tensor(DType::F32, {kv_dim, static_cast<int64_t>(fill.size()), 1, 1});
  for (int64_t i = 0; i < k.n_elements(); ++i) static_cast<float*>(k.data)[i] = normal(rng);
  for (int64_t i = 0; i < v.n_elements(); ++i) static_cast<float*>(v.data)[i] = normal(rng);
  backend.kv_store(cache, k, v, fill);

  // Queries at assorted positions of both sequences.
  const std::vector<KvSlot> slots = {{0, 0}, {0, 36}, {1, 19}, {0, 17}, {1, 3}};
  Tensor q = backend.new_tensor(DType::F32, {q_dim, static_cast<int64_t>(slots.size()), 1, 1});
  for (int64_t i = 0; i < q.n_elements(); ++i) static_cast<float*>(q.data)[i] = 2.0f * normal(rng);
  Tensor out = backend.new_tensor(DType::F32, q.ne);
  backend.attention(q, cache, slots, p, out);

  const size_t elem = c.kv_type == DType::F16 ? 2 : 4;
  std::vector<float> scores(64), expected(static_cast<size_t>(p.head_dim));
  double max_err = 0.0;
  for (size_t t = 0; t < slots.size(); ++t) {
    for (int h = 0; h < p.n_head; ++h) {
      const int32_t first = p.window > 0 ? std::max(0, slots[t].pos - p.window + 1) : 0;
      const size_t seq_offset = static_cast<size_t>(slots[t].seq) * 64 * static_cast<size_t>(kv_dim) * elem;
      ref::attention_head(static_cast<const float*>(q.data) + (static_cast<int64_t>(t) * p.n_head + h) * p.head_dim,
                          static_cast<const uint8_t*>(cache.k.data) + seq_offset,
                          static_cast<const uint8_t*>(cache.v.data) + seq_offset, c.kv_type, kv_dim,
                          static_cast<int64_t>(h / (p.n_head / p.n_head_kv)) * p.head_dim, p.head_dim, first,
                          slots[t].pos, p.scale, p.softcap, scores.data(), expected.data());
      for (int d = 0; d < p.head_dim; ++d) {
        const float got = static_cast<const float*>(out.data)[(static_cast<int64_t>(t) * p.n_head + h) * p.head_dim + d];
        max_err = std::max(max_err, std::fabs(double(got) - double(expected[static_cast<size_t>(d)])));
      }
    }
  }
  // Outputs are averages of unit-variance values; float vs double summation differs ~1e-6,
  // and an f16 probability may round the other way (one f16 ulp of p times |v|).
  EXPECT_LT(max_err, c.kv_type == DType::F16 ? 2e-3 : 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Caches, AttentionVsReference,
                         testing::Values(Case{DType::F16, 0, 0.0f}, Case{DType::F32, 0, 0.0f},
                                         Case{DType::F16, 8, 0.0f}, Case{DType::F32, 5, 30.0f}));

// Largest |backend - reference| over every head of every query token in `slots`.
double max_error_vs_reference(CpuBackend& backend, const KvLayer& cache, const AttentionParams& p,
                              const std::vector<KvSlot>& slots, std::mt19937& rng) {
  const int64_t kv_dim = int64_t{p.n_head_kv} * p.head_dim, q_dim = int64_t{p.n_head} * p.head_dim;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Tensor q = backend.new_tensor(DType::F32, {q_dim, static_cast<int64_t>(slots.size()), 1, 1});
  for (int64_t i = 0; i < q.n_elements(); ++i) static_cast<float*>(q.data)[i] = 2.0f * normal(rng);
  Tensor out = backend.new_tensor(DType::F32, q.ne);
  backend.attention(q, cache, slots, p, out);
  const size_t elem = cache.k.type == DType::F16 ? 2 : 4;
  std::vector<float> scores(static_cast<size_t>(cache.n_ctx)), expected(static_cast<size_t>(p.head_dim));
  double max_err = 0.0;
  for (size_t t = 0; t < slots.size(); ++t) {
    for (int h = 0; h < p.n_head; ++h) {
      const int32_t first = p.window > 0 ? std::max(0, slots[t].pos - p.window + 1) : 0;
      const size_t seq_offset =
          static_cast<size_t>(slots[t].seq) * static_cast<size_t>(cache.n_ctx) * static_cast<size_t>(kv_dim) * elem;
      ref::attention_head(static_cast<const float*>(q.data) + (static_cast<int64_t>(t) * p.n_head + h) * p.head_dim,
                          static_cast<const uint8_t*>(cache.k.data) + seq_offset,
                          static_cast<const uint8_t*>(cache.v.data) + seq_offset, cache.k.type, kv_dim,
                          static_cast<int64_t>(h / (p.n_head / p.n_head_kv)) * p.head_dim, p.head_dim, first,
                          slots[t].pos, p.scale, p.softcap, scores.data(), expected.data());
      for (int d = 0; d < p.head_dim; ++d) {
        const float got = static_cast<const float*>(out.data)[(static_cast<int64_t>(t) * p.n_head + h) * p.head_dim + d];
        max_err = std::max(max_err, std::fabs(double(got) - double(expected[static_cast<size_t>(d)])));
      }
    }
  }
  return max_err;
}

// Continuous batching: 11 sequences of odd, different lengths each decode one token in one
// batch (the batch order is not the sequence order, one cache slot stays unused), at 1, 2 and
// 3 threads, over f16 and f32 caches, with and without a window.
TEST(Attention, ManySequencesDecodeInOneBatch) {
  for (const DType kv_type : {DType::F16, DType::F32}) {
    for (const int32_t window : {0, 13}) {
      for (const int threads : {1, 2, 3}) {
        CpuBackend backend(threads);
        AttentionParams p;
        p.n_head = 9;
        p.n_head_kv = 3;
        p.head_dim = 24;  // not a multiple of 16
        p.scale = 1.0f / std::sqrt(24.0f);
        p.window = window;
        const int64_t kv_dim = int64_t{p.n_head_kv} * p.head_dim;
        constexpr int32_t kSeqs = 12, kCtx = 53;
        KvLayer cache = backend.new_kv_layer(kv_type, kSeqs, kCtx, kv_dim);
        std::mt19937 rng(static_cast<uint32_t>(100 + threads + window));
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<KvSlot> fill, slots;
        for (int32_t seq = 0; seq < kSeqs; ++seq) {
          if (seq == 4) continue;  // a free slot of the cache
          const int32_t len = 1 + (seq * 19 + 3) % kCtx;  // 4, 23, 42, 8, (free), 46, ...: an odd mix
          for (int32_t i = 0; i < len; ++i) fill.push_back({seq, i});
          slots.push_back({seq, len - 1});
        }
        std::swap(slots[0], slots[7]);
        std::swap(slots[2], slots[9]);
        Tensor k = backend.new_tensor(DType::F32, {kv_dim, static_cast<int64_t>(fill.size()), 1, 1});
        Tensor v = backend.new_tensor(DType::F32, {kv_dim, static_cast<int64_t>(fill.size()), 1, 1});
        for (int64_t i = 0; i < k.n_elements(); ++i) static_cast<float*>(k.data)[i] = normal(rng);
        for (int64_t i = 0; i < v.n_elements(); ++i) static_cast<float*>(v.data)[i] = normal(rng);
        backend.kv_store(cache, k, v, fill);
        // The whole batch, and a batch of one or two tokens (fewer (token, kv head) jobs than
        // 4 per thread: every query head becomes its own job).
        for (const size_t n_slots : {slots.size(), size_t{1}, size_t{2}}) {
          const std::vector<KvSlot> batch(slots.begin(), slots.begin() + static_cast<ptrdiff_t>(n_slots));
          const double err = max_error_vs_reference(backend, cache, p, batch, rng);
          EXPECT_LT(err, kv_type == DType::F16 ? 2e-3 : 1e-5)
              << dtype_name(kv_type) << " window " << window << " threads " << threads << " tokens " << n_slots;
        }
      }
    }
  }
}

// The f16 -> f32 conversion of every level this CPU has is exact for every half (subnormals,
// infinities and NaNs included), at every length and misalignment of the SIMD tail.
TEST(ConvertF16ToF32, ExactAtEveryLevel) {
  std::vector<uint16_t> all(65536 + 3);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i * 40503u);  // a permutation, then 3 more
  for (const CpuLevel level : kAllCpuLevels) {
    if (!cpu_level_supported(level)) continue;
    for (const size_t offset : {size_t{0}, size_t{1}, size_t{3}}) {
      for (const int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{8}, int64_t{9}, int64_t{65536}}) {
        const size_t shift = offset % 2;  // misaligns the output too
        std::vector<float> got(static_cast<size_t>(n) + 2, 12345.0f);
        convert_f16_to_f32(all.data() + offset, got.data() + shift, n, level);
        for (int64_t i = 0; i < n; ++i) {
          const float want = fp16_to_fp32(all[offset + static_cast<size_t>(i)]);
          const float have = got[static_cast<size_t>(i) + shift];
          ASSERT_EQ(std::memcmp(&want, &have, 4) == 0 || (std::isnan(want) && std::isnan(have)), true)
              << cpu_level_name(level) << " half 0x" << std::hex << all[offset + static_cast<size_t>(i)];
        }
        EXPECT_EQ(got[static_cast<size_t>(n) + shift], 12345.0f) << "wrote past n";
      }
    }
  }
}

}  // namespace
}  // namespace hearth::kernels
