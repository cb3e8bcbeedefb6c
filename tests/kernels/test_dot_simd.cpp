// The SIMD dot products and activation quantizers (kernels/cpu/dot.h at each CPU level) against
// the scalar references: dots within a rounding tolerance, quantizers byte for byte, the
// several-rows kernels (with and without pre-widened activation scales) bit-identical to the
// one-row ones, and CpuBackend::matmul end to end.
// Levels this CPU lacks are skipped, so the suite runs (and passes) on any machine.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/fp16.h"
#include "core/quant_blocks.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/dot_ref.h"
#include "kernels/cpu/quants_ref.h"

namespace hearth::kernels {
namespace {

constexpr DType kWeightTypes[] = {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1,
                                  DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K,
                                  DType::F16,  DType::BF16, DType::F32};
constexpr int kBlockCounts[] = {1, 2, 3, 7, 17, 33};

bool level_supported(CpuLevel level) { return cpu_level_supported(level); }

// Byte offsets of the f16 scale fields of each block (as scripts/reference/make_quant_fixtures.py):
// these get sane scales; every other byte is uniformly random.
std::vector<size_t> f16_fields(DType t) {
  switch (t) {
    case DType::Q4_0: case DType::Q5_0: case DType::Q8_0: return {0};
    case DType::Q4_1: case DType::Q5_1: case DType::Q4_K: case DType::Q5_K: return {0, 2};
    case DType::Q2_K: return {80, 82};
    case DType::Q3_K: return {108};
    case DType::Q6_K: return {208};
    default: return {};
  }
}

// n elements of `t`: a multiple of the block size; plain types get odd lengths (SIMD tails).
int64_t row_length(DType t, int blocks) {
  const int64_t bs = dtype_block_size(t);
  return bs == 1 ? 32 * blocks + blocks % 5 : bs * blocks;
}

std::vector<uint8_t> random_weights(DType t, int64_t n, std::mt19937& rng) {
  std::vector<uint8_t> row(dtype_row_bytes(t, n));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  if (t == DType::F32) {
    for (int64_t i = 0; i < n; ++i) {
      const float v = normal(rng);
      std::memcpy(row.data() + 4 * i, &v, 4);
    }
    return row;
  }
  if (t == DType::F16 || t == DType::BF16) {
    for (int64_t i = 0; i < n; ++i) {
      const float v = normal(rng);
      const uint16_t h = t == DType::F16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
      std::memcpy(row.data() + 2 * i, &h, 2);
    }
    return row;
  }
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : row) b = static_cast<uint8_t>(byte(rng));
  std::normal_distribution<float> scale(0.0f, 0.05f);
  const size_t block_bytes = dtype_block_bytes(t);
  for (size_t b = 0; b < row.size() / block_bytes; ++b) {
    for (size_t off : f16_fields(t)) {
      const uint16_t h = fp32_to_fp16(b == 0 && off == 0 ? 1.5f : scale(rng));
      std::memcpy(row.data() + b * block_bytes + off, &h, 2);
    }
  }
  return row;
}

std::vector<float> random_activations(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = normal(rng);
  return x;
}

// A copy of `bytes` starting `offset` bytes into a fresh buffer (misaligned for offset 1..3).
struct Misaligned {
  std::vector<uint8_t> storage;
  size_t offset;
  Misaligned(const std::vector<uint8_t>& bytes, size_t off) : storage(bytes.size() + off + 1), offset(off) {
    std::memcpy(storage.data() + offset, bytes.data(), bytes.size());
  }
  const void* data() const { return storage.data() + offset; }
};

// sum_i |w_i x_i| over the dequantized rows: the scale of the rounding differences.
double abs_product_sum(DType wt, const void* w, DType xt, const void* x, int64_t n) {
  std::vector<float> wf(static_cast<size_t>(n)), xf(static_cast<size_t>(n));
  ref::dequantize_row(wt, w, wf.data(), n);
  ref::dequantize_row(xt, x, xf.data(), n);
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += std::fabs(static_cast<double>(wf[i]) * static_cast<double>(xf[i]));
  return s;
}

class DotSimd : public ::testing::TestWithParam<std::tuple<CpuLevel, DType>> {
 protected:
  void SetUp() override {
    if (!level_supported(level())) GTEST_SKIP() << "CPU lacks " << cpu_level_name(level());
  }
  CpuLevel level() const { return std::get<0>(GetParam()); }
  DType type() const { return std::get<1>(GetParam()); }
};

TEST_P(DotSimd, VecDotMatchesReference) {
  const DotKernel& kernel = dot_kernel(type(), level());
  ASSERT_NE(kernel.vec_dot, nullptr);
  ASSERT_EQ(kernel.vec_dot_type, ref::vec_dot_type(type()));
  std::mt19937 rng(1234 + static_cast<unsigned>(type()));
  for (int blocks : kBlockCounts) {
    const int64_t n = row_length(type(), blocks);
    for (size_t offset = 0; offset < 4; ++offset) {
      const std::vector<uint8_t> w = random_weights(type(), n, rng);
      const std::vector<float> xf = random_activations(n, rng);
      std::vector<uint8_t> xq(dtype_row_bytes(kernel.vec_dot_type, n));
      ref::quantize_activations(kernel.vec_dot_type, xf.data(), xq.data(), n);
      // The scalar references read through block pointers, so they get aligned rows (as model
      // files give); the SIMD kernels must cope with any address.
      const size_t w_off = kernel.simd_dot ? offset : 0, x_off = kernel.simd_dot ? 3 - offset : 0;
      const Misaligned wm(w, w_off), xm(xq, x_off);
      const float want = ref::vec_dot(type(), n, w.data(), xq.data());  // aligned copies
      const float got = kernel.vec_dot(n, wm.data(), xm.data());
      const double tol = 1e-5 * abs_product_sum(type(), w.data(), kernel.vec_dot_type, xq.data(), n) + 1e-6;
      EXPECT_NEAR(got, want, tol) << dtype_name(type()) << " n=" << n << " offset=" << offset;
    }
  }
}

TEST_P(DotSimd, RowsKernelEqualsOneRowKernel) {
  const DotKernel& kernel = dot_kernel(type(), level());
  if (kernel.vec_dot_rows == nullptr) GTEST_SKIP() << "no several-rows kernel";
  std::mt19937 rng(99 + static_cast<unsigned>(type()));
  for (int blocks : kBlockCounts) {
    const int64_t n = row_length(type(), blocks);
    const std::vector<uint8_t> w = random_weights(type(), n, rng);
    const size_t stride = dtype_row_bytes(kernel.vec_dot_type, n) + 5;  // odd stride: misaligned rows
    std::vector<uint8_t> xq(stride * kDotRows + 1);
    for (int r = 0; r < kDotRows; ++r) {
      const std::vector<float> xf = random_activations(n, rng);
      std::vector<uint8_t> row(stride - 5);
      ref::quantize_activations(kernel.vec_dot_type, xf.data(), row.data(), n);
      std::memcpy(xq.data() + 1 + r * stride, row.data(), row.size());
    }
    const Misaligned wm(w, 2);
    float out[kDotRows];
    kernel.vec_dot_rows(n, wm.data(), xq.data() + 1, stride, out);
    for (int r = 0; r < kDotRows; ++r) {
      // Same arithmetic, so the same bits: a token's logits do not depend on batching.
      EXPECT_EQ(out[r], kernel.vec_dot(n, wm.data(), xq.data() + 1 + r * stride)) << "row " << r << " n=" << n;
    }
  }
}

// The four-row kernel with pre-widened activation scales: bit-identical to the one-row kernel
// (and so to the plain four-row kernel), scales laid out block major as matmul_rows does.
TEST_P(DotSimd, ScaledRowsKernelEqualsOneRowKernel) {
  const DotKernel& kernel = dot_kernel(type(), level());
  if (kernel.vec_dot_rows_scaled == nullptr) GTEST_SKIP() << "no scaled several-rows kernel";
  ASSERT_TRUE(kernel.vec_dot_type == DType::Q8_0 || kernel.vec_dot_type == DType::Q8_1);
  const bool q8_1 = kernel.vec_dot_type == DType::Q8_1;
  std::mt19937 rng(199 + static_cast<unsigned>(type()));
  for (int blocks : kBlockCounts) {
    const int64_t n = row_length(type(), blocks);
    const std::vector<uint8_t> w = random_weights(type(), n, rng);
    const size_t stride = dtype_row_bytes(kernel.vec_dot_type, n) + 3;
    std::vector<uint8_t> xq(stride * kDotRows + 1);
    std::vector<float> xd(static_cast<size_t>(blocks) * kDotRows), xs(xd.size());
    for (int r = 0; r < kDotRows; ++r) {
      const std::vector<float> xf = random_activations(n, rng);
      std::vector<uint8_t> row(stride - 3);
      ref::quantize_activations(kernel.vec_dot_type, xf.data(), row.data(), n);
      std::memcpy(xq.data() + 1 + r * stride, row.data(), row.size());
      const size_t block_bytes = q8_1 ? sizeof(BlockQ8_1) : sizeof(BlockQ8_0);
      for (int b = 0; b < blocks; ++b) {
        uint16_t d, sum;
        std::memcpy(&d, row.data() + b * block_bytes + (q8_1 ? offsetof(BlockQ8_1, d) : offsetof(BlockQ8_0, d)), 2);
        xd[static_cast<size_t>(b * kDotRows + r)] = fp16_to_fp32(d);
        if (q8_1) {
          std::memcpy(&sum, row.data() + b * block_bytes + offsetof(BlockQ8_1, s), 2);
          xs[static_cast<size_t>(b * kDotRows + r)] = fp16_to_fp32(sum);
        }
      }
    }
    const Misaligned wm(w, 1);
    float out[kDotRows];
    kernel.vec_dot_rows_scaled(n, wm.data(), xq.data() + 1, stride, xd.data(), q8_1 ? xs.data() : nullptr, out);
    for (int r = 0; r < kDotRows; ++r) {
      EXPECT_EQ(out[r], kernel.vec_dot(n, wm.data(), xq.data() + 1 + r * stride)) << "row " << r << " n=" << n;
    }
  }
}

TEST_P(DotSimd, MatmulMatchesDoublePrecision) {
  const DType wt = type();
  const int64_t k = row_length(wt, 3), m = 7, n = 6;  // 6 tokens: a group of 4 and 2 single
  std::mt19937 rng(7 + static_cast<unsigned>(wt));
  std::vector<uint8_t> w;
  for (int64_t r = 0; r < m; ++r) {
    const std::vector<uint8_t> row = random_weights(wt, k, rng);
    w.insert(w.end(), row.begin(), row.end());
  }
  const std::vector<float> x = random_activations(k * n, rng);
  CpuBackend backend(2, level());
  Tensor wt_t = backend.weight(wt, {k, m, 1, 1}, w.data(), nullptr);
  Tensor xt = backend.new_tensor(DType::F32, {k, n, 1, 1});
  backend.write(xt, x.data(), x.size() * sizeof(float));
  Tensor yt = backend.new_tensor(DType::F32, {m, n, 1, 1});
  backend.matmul(wt_t, xt, yt);
  std::vector<float> y(static_cast<size_t>(m * n));
  backend.read(yt, y.data(), y.size() * sizeof(float));

  const DType xq_type = ref::vec_dot_type(wt);
  const size_t w_row = dtype_row_bytes(wt, k), xq_row = dtype_row_bytes(xq_type, k);
  std::vector<float> wf(static_cast<size_t>(k)), xf(static_cast<size_t>(k));
  std::vector<uint8_t> xq(xq_row);
  for (int64_t t = 0; t < n; ++t) {
    ref::quantize_activations(xq_type, x.data() + t * k, xq.data(), k);
    ref::dequantize_row(xq_type, xq.data(), xf.data(), k);
    for (int64_t r = 0; r < m; ++r) {
      ref::dequantize_row(wt, w.data() + static_cast<size_t>(r) * w_row, wf.data(), k);
      double want = 0.0, scale = 0.0;
      for (int64_t i = 0; i < k; ++i) {
        want += static_cast<double>(wf[i]) * static_cast<double>(xf[i]);
        scale += std::fabs(static_cast<double>(wf[i]) * static_cast<double>(xf[i]));
      }
      // Looser than the kernel comparison: Q8_1's block sums are stored as f16 (relative error
      // 2^-11 of the minimum's term), which the exact dequantized product does not see.
      EXPECT_NEAR(y[static_cast<size_t>(t * m + r)], want, 2e-3 * scale + 1e-5) << "token " << t << " row " << r;
    }
  }
}

// A token's products do not depend on its company: matmul of n tokens (groups of four, a padded
// group for two or three leftovers, single rows) gives each token the bits it gets alone — what
// makes continuous batching deterministic.
TEST_P(DotSimd, MatmulGivesEachTokenTheSameBitsInAnyBatch) {
  const DType wt = type();
  const int64_t k = row_length(wt, 2), m = 5;
  std::mt19937 rng(11 + static_cast<unsigned>(wt));
  std::vector<uint8_t> w;
  for (int64_t r = 0; r < m; ++r) {
    const std::vector<uint8_t> row = random_weights(wt, k, rng);
    w.insert(w.end(), row.begin(), row.end());
  }
  CpuBackend backend(2, level());
  Tensor wt_t = backend.weight(wt, {k, m, 1, 1}, w.data(), nullptr);
  const int64_t max_n = 7;
  const std::vector<float> x = random_activations(k * max_n, rng);
  auto run = [&](int64_t first, int64_t n) {
    Tensor xt = backend.new_tensor(DType::F32, {k, n, 1, 1});
    backend.write(xt, x.data() + first * k, static_cast<size_t>(n * k) * sizeof(float));
    Tensor yt = backend.new_tensor(DType::F32, {m, n, 1, 1});
    backend.matmul(wt_t, xt, yt);
    std::vector<float> y(static_cast<size_t>(m * n));
    backend.read(yt, y.data(), y.size() * sizeof(float));
    return y;
  };
  for (int64_t n = 1; n <= max_n; ++n) {
    const std::vector<float> together = run(0, n);
    for (int64_t t = 0; t < n; ++t) {
      const std::vector<float> alone = run(t, 1);
      for (int64_t r = 0; r < m; ++r) {
        EXPECT_EQ(together[static_cast<size_t>(t * m + r)], alone[static_cast<size_t>(r)]) << "n=" << n << " token " << t << " row " << r;
      }
    }
  }
}

std::string dot_name(const ::testing::TestParamInfo<std::tuple<CpuLevel, DType>>& info) {
  return std::string(cpu_level_name(std::get<0>(info.param))) + "_" + std::string(dtype_name(std::get<1>(info.param)));
}

INSTANTIATE_TEST_SUITE_P(Levels, DotSimd, ::testing::Combine(::testing::ValuesIn(kAllCpuLevels), ::testing::ValuesIn(kWeightTypes)),
                         dot_name);

// --- activation quantizers -------------------------------------------------------------------

class QuantizeSimd : public ::testing::TestWithParam<std::tuple<CpuLevel, DType>> {};

TEST_P(QuantizeSimd, ByteIdenticalToReference) {
  const auto [level, weight] = GetParam();
  if (!level_supported(level)) GTEST_SKIP() << "CPU lacks " << cpu_level_name(level);
  const DotKernel& kernel = dot_kernel(weight, level);
  const DType xt = kernel.vec_dot_type;
  std::mt19937 rng(555 + static_cast<unsigned>(xt));
  for (int blocks : kBlockCounts) {
    const int64_t n = dtype_block_size(xt) * blocks;
    std::vector<float> x = random_activations(n, rng);
    // Special blocks: all zero; exact ties (amax 127 -> scale 1, x.5 values round to even);
    // the largest magnitude negative and repeated with both signs.
    const int64_t bs = dtype_block_size(xt);
    if (blocks > 1) std::fill(x.begin() + bs, x.begin() + 2 * bs, 0.0f);
    if (blocks > 2) {
      for (int64_t i = 0; i < bs; ++i) x[2 * bs + i] = static_cast<float>(i % 40) - 19.5f;
      x[2 * bs + 3] = -127.0f;
      x[2 * bs + 7] = 127.0f;
    }
    if (blocks > 3) {
      x[3 * bs + 5] = 9.0f;
      x[3 * bs + 1] = -9.0f;
    }
    std::vector<uint8_t> want(dtype_row_bytes(xt, n));
    ref::quantize_activations(xt, x.data(), want.data(), n);
    for (size_t o = 1; o < 4; ++o) {
      std::vector<uint8_t> got(want.size() + 8, 0xAB);
      const size_t offset = kernel.simd_quantize ? o : 4;  // references write through block pointers
      kernel.quantize(x.data(), got.data() + offset, n);
      EXPECT_EQ(0, std::memcmp(got.data() + offset, want.data(), want.size()))
          << dtype_name(xt) << " blocks=" << blocks << " offset=" << offset;
      EXPECT_EQ(got[offset - 1], 0xAB);  // nothing written outside the row
      EXPECT_EQ(got[offset + want.size()], 0xAB);
    }
  }
}

std::string quant_name(const ::testing::TestParamInfo<std::tuple<CpuLevel, DType>>& info) {
  return std::string(cpu_level_name(std::get<0>(info.param))) + "_" +
         std::string(dtype_name(ref::vec_dot_type(std::get<1>(info.param))));
}

INSTANTIATE_TEST_SUITE_P(Levels, QuantizeSimd,
                         ::testing::Combine(::testing::ValuesIn(kAllCpuLevels),
                                            ::testing::Values(DType::Q8_0, DType::Q4_1, DType::Q4_K)),
                         quant_name);

// --- dispatch and detection ------------------------------------------------------------------

TEST(CpuFeatures, LevelNamesRoundTrip) {
  for (CpuLevel l : kAllCpuLevels) EXPECT_EQ(cpu_level_from_name(cpu_level_name(l)), l);
  EXPECT_FALSE(cpu_level_from_name("sse2").has_value());
  EXPECT_TRUE(cpu_level_supported(cpu_level()));
  EXPECT_TRUE(cpu_level_supported(cpu_supported_level()));
  EXPECT_FALSE(cpu_description().empty());
}

// Reports the level this process runs at (scripts/test-arm.sh prints it per emulated CPU) and,
// when HEARTH_EXPECT_CPU_LEVEL is set, checks it: detection must find what the CPU has.
TEST(CpuFeatures, ActiveLevelIsTheExpectedOne) {
  std::printf("[ cpu      ] kernels at %s\n", cpu_description().c_str());
  const char* expected = std::getenv("HEARTH_EXPECT_CPU_LEVEL");
  if (expected == nullptr || *expected == '\0') GTEST_SKIP() << "HEARTH_EXPECT_CPU_LEVEL not set";
  EXPECT_EQ(cpu_level_name(cpu_level()), std::string_view(expected)) << cpu_description();
}

// Levels are per architecture: the supported ones are Scalar up to cpu_supported_level() on
// this build's chain, and never a level of the other architecture.
TEST(CpuFeatures, SupportedLevelsFollowTheArchitecture) {
  EXPECT_TRUE(cpu_level_supported(CpuLevel::Scalar));
#if defined(__x86_64__)
  EXPECT_FALSE(cpu_level_supported(CpuLevel::Neon));
  EXPECT_FALSE(cpu_level_supported(CpuLevel::Dotprod));
  EXPECT_FALSE(cpu_level_supported(CpuLevel::I8mm));
  EXPECT_EQ(cpu_level_supported(CpuLevel::Avx2), cpu_supported_level() != CpuLevel::Scalar);
  EXPECT_EQ(cpu_level_supported(CpuLevel::Avx512), cpu_supported_level() == CpuLevel::Avx512);
#elif defined(__aarch64__)
  EXPECT_FALSE(cpu_level_supported(CpuLevel::Avx2));
  EXPECT_FALSE(cpu_level_supported(CpuLevel::Avx512));
  EXPECT_TRUE(cpu_level_supported(CpuLevel::Neon));  // Advanced SIMD is part of armv8-a
  EXPECT_EQ(cpu_level_supported(CpuLevel::Dotprod),
            cpu_supported_level() == CpuLevel::Dotprod || cpu_supported_level() == CpuLevel::I8mm);
  EXPECT_EQ(cpu_level_supported(CpuLevel::I8mm), cpu_supported_level() == CpuLevel::I8mm);
#endif
}

TEST(CpuFeatures, BackendRefusesUnsupportedLevel) {
  int refused = 0;
  for (CpuLevel l : kAllCpuLevels) {
    if (cpu_level_supported(l)) continue;
    EXPECT_THROW(CpuBackend(1, l), hearth::Error) << cpu_level_name(l);
    ++refused;
  }
  EXPECT_GE(refused, 2);  // at least the other architecture's levels
}

TEST(DotDispatch, SimdWhereExpected) {
  // The scalar level is the reference itself; the SIMD levels cover the common types.
  for (DType t : kWeightTypes) EXPECT_FALSE(dot_kernel(t, CpuLevel::Scalar).simd_dot);
#if defined(__x86_64__)
  const CpuLevel simd = CpuLevel::Avx2;
#elif defined(__aarch64__)
  const CpuLevel simd = CpuLevel::Neon;
#else
  GTEST_SKIP() << "no SIMD kernels for this architecture";
  const CpuLevel simd = CpuLevel::Scalar;
#endif
  if (!level_supported(simd)) GTEST_SKIP() << "no " << cpu_level_name(simd);
  for (CpuLevel l : kAllCpuLevels) {
    if (l == CpuLevel::Scalar || !level_supported(l)) continue;
    for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K,
                    DType::Q6_K}) {
      EXPECT_TRUE(dot_kernel(t, l).simd_dot) << cpu_level_name(l) << " " << dtype_name(t);
      EXPECT_TRUE(dot_kernel(t, l).simd_quantize) << cpu_level_name(l) << " " << dtype_name(t);
      EXPECT_NE(dot_kernel(t, l).vec_dot_rows, nullptr) << cpu_level_name(l) << " " << dtype_name(t);
    }
#if defined(__aarch64__)
    // The 2- and 3-bit k-quants have SIMD kernels on aarch64 only, so far.
    for (DType t : {DType::Q2_K, DType::Q3_K}) {
      EXPECT_TRUE(dot_kernel(t, l).simd_dot) << cpu_level_name(l) << " " << dtype_name(t);
      EXPECT_NE(dot_kernel(t, l).vec_dot_rows, nullptr) << cpu_level_name(l) << " " << dtype_name(t);
    }
#endif
  }
}

}  // namespace
}  // namespace hearth::kernels
