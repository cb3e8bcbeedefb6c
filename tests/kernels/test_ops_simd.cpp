// The non-matmul vector kernels (kernels/cpu/ops_simd.h) at every CPU level this machine has:
// f32 -> f16 byte for byte against core/fp16.h (ties, subnormals, infinities, NaNs), exp within
// 2 ulp of double precision, the attention pieces' contracts (a score depends on its row only,
// f16 rows and their f32 conversion give the same bits, q8_0 scores within float rounding of
// the exact block products, p.V may be split into blocks, the
// two-query kernels give the one-query bits, softmax
// against a double-precision one), RMSNorm and SiLU within float rounding of ops_ref, GELU bit
// for bit, q8_0 blocks widened exactly; and CpuBackend's rms_norm / glu / kv_store (f16 and q8_0
// caches) at each level against the references.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/fp16.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/ops_ref.h"
#include "kernels/cpu/ops_simd.h"
#include "kernels/cpu/quants_ref.h"

namespace hearth::kernels {
namespace {

class OpsSimd : public testing::TestWithParam<CpuLevel> {
 protected:
  void SetUp() override {
    if (!cpu_level_supported(GetParam())) GTEST_SKIP() << "CPU lacks " << cpu_level_name(GetParam());
  }
  const OpsKernels& ops() const { return ops_kernels(GetParam()); }
};

// Lengths around the SIMD widths (tails of every size) and a long one.
constexpr int64_t kLengths[] = {1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 100, 1027};

// Distance in units in the last place between two finite floats of the same sign.
int64_t ulp_distance(float a, float b) {
  const auto key = [](float x) {
    const int32_t i = std::bit_cast<int32_t>(x);
    return i < 0 ? int64_t{std::numeric_limits<int32_t>::min()} - i : int64_t{i};
  };
  return std::abs(key(a) - key(b));
}

// Floats that probe f32 -> f16 rounding: every half's value, the midpoints between neighbours
// (ties go to even) and a hair either side, the subnormal and overflow boundaries, NaNs with
// payloads, and random bit patterns.
std::vector<float> f16_probe_values() {
  std::vector<float> v;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float x = fp16_to_fp32(static_cast<uint16_t>(h));
    v.push_back(x);
    if ((h & 0x7c00u) == 0x7c00u) continue;  // inf / NaN: no neighbour above
    const float next = fp16_to_fp32(static_cast<uint16_t>(h + 1));
    if (std::isnan(next) || std::isinf(next)) continue;
    const float mid = static_cast<float>((double(x) + double(next)) / 2);
    v.push_back(mid);
    v.push_back(std::nextafter(mid, -INFINITY));
    v.push_back(std::nextafter(mid, INFINITY));
  }
  for (const float x : {65504.0f, 65519.99f, 65520.0f, 1e10f, 5.96e-8f, 2.98e-8f, 2.9802322e-8f, 2.9802326e-8f, 1e-30f,
                        std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::infinity()}) {
    v.push_back(x);
    v.push_back(-x);
  }
  for (const uint32_t bits : {0x7f800001u, 0x7fc00000u, 0x7fbfffffu, 0xffc01234u, 0x7f802000u}) {
    v.push_back(std::bit_cast<float>(bits));
  }
  std::mt19937 rng(5);
  for (int i = 0; i < 200000; ++i) v.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng())));
  return v;
}

TEST_P(OpsSimd, F32ToF16BytesMatchReference) {
  const std::vector<float> x = f16_probe_values();
  for (const size_t offset : {size_t{0}, size_t{1}, size_t{5}}) {  // every tail length and misalignment
    const int64_t n = static_cast<int64_t>(x.size() - offset);
    std::vector<uint16_t> got(static_cast<size_t>(n) + 1, 0xabcd);
    ops().f32_to_f16(x.data() + offset, got.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const float xi = x[offset + static_cast<size_t>(i)];
      ASSERT_EQ(got[static_cast<size_t>(i)], fp32_to_fp16(xi))
          << "x = " << xi << " (bits 0x" << std::hex << std::bit_cast<uint32_t>(xi) << ")";
    }
    EXPECT_EQ(got[static_cast<size_t>(n)], 0xabcd) << "wrote past n";
    std::vector<float> rounded(x.begin() + static_cast<ptrdiff_t>(offset), x.end());
    ops().round_f16(rounded.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const float want = fp16_to_fp32(fp32_to_fp16(x[offset + static_cast<size_t>(i)]));
      const float have = rounded[static_cast<size_t>(i)];
      ASSERT_TRUE(std::bit_cast<uint32_t>(want) == std::bit_cast<uint32_t>(have) || (std::isnan(want) && std::isnan(have)))
          << "round_f16(" << x[offset + static_cast<size_t>(i)] << ") = " << have << ", want " << want;
    }
  }
}

TEST_P(OpsSimd, ExpWithinTwoUlp) {
  std::vector<float> x;
  for (double t = -103.0; t <= 88.7; t += 0.0037) x.push_back(static_cast<float>(t));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> small(-1.0f, 1.0f);
  for (int i = 0; i < 10000; ++i) x.push_back(small(rng));
  for (const float v : {0.0f, -0.0f, 1e-30f, -1e-30f, 88.72f, -87.33f, -87.34f}) x.push_back(v);
  std::vector<float> y(x.size());
  ops().exp(x.data(), y.data(), static_cast<int64_t>(x.size()));
  int64_t worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = std::exp(static_cast<double>(x[i]));
    const float want_f = static_cast<float>(want);
    if (want_f < std::numeric_limits<float>::min()) {
      // Subnormal results: within one subnormal step (and 0 where e^x < half of the smallest one).
      ASSERT_NEAR(y[i], want, 1.5 * std::numeric_limits<float>::denorm_min()) << "exp(" << x[i] << ")";
      continue;
    }
    const int64_t d = ulp_distance(y[i], want_f);
    worst = std::max(worst, d);
    ASSERT_LE(d, 2) << "exp(" << x[i] << ") = " << y[i] << ", want " << want;
  }
  // Saturation and specials.
  const float specials[] = {-INFINITY, -1000.0f, -104.0f, 89.0f, 1000.0f, INFINITY, NAN};
  float out[std::size(specials)];
  ops().exp(specials, out, static_cast<int64_t>(std::size(specials)));
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 0.0f);
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_EQ(out[3], INFINITY);
  EXPECT_EQ(out[4], INFINITY);
  EXPECT_EQ(out[5], INFINITY);
  EXPECT_TRUE(std::isnan(out[6]));
  RecordProperty("max_ulp", static_cast<int>(worst));
}

// Random f16 rows (as stored in the cache) and their exact f32 conversion.
struct Rows {
  std::vector<uint16_t> half;
  std::vector<float> full;
};
Rows random_rows(int64_t n, size_t stride, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Rows r;
  r.half.resize(static_cast<size_t>(n) * stride);
  for (uint16_t& h : r.half) h = fp32_to_fp16(normal(rng));
  for (const uint16_t h : r.half) r.full.push_back(fp16_to_fp32(h));
  return r;
}

TEST_P(OpsSimd, QkScoreDependsOnItsRowOnly) {
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const int64_t head_dim : {1, 7, 8, 24, 40, 64, 72, 256}) {
    const size_t stride = static_cast<size_t>(head_dim) + 5;  // rows of a wider cache, unaligned
    const int64_t n = 29;
    const Rows rows = random_rows(n, stride, rng);
    std::vector<float> q(static_cast<size_t>(head_dim));
    for (float& x : q) x = normal(rng);
    std::vector<float> all16(static_cast<size_t>(n)), all32(static_cast<size_t>(n));
    ops().qk_f16(q.data(), rows.half.data(), stride, n, head_dim, all16.data());
    ops().qk_f32(q.data(), rows.full.data(), stride, n, head_dim, all32.data());
    // The two-query kernels, with q as either query (the other a different one): q's scores.
    std::vector<float> other(q.size()), pair16(static_cast<size_t>(n)), pair32(static_cast<size_t>(n));
    std::vector<float> other16(static_cast<size_t>(n)), other_single(static_cast<size_t>(n));
    for (float& x : other) x = normal(rng);
    ops().qk2_f16(other.data(), q.data(), rows.half.data(), stride, n, head_dim, other16.data(), pair16.data());
    ops().qk2_f32(q.data(), other.data(), rows.full.data(), stride, n, head_dim, pair32.data(), other16.data());
    ops().qk_f32(other.data(), rows.full.data(), stride, n, head_dim, other_single.data());
    EXPECT_EQ(std::memcmp(pair16.data(), all16.data(), all16.size() * sizeof(float)), 0) << "qk2_f16, head_dim " << head_dim;
    EXPECT_EQ(std::memcmp(pair32.data(), all16.data(), all16.size() * sizeof(float)), 0) << "qk2_f32, head_dim " << head_dim;
    EXPECT_EQ(std::memcmp(other16.data(), other_single.data(), other16.size() * sizeof(float)), 0)
        << "qk2's other query, head_dim " << head_dim;
    for (int64_t j = 0; j < n; ++j) {
      const size_t at = static_cast<size_t>(j) * stride;
      double want = 0.0;
      for (int64_t d = 0; d < head_dim; ++d) want += double(q[static_cast<size_t>(d)]) * rows.full[at + static_cast<size_t>(d)];
      EXPECT_NEAR(all16[static_cast<size_t>(j)], want, 1e-5 * std::sqrt(double(head_dim)) * 4) << "row " << j;
      EXPECT_EQ(std::bit_cast<uint32_t>(all16[static_cast<size_t>(j)]), std::bit_cast<uint32_t>(all32[static_cast<size_t>(j)]))
          << "f16 rows and their f32 conversion differ at row " << j << ", head_dim " << head_dim;
      // The row alone, and in calls starting at every offset of a group.
      for (const int64_t start : {j, std::max<int64_t>(0, j - 3), std::max<int64_t>(0, j - 8)}) {
        float sub[16];
        const int64_t count = std::min<int64_t>(n - start, 11);
        ops().qk_f16(q.data(), rows.half.data() + static_cast<size_t>(start) * stride, stride, count, head_dim, sub);
        EXPECT_EQ(std::bit_cast<uint32_t>(sub[j - start]), std::bit_cast<uint32_t>(all16[static_cast<size_t>(j)]))
            << "row " << j << " in a call from row " << start << ", head_dim " << head_dim;
      }
    }
  }
}

// q8_0 rows (of a wider cache: the stride is in blocks): each score is the exact integer dot
// product of every block times its two scales, summed in float — within float rounding of the
// double sum — and the same bits alone or at any place of a call (so at any batch).
TEST_P(OpsSimd, QkQ8_0ScoreDependsOnItsRowOnly) {
  std::mt19937 rng(23);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const int64_t head_dim : {32, 64, 96, 256}) {
    const int64_t blocks = head_dim / kQK8_0;
    const size_t stride = static_cast<size_t>(blocks) + 3;  // in blocks
    const int64_t n = 29;
    std::vector<BlockQ8_0> rows(static_cast<size_t>(n) * stride), q(static_cast<size_t>(blocks));
    std::vector<float> x(static_cast<size_t>(head_dim));
    for (int64_t j = 0; j < n; ++j) {
      for (float& v : x) v = normal(rng) * (j % 3 == 0 ? 100.0f : 1.0f);
      ref::quantize_activations_q8_0(x.data(), rows.data() + static_cast<size_t>(j) * stride, head_dim);
    }
    for (float& v : x) v = normal(rng);
    ref::quantize_activations_q8_0(x.data(), q.data(), head_dim);
    std::vector<float> all(static_cast<size_t>(n));
    ops().qk_q8_0(q.data(), rows.data(), stride, n, head_dim, all.data());
    for (int64_t j = 0; j < n; ++j) {
      const BlockQ8_0* row = rows.data() + static_cast<size_t>(j) * stride;
      double want = 0.0, magnitude = 0.0;
      for (int64_t b = 0; b < blocks; ++b) {
        int64_t dot = 0, abs_dot = 0;
        for (int i = 0; i < kQK8_0; ++i) {
          dot += int64_t{q[static_cast<size_t>(b)].qs[i]} * row[b].qs[i];
          abs_dot += std::abs(int64_t{q[static_cast<size_t>(b)].qs[i]} * row[b].qs[i]);
        }
        const double scale = double(fp16_to_fp32(q[static_cast<size_t>(b)].d)) * fp16_to_fp32(row[b].d);
        want += double(dot) * scale;
        magnitude += double(abs_dot) * std::fabs(scale);  // bounds every partial sum
      }
      EXPECT_NEAR(all[static_cast<size_t>(j)], want, 1e-6 * magnitude + 1e-30) << "row " << j << ", head_dim " << head_dim;
      for (const int64_t start : {j, std::max<int64_t>(0, j - 3), std::max<int64_t>(0, j - 8)}) {
        float sub[16];
        const int64_t count = std::min<int64_t>(n - start, 11);
        ops().qk_q8_0(q.data(), rows.data() + static_cast<size_t>(start) * stride, stride, count, head_dim, sub);
        EXPECT_EQ(std::bit_cast<uint32_t>(sub[j - start]), std::bit_cast<uint32_t>(all[static_cast<size_t>(j)]))
            << "row " << j << " in a call from row " << start << ", head_dim " << head_dim;
      }
    }
  }
}

TEST_P(OpsSimd, PvMaySplitRowsIntoBlocks) {
  std::mt19937 rng(22);
  std::uniform_real_distribution<float> prob(0.0f, 0.1f);
  for (const int64_t head_dim : {1, 7, 8, 24, 40, 64, 72, 256}) {
    const size_t stride = static_cast<size_t>(head_dim) + 3;
    const int64_t n = 37;
    const Rows rows = random_rows(n, stride, rng);
    std::vector<float> p(static_cast<size_t>(n));
    for (float& x : p) x = prob(rng);
    std::vector<float> whole(static_cast<size_t>(head_dim), 0.0f), split = whole, full32 = whole;
    ops().pv_f16(p.data(), rows.half.data(), stride, n, head_dim, whole.data());
    ops().pv_f32(p.data(), rows.full.data(), stride, n, head_dim, full32.data());
    for (int64_t j0 = 0; j0 < n; j0 += 10) {  // blocks of 10, 10, 10, 7
      const int64_t count = std::min<int64_t>(10, n - j0);
      ops().pv_f16(p.data() + j0, rows.half.data() + static_cast<size_t>(j0) * stride, stride, count, head_dim, split.data());
    }
    // The two-query kernels: p as either query, beside other probabilities.
    std::vector<float> p_other(p.size());
    for (float& x : p_other) x = prob(rng);
    std::vector<float> pair16(whole.size(), 0.0f), pair32 = pair16, other = pair16, twice = pair16;
    ops().pv2_f16(p_other.data(), p.data(), rows.half.data(), stride, n, head_dim, other.data(), pair16.data());
    ops().pv2_f32(p.data(), p_other.data(), rows.full.data(), stride, n, head_dim, pair32.data(), other.data());
    ops().pv_f32(p_other.data(), rows.full.data(), stride, n, head_dim, twice.data());  // `other` got p_other . V twice
    ops().pv_f32(p_other.data(), rows.full.data(), stride, n, head_dim, twice.data());
    EXPECT_EQ(std::memcmp(pair16.data(), whole.data(), whole.size() * sizeof(float)), 0) << "pv2_f16, head_dim " << head_dim;
    EXPECT_EQ(std::memcmp(pair32.data(), whole.data(), whole.size() * sizeof(float)), 0) << "pv2_f32, head_dim " << head_dim;
    EXPECT_EQ(std::memcmp(other.data(), twice.data(), whole.size() * sizeof(float)), 0) << "pv2's other query, head_dim " << head_dim;
    for (int64_t d = 0; d < head_dim; ++d) {
      double want = 0.0;
      for (int64_t j = 0; j < n; ++j) want += double(p[static_cast<size_t>(j)]) * rows.full[static_cast<size_t>(j) * stride + static_cast<size_t>(d)];
      const size_t i = static_cast<size_t>(d);
      EXPECT_NEAR(whole[i], want, 1e-5) << "d " << d;
      EXPECT_EQ(std::bit_cast<uint32_t>(whole[i]), std::bit_cast<uint32_t>(split[i])) << "blocks change d " << d;
      EXPECT_EQ(std::bit_cast<uint32_t>(whole[i]), std::bit_cast<uint32_t>(full32[i])) << "f16 vs f32 rows at d " << d;
    }
  }
}

TEST_P(OpsSimd, SoftmaxMatchesDoublePrecision) {
  std::mt19937 rng(23);
  std::normal_distribution<float> normal(0.0f, 8.0f);
  for (const int64_t n : kLengths) {
    for (const float softcap : {0.0f, 15.0f}) {
      for (const bool half : {false, true}) {
        std::vector<float> s(static_cast<size_t>(n));
        for (float& x : s) x = normal(rng);
        const std::vector<float> raw = s;
        const float scale = 0.37f;
        ops().softmax(s.data(), n, scale, softcap, half);
        std::vector<double> e(static_cast<size_t>(n));
        double max = -INFINITY, sum = 0.0;
        for (size_t j = 0; j < e.size(); ++j) {
          double x = double(raw[j] * scale);
          if (softcap > 0.0f) x = softcap * std::tanh(x / softcap);
          e[j] = x;
          max = std::max(max, x);
        }
        for (double& x : e) sum += (x = std::exp(x - max));
        for (size_t j = 0; j < e.size(); ++j) {
          const double want = e[j] / sum;
          // Float rounding of the inputs of exp (scaled scores up to ~30), and one f16 rounding.
          const double tol = half ? want * 1e-3 + 1e-7 : want * 1e-5 + 1e-9;
          EXPECT_NEAR(s[j], want, tol) << "n " << n << " j " << j << " softcap " << softcap << " half " << half;
          if (half) {
            EXPECT_EQ(s[j], fp16_to_fp32(fp32_to_fp16(s[j]))) << "not an f16 value";
          }
        }
      }
    }
  }
}

TEST_P(OpsSimd, RmsNormRowMatchesReference) {
  std::mt19937 rng(24);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (const int64_t n : kLengths) {
    std::vector<float> x(static_cast<size_t>(n)), w(static_cast<size_t>(n));
    for (float& v : x) v = normal(rng);
    for (float& v : w) v = normal(rng);
    for (const float* weight : {static_cast<const float*>(nullptr), static_cast<const float*>(w.data())}) {
      std::vector<float> got(static_cast<size_t>(n)), want(static_cast<size_t>(n));
      ops().rms_norm_row(x.data(), weight, 1e-5f, got.data(), n);
      ref::rms_norm_row(x.data(), weight, 1e-5f, want.data(), n);
      // Only the order of the double sum differs: at most one float rounding of the mean.
      for (size_t i = 0; i < got.size(); ++i) EXPECT_LE(ulp_distance(got[i], want[i]), 2) << "n " << n << " i " << i;
    }
  }
}

TEST_P(OpsSimd, GatedActivationsMatchReference) {
  std::mt19937 rng(25);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (const int64_t n : kLengths) {
    std::vector<float> g(static_cast<size_t>(n)), u(static_cast<size_t>(n));
    for (float& v : g) v = normal(rng);
    for (float& v : u) v = normal(rng);
    // The GELU clamps and the far tails of SiLU.
    const float edges[] = {-10.0f, 10.0f, -9.999f, 9.999f, -10.001f, 10.001f, -120.0f, 120.0f, -88.5f, 0.0f, -0.0f};
    for (size_t i = 0; i < std::size(edges) && i < g.size(); ++i) g[i] = edges[i];
    std::vector<float> silu(static_cast<size_t>(n)), gelu(static_cast<size_t>(n));
    ops().silu_mul(g.data(), u.data(), silu.data(), n);
    ops().gelu_mul(g.data(), u.data(), gelu.data(), n);
    for (size_t i = 0; i < g.size(); ++i) {
      const float want_silu = ref::silu(g[i]) * u[i];
      // exp within 2 ulp, then a divide and a multiply.
      EXPECT_TRUE(ulp_distance(silu[i], want_silu) <= 4 || std::fabs(silu[i] - want_silu) < 1e-30f)
          << "silu(" << g[i] << ") * " << u[i] << " = " << silu[i] << ", want " << want_silu;
      const float want_gelu = ref::gelu_tanh(g[i]) * u[i];
      EXPECT_EQ(std::bit_cast<uint32_t>(gelu[i]), std::bit_cast<uint32_t>(want_gelu))
          << "gelu(" << g[i] << ") * " << u[i] << " = " << gelu[i] << ", want " << want_gelu;
    }
  }
}

// Every f16 input of the GELU table path, bit for bit (the table is built from the reference).
TEST_P(OpsSimd, GeluAtEveryHalfIsTheReference) {
  std::vector<float> g, u;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float x = fp16_to_fp32(static_cast<uint16_t>(h));
    if (std::isnan(x)) continue;
    g.push_back(x);
    u.push_back(1.0f);
  }
  std::vector<float> y(g.size());
  ops().gelu_mul(g.data(), u.data(), y.data(), static_cast<int64_t>(g.size()));
  for (size_t i = 0; i < g.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint32_t>(y[i]), std::bit_cast<uint32_t>(ref::gelu_tanh(g[i]))) << "gelu(" << g[i] << ")";
  }
}

// CpuBackend's ops at this level, end to end, against the references.
TEST_P(OpsSimd, BackendOpsMatchReferences) {
  CpuBackend backend(3, GetParam());
  std::mt19937 rng(26);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const int64_t d = 75, rows = 13;
  Tensor x = backend.new_tensor(DType::F32, {d, rows, 1, 1});
  Tensor w = backend.new_tensor(DType::F32, {d, 1, 1, 1});
  Tensor y = backend.new_tensor(DType::F32, x.ne);
  auto* xs = static_cast<float*>(CpuBackend::host(x));
  auto* ws = static_cast<float*>(CpuBackend::host(w));
  const auto* ys = static_cast<const float*>(CpuBackend::host(y));
  for (int64_t i = 0; i < x.n_elements(); ++i) xs[i] = normal(rng);
  for (int64_t i = 0; i < d; ++i) ws[i] = normal(rng);
  backend.rms_norm(x, w, 1e-6f, y);
  std::vector<float> want(static_cast<size_t>(d));
  for (int64_t r = 0; r < rows; ++r) {
    ref::rms_norm_row(xs + r * d, ws, 1e-6f, want.data(), d);
    for (int64_t i = 0; i < d; ++i) EXPECT_LE(ulp_distance(ys[r * d + i], want[static_cast<size_t>(i)]), 2);
  }
  // glu over more elements than one parallel chunk, so the threads split it.
  const int64_t n = 3 * 4096 + 77;
  Tensor g = backend.new_tensor(DType::F32, {n, 1, 1, 1});
  Tensor u = backend.new_tensor(DType::F32, {n, 1, 1, 1});
  Tensor out = backend.new_tensor(DType::F32, {n, 1, 1, 1});
  auto* gs = static_cast<float*>(CpuBackend::host(g));
  auto* us = static_cast<float*>(CpuBackend::host(u));
  const auto* os = static_cast<const float*>(CpuBackend::host(out));
  for (int64_t i = 0; i < n; ++i) gs[i] = normal(rng) * 3.0f;
  for (int64_t i = 0; i < n; ++i) us[i] = normal(rng);
  backend.glu(g, u, Activation::GeluTanh, out);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(os[i], ref::gelu_tanh(gs[i]) * us[i]) << i;
  backend.glu(g, u, Activation::Silu, out);
  for (int64_t i = 0; i < n; ++i) ASSERT_LE(ulp_distance(os[i], ref::silu(gs[i]) * us[i]), 4) << i;
  // kv_store into an f16 cache: the bytes of fp32_to_fp16.
  const int64_t kv_dim = 37;
  KvLayer cache = backend.new_kv_layer(DType::F16, 2, 8, kv_dim);
  Tensor k = backend.new_tensor(DType::F32, {kv_dim, 3, 1, 1});
  Tensor v = backend.new_tensor(DType::F32, {kv_dim, 3, 1, 1});
  for (int64_t i = 0; i < k.n_elements(); ++i) static_cast<float*>(CpuBackend::host(k))[i] = normal(rng) * 1e-5f;  // subnormal halves too
  for (int64_t i = 0; i < v.n_elements(); ++i) static_cast<float*>(CpuBackend::host(v))[i] = normal(rng) * 3e4f;  // and infinities
  const std::vector<KvSlot> slots = {{1, 7}, {0, 0}, {1, 2}};
  backend.kv_store(cache, k, v, upload_slots(backend, slots));
  for (size_t t = 0; t < slots.size(); ++t) {
    const size_t row = (static_cast<size_t>(slots[t].seq) * 8 + static_cast<size_t>(slots[t].pos)) * kv_dim;
    for (int64_t i = 0; i < kv_dim; ++i) {
      const size_t src = t * kv_dim + static_cast<size_t>(i);
      ASSERT_EQ(static_cast<const uint16_t*>(CpuBackend::host(cache.k))[row + static_cast<size_t>(i)],
                fp32_to_fp16(static_cast<const float*>(CpuBackend::host(k))[src]));
      ASSERT_EQ(static_cast<const uint16_t*>(CpuBackend::host(cache.v))[row + static_cast<size_t>(i)],
                fp32_to_fp16(static_cast<const float*>(CpuBackend::host(v))[src]));
    }
  }
  // kv_store into a q8_0 cache: the bytes of ref::quantize_activations_q8_0, row by row (a row
  // of 96 values: three blocks), an all-zero row included.
  const int64_t q8_dim = 96;
  const size_t q8_row = dtype_row_bytes(DType::Q8_0, q8_dim);
  KvLayer q8 = backend.new_kv_layer(DType::Q8_0, 2, 8, q8_dim);
  Tensor kq = backend.new_tensor(DType::F32, {q8_dim, 3, 1, 1});
  Tensor vq = backend.new_tensor(DType::F32, {q8_dim, 3, 1, 1});
  for (int64_t i = 0; i < kq.n_elements(); ++i) static_cast<float*>(CpuBackend::host(kq))[i] = normal(rng);
  for (int64_t i = 0; i < vq.n_elements(); ++i) static_cast<float*>(CpuBackend::host(vq))[i] = i < q8_dim ? 0.0f : normal(rng) * 50.0f;
  backend.kv_store(q8, kq, vq, upload_slots(backend, slots));
  std::vector<uint8_t> want_row(q8_row);
  for (size_t t = 0; t < slots.size(); ++t) {
    const size_t row = static_cast<size_t>(slots[t].seq) * 8 + static_cast<size_t>(slots[t].pos);
    for (const auto& [cache_part, source] : {std::pair{&q8.k, &kq}, std::pair{&q8.v, &vq}}) {
      ref::quantize_activations_q8_0(static_cast<const float*>(CpuBackend::host(*source)) + t * q8_dim,
                                     reinterpret_cast<BlockQ8_0*>(want_row.data()), q8_dim);
      ASSERT_EQ(std::memcmp(static_cast<const uint8_t*>(CpuBackend::host(*cache_part)) + row * q8_row, want_row.data(), q8_row), 0)
          << "token " << t;
    }
  }
}

// Widening q8_0 blocks: exact, so the bits of ref::dequantize_row_q8_0 (scales of every
// magnitude, subnormal to the largest finite half, and q from -128 to 127).
TEST_P(OpsSimd, DequantizeQ8_0IsExact) {
  std::mt19937 rng(31);
  for (const int64_t blocks : {1, 2, 7}) {
    std::vector<BlockQ8_0> x(static_cast<size_t>(blocks));
    for (BlockQ8_0& b : x) {
      b.d = static_cast<uint16_t>(rng() & 0x7bffu);  // below infinity, either side of the subnormal boundary
      if (rng() & 1) b.d |= 0x8000u;
      for (int8_t& q : b.qs) q = static_cast<int8_t>(rng() & 0xffu);
    }
    std::vector<float> got(static_cast<size_t>(blocks * kQK8_0)), want(got.size());
    ops().dequantize_q8_0(x.data(), got.data(), blocks * kQK8_0);
    ref::dequantize_row_q8_0(x.data(), want.data(), blocks * kQK8_0);
    ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << blocks << " blocks";
  }
}

std::string level_name(const testing::TestParamInfo<CpuLevel>& level) { return std::string(cpu_level_name(level.param)); }
INSTANTIATE_TEST_SUITE_P(Levels, OpsSimd, testing::ValuesIn(kAllCpuLevels), level_name);

}  // namespace
}  // namespace hearth::kernels
