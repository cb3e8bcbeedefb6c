// The CPU backend's attention (f32 partial sums, K/V converted once per call) against the
// scalar reference ref::attention_head, over f16 and f32 caches, grouped-query heads, two
// sequences in one batch, a sliding window and a logit softcap.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/cpu/cpu_backend.h"
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

}  // namespace
}  // namespace hearth::kernels
