// The scalar reference quantizers against an independent implementation (gguf-py's numpy
// code, through fixtures written by scripts/reference/make_quant_fixtures.py), plus
// round-trip error bounds for every format hearth can quantize to.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/dtype.h"
#include "kernels/cpu/quants_ref.h"
#include "tests/support/fixtures.h"

namespace hearth::kernels::ref {
namespace {

struct QuantFixture {
  DType type;
  uint32_t n_elements = 0;
  std::vector<uint8_t> blocks;  // raw blocks (dequant input or quant output)
  std::vector<float> values;    // floats (dequant output or quant input)
};

// See the file format in make_quant_fixtures.py. `floats_first`: quant_ files store the
// float input before the blocks.
QuantFixture load(const std::string& file, bool floats_first) {
  const auto bytes = test::read_file_bytes(test::fixtures_dir() / "quants" / file);
  QuantFixture f;
  EXPECT_GE(bytes.size(), 16u);
  EXPECT_EQ(std::memcmp(bytes.data(), "HQF1", 4), 0);
  uint32_t header[3];
  std::memcpy(header, bytes.data() + 4, sizeof(header));
  f.type = static_cast<DType>(header[0]);
  f.n_elements = header[1];
  const uint32_t n_bytes = header[2];
  const size_t floats_bytes = size_t{f.n_elements} * sizeof(float);
  EXPECT_EQ(bytes.size(), 16 + floats_bytes + n_bytes) << file;
  const uint8_t* p = bytes.data() + 16;
  const uint8_t* blocks = floats_first ? p + floats_bytes : p;
  const uint8_t* floats = floats_first ? p : p + n_bytes;
  f.blocks.assign(blocks, blocks + n_bytes);
  f.values.resize(f.n_elements);
  std::memcpy(f.values.data(), floats, floats_bytes);
  return f;
}

class DequantizeVsGguf : public testing::TestWithParam<std::string> {};

TEST_P(DequantizeVsGguf, BitExact) {
  const QuantFixture f = load("dequant_" + GetParam() + ".bin", /*floats_first=*/false);
  ASSERT_EQ(dtype_name(f.type), GetParam());
  ASSERT_TRUE(can_dequantize(f.type));
  ASSERT_EQ(f.blocks.size(), dtype_row_bytes(f.type, f.n_elements));
  // Exactly-sized copies, so a read or write past the row is caught by AddressSanitizer.
  std::vector<uint8_t> src(f.blocks);
  std::vector<float> out(f.n_elements, std::nanf(""));
  dequantize_row(f.type, src.data(), out.data(), f.n_elements);
  int mismatches = 0;
  for (uint32_t i = 0; i < f.n_elements && mismatches < 10; ++i) {
    if (std::bit_cast<uint32_t>(out[i]) != std::bit_cast<uint32_t>(f.values[i])) {
      ADD_FAILURE() << GetParam() << " element " << i << " (block " << i / dtype_block_size(f.type)
                    << "): hearth " << out[i] << ", gguf " << f.values[i];
      ++mismatches;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, DequantizeVsGguf,
                         testing::Values("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K",
                                         "Q3_K", "Q4_K", "Q5_K", "Q6_K"),
                         [](const auto& param_info) { return param_info.param; });

class QuantizeVsGguf : public testing::TestWithParam<std::string> {};

TEST_P(QuantizeVsGguf, ByteExact) {
  const QuantFixture f = load("quant_" + GetParam() + ".bin", /*floats_first=*/true);
  ASSERT_EQ(dtype_name(f.type), GetParam());
  ASSERT_TRUE(can_quantize(f.type));
  std::vector<uint8_t> out(dtype_row_bytes(f.type, f.n_elements), 0xAA);
  ASSERT_EQ(out.size(), f.blocks.size());
  quantize_row(f.type, f.values.data(), out.data(), f.n_elements);
  const size_t block_bytes = dtype_block_bytes(f.type);
  int mismatches = 0;
  for (size_t i = 0; i < out.size() && mismatches < 10; ++i) {
    if (out[i] != f.blocks[i]) {
      ADD_FAILURE() << GetParam() << " byte " << i << " (block " << i / block_bytes << ", byte "
                    << i % block_bytes << "): hearth " << int(out[i]) << ", gguf " << int(f.blocks[i]);
      ++mismatches;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, QuantizeVsGguf,
                         testing::Values("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"),
                         [](const auto& param_info) { return param_info.param; });

// ---------------------------------------------------------------------------------------------
// Round trips: quantize -> dequantize stays within each format's expected error.

double nmse(const std::vector<float>& ref, const std::vector<float>& got) {
  double err = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = double(ref[i]) - double(got[i]);
    err += d * d;
    norm += double(ref[i]) * double(ref[i]);
  }
  return norm > 0 ? err / norm : err;
}

struct RoundTripCase {
  DType type;
  double max_nmse;            // on Gaussian data
  double max_error_per_step;  // |x - x'| <= this * (block's quantization step)
};

class RoundTrip : public testing::TestWithParam<RoundTripCase> {};

// Largest |x| in each block, to bound the per-element error by the block's step size.
std::vector<float> block_amax(const std::vector<float>& x, int64_t block) {
  std::vector<float> out(x.size() / static_cast<size_t>(block));
  for (size_t b = 0; b < out.size(); ++b) {
    for (int64_t j = 0; j < block; ++j) out[b] = std::max(out[b], std::fabs(x[b * static_cast<size_t>(block) + static_cast<size_t>(j)]));
  }
  return out;
}

TEST_P(RoundTrip, WithinFormatError) {
  const RoundTripCase c = GetParam();
  const int64_t block = dtype_block_size(c.type);
  std::mt19937 rng(1234);
  for (int64_t blocks : {1, 3, 17}) {
    for (float scale : {1e-3f, 1.0f, 300.0f}) {
      const int64_t n = blocks * std::max<int64_t>(block, 32);
      std::vector<float> x(static_cast<size_t>(n));
      std::normal_distribution<float> normal(0.0f, scale);
      for (float& v : x) v = normal(rng);
      std::vector<uint8_t> q(dtype_row_bytes(c.type, n));
      std::vector<float> y(static_cast<size_t>(n));
      quantize_row(c.type, x.data(), q.data(), n);
      dequantize_row(c.type, q.data(), y.data(), n);
      // NMSE is a statistic: judged on the longest rows only, where it is stable.
      if (blocks == 17) {
        const double e = nmse(x, y);
        EXPECT_LE(e, c.max_nmse) << dtype_name(c.type) << " n=" << n << " scale=" << scale;
      }
      // Per element: the error is a fraction of the block's step (range / levels), plus the
      // relative rounding of the f16 scale.
      if (c.max_error_per_step > 0) {
        const auto amax = block_amax(x, block);
        for (size_t i = 0; i < x.size(); ++i) {
          const double step = 2.0 * amax[i / static_cast<size_t>(block)];
          ASSERT_LE(std::fabs(double(x[i]) - double(y[i])), c.max_error_per_step * step + 1e-30)
              << dtype_name(c.type) << " element " << i << " x=" << x[i] << " y=" << y[i];
        }
      }
    }
  }
}

// NMSE bounds are ~1.4x what Gaussian data gives (measured); a kernel that doubles the error
// fails. Steps: Q4_0 spans [-amax, amax] in 16 levels (step 2*amax/15 at worst, error <= step/2 plus
// f16 scale rounding); Q8 in 255 levels; Q4_1 / Q5_1 use the min..max range.
INSTANTIATE_TEST_SUITE_P(
    Formats, RoundTrip,
    testing::Values(RoundTripCase{DType::Q4_0, 1.2e-2, 0.5 / 7.5},
                    RoundTripCase{DType::Q4_1, 9.0e-3, 0.5 / 15 + 1e-3},
                    RoundTripCase{DType::Q5_0, 3.0e-3, 0.5 / 15.5},
                    RoundTripCase{DType::Q5_1, 2.5e-3, 0.5 / 31 + 1e-3},
                    RoundTripCase{DType::Q8_0, 5.0e-5, 0.5 / 127 + 2e-3},
                    RoundTripCase{DType::Q8_K, 7.0e-5, 0.5 / 127 + 1e-6},
                    RoundTripCase{DType::F16, 6.0e-8, 0.0},
                    RoundTripCase{DType::BF16, 4.0e-6, 0.0}),
    [](const auto& param_info) { return std::string(dtype_name(param_info.param.type)); });

TEST(QuantizeQ8K, BlockSumsMatchQuants) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> x(512);
  for (float& v : x) v = normal(rng);
  std::vector<BlockQ8_K> q(2);
  quantize_row_q8_K(x.data(), q.data(), 512);
  for (const BlockQ8_K& b : q) {
    int amax = 0;
    for (int g = 0; g < kQK_K / 16; ++g) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) {
        sum += b.qs[16 * g + l];
        amax = std::max(amax, std::abs(int(b.qs[16 * g + l])));
      }
      EXPECT_EQ(b.bsums[g], sum);
    }
    EXPECT_EQ(amax, 127);  // the largest magnitude uses the full range
  }
}

TEST(QuantizeZeros, EveryFormatGivesExactZeros) {
  for (DType type : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q8_K}) {
    const int64_t n = 256;
    std::vector<float> x(n, 0.0f), y(n, 1.0f);
    std::vector<uint8_t> q(dtype_row_bytes(type, n));
    quantize_row(type, x.data(), q.data(), n);
    dequantize_row(type, q.data(), y.data(), n);
    for (float v : y) ASSERT_EQ(v, 0.0f) << dtype_name(type);
  }
}

TEST(Capabilities, ReferenceCoversTheIssueList) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1,
                  DType::Q8_0, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_K}) {
    EXPECT_TRUE(can_dequantize(t)) << dtype_name(t);
  }
  EXPECT_FALSE(can_dequantize(DType::IQ2_XXS));
  EXPECT_FALSE(can_quantize(DType::IQ2_XXS));
  for (DType t : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    EXPECT_TRUE(can_quantize(t)) << dtype_name(t);
  }
}

// ---------------------------------------------------------------------------------------------
// K-quant weight quantizers. There is no independent quantizer to compare bytes with (hearth's
// scale search is its own), so the dequantizer — bit-exact with gguf-py above — is the oracle:
// quantize -> dequantize must stay within each format's error on random rows, hold exact what
// the format can hold exactly, and every packing mistake must show as a failed bound (the
// mutation tests below apply plausible packing bugs to correct output and check the bounds
// catch each one).

struct KQuantCase {
  DType type;
  double max_nmse;                // Gaussian rows of 4 096 values
  double max_outlier_block_nmse;  // the rest of a block that holds a 200-sigma outlier
};

// Measured NMSE on the Gaussian rows of KQuantRoundTrip (the same at every scale: the formats are
// scale free but for f16 subnormals): Q2_K 0.0687, Q3_K 0.0204, Q4_K 0.00516, Q5_K 0.00127,
// Q6_K 0.000291 (0.000318 at std 1e-3, where Q6_K's d is an f16 subnormal). Bounds allow ~1.3x,
// so a quantizer that loses a quarter of its accuracy fails. Beside a 200-sigma outlier, the
// rest of its block measured Q2_K 0.936 (4-bit sub-block scales cannot go below d = outlier /
// 15: the neighbours are flattened, no worse than zeros), Q3_K 0.280, Q4_K 0.149, Q5_K 0.141,
// Q6_K 0.0669.
const KQuantCase kKQuantCases[] = {
    {DType::Q2_K, 0.089, 1.0},    {DType::Q3_K, 0.027, 0.35},   {DType::Q4_K, 0.0068, 0.19},
    {DType::Q5_K, 0.0017, 0.18},  {DType::Q6_K, 0.00042, 0.085},
};

std::vector<float> gaussian_row(int64_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = normal(rng);
  return x;
}

std::vector<uint8_t> quantized(DType type, const std::vector<float>& x) {
  std::vector<uint8_t> q(dtype_row_bytes(type, static_cast<int64_t>(x.size())));
  quantize_row(type, x.data(), q.data(), static_cast<int64_t>(x.size()));
  return q;
}

std::vector<float> dequantized(DType type, const std::vector<uint8_t>& q, size_t n) {
  std::vector<float> y(n);
  dequantize_row(type, q.data(), y.data(), static_cast<int64_t>(n));
  return y;
}

class KQuantRoundTrip : public testing::TestWithParam<KQuantCase> {};

TEST_P(KQuantRoundTrip, GaussianRowsWithinBound) {
  const KQuantCase c = GetParam();
  for (float scale : {1e-3f, 0.02f, 1.0f, 300.0f}) {
    const std::vector<float> x = gaussian_row(16 * kQK_K, scale, 77);
    const std::vector<float> y = dequantized(c.type, quantized(c.type, x), x.size());
    const double e = nmse(x, y);
    EXPECT_LE(e, c.max_nmse) << dtype_name(c.type) << " scale " << scale;
    RecordProperty(fmt::format("nmse_{}", scale), fmt::format("{:.3g}", e));
  }
  // A short row (one block) and a row of mixed magnitudes (blocks 1000x apart): blocks are
  // independent.
  std::vector<float> x = gaussian_row(4 * kQK_K, 1.0f, 3);
  for (size_t i = kQK_K; i < 2 * kQK_K; ++i) x[i] *= 1e-3f;
  for (size_t i = 2 * kQK_K; i < 3 * kQK_K; ++i) x[i] *= 1e3f;
  const std::vector<float> y = dequantized(c.type, quantized(c.type, x), x.size());
  for (int b = 0; b < 4; ++b) {
    const std::vector<float> xb(x.begin() + b * kQK_K, x.begin() + (b + 1) * kQK_K);
    const std::vector<float> yb(y.begin() + b * kQK_K, y.begin() + (b + 1) * kQK_K);
    EXPECT_LE(nmse(xb, yb), 1.5 * c.max_nmse) << dtype_name(c.type) << " block " << b;
  }
}

TEST_P(KQuantRoundTrip, EdgeRows) {
  const DType type = GetParam().type;
  const int64_t n = 2 * kQK_K;
  const auto round_trip = [&](const std::vector<float>& x) { return dequantized(type, quantized(type, x), x.size()); };
  // All zeros: exact zeros.
  for (float v : round_trip(std::vector<float>(n, 0.0f))) ASSERT_EQ(v, 0.0f) << dtype_name(type);
  // Constant rows, either sign: every format holds a constant up to the f16 rounding of its scales
  // (at magnitudes where the super-block scale is a normal f16: a constant of 2e-3 puts Q6_K's d
  // = 2e-3 / 32 / 127 among the subnormals, whose few bits cost a few percent in any quantizer).
  for (float c : {0.37f, -0.37f, 1e4f, -25.0f}) {
    for (float v : round_trip(std::vector<float>(n, c))) {
      ASSERT_NEAR(v, c, std::fabs(c) * 2e-3) << dtype_name(type) << " constant " << c;
    }
  }
  // Negative-only and positive-only rows (the minimum of Q2_K / Q4_K / Q5_K is not clamped away).
  for (float sign : {-1.0f, 1.0f}) {
    std::vector<float> x = gaussian_row(n, 1.0f, 9);
    for (float& v : x) v = sign * (std::fabs(v) + 0.5f);
    EXPECT_LE(nmse(x, round_trip(x)), GetParam().max_nmse) << dtype_name(type) << " sign " << sign;
  }
  // One large outlier (200 sigma) in the second block: it survives within a few percent; the
  // first block does not notice; the outlier's own block pays, since its other sub-block scales
  // are quantized against the outlier's (the format's cost, not the search's).
  std::vector<float> x = gaussian_row(n, 1.0f, 10);
  x[300] = 200.0f;
  const std::vector<float> y = round_trip(x);
  EXPECT_NEAR(y[300], 200.0f, 200.0f * 0.01f) << dtype_name(type);
  const std::vector<float> first_x(x.begin(), x.begin() + kQK_K), first_y(y.begin(), y.begin() + kQK_K);
  EXPECT_LE(nmse(first_x, first_y), 1.5 * GetParam().max_nmse) << dtype_name(type) << " the block without the outlier";
  std::vector<float> rest_x(x.begin() + kQK_K, x.end()), rest_y(y.begin() + kQK_K, y.end());
  rest_x[300 - kQK_K] = rest_y[300 - kQK_K] = 0.0f;
  const double neighbours = nmse(rest_x, rest_y);
  EXPECT_LE(neighbours, GetParam().max_outlier_block_nmse) << dtype_name(type) << " the outlier's neighbours";
  RecordProperty("outlier_block_nmse", fmt::format("{:.3g}", neighbours));
}

INSTANTIATE_TEST_SUITE_P(Formats, KQuantRoundTrip, testing::ValuesIn(kKQuantCases),
                         [](const auto& param_info) { return std::string(dtype_name(param_info.param.type)); });

// A packing bug in a quantizer writes the bytes of a correct quantization rearranged. Each
// mutation below rearranges correct bytes the way one plausible bug would, and the round-trip
// bound of KQuantRoundTrip must then fail with a margin (>= 2x): that bound is what catches it.
struct Mutation {
  DType type;
  const char* bug;
  void (*apply)(uint8_t* block);
};

template <class Block>
Block& as(uint8_t* p) {
  return *reinterpret_cast<Block*>(p);
}

uint8_t swap_nibbles(uint8_t b) { return static_cast<uint8_t>((b >> 4) | (b << 4)); }
uint8_t reverse_pairs(uint8_t b) {  // the four 2-bit fields of a byte in reverse order
  return static_cast<uint8_t>(((b & 3) << 6) | ((b & 0xC) << 2) | ((b & 0x30) >> 2) | (b >> 6));
}

const Mutation kMutations[] = {
    {DType::Q4_K, "high bits of scales/mins 4..7 not packed",
     [](uint8_t* p) {
       for (int j = 0; j < 8; ++j) as<BlockQ4_K>(p).scales[j] &= 63;
     }},
    {DType::Q4_K, "sub-blocks 2p and 2p+1 in the wrong nibbles",
     [](uint8_t* p) {
       for (uint8_t& b : as<BlockQ4_K>(p).qs) b = swap_nibbles(b);
     }},
    {DType::Q4_K, "d and dmin swapped", [](uint8_t* p) { std::swap(as<BlockQ4_K>(p).d, as<BlockQ4_K>(p).dmin); }},
    {DType::Q5_K, "scale and min nibbles of sub-blocks 4..7 swapped",
     [](uint8_t* p) {
       for (int j = 8; j < 12; ++j) as<BlockQ5_K>(p).scales[j] = swap_nibbles(as<BlockQ5_K>(p).scales[j]);
     }},
    {DType::Q5_K, "fifth bits of sub-blocks 2p and 2p+1 swapped",
     [](uint8_t* p) {
       for (uint8_t& b : as<BlockQ5_K>(p).qh) b = static_cast<uint8_t>(((b & 0x55) << 1) | ((b & 0xAA) >> 1));
     }},
    {DType::Q5_K, "fifth bit dropped", [](uint8_t* p) { std::memset(as<BlockQ5_K>(p).qh, 0, kQK_K / 8); }},
    {DType::Q6_K, "two high bits of the four quarters in reverse order",
     [](uint8_t* p) {
       for (uint8_t& b : as<BlockQ6_K>(p).qh) b = reverse_pairs(b);
     }},
    {DType::Q6_K, "low nibbles of quarters 0/1 and 2/3 exchanged",
     [](uint8_t* p) {
       for (uint8_t& b : as<BlockQ6_K>(p).ql) b = swap_nibbles(b);
     }},
    {DType::Q6_K, "sub-block scales in reverse order",
     [](uint8_t* p) { std::reverse(as<BlockQ6_K>(p).scales, as<BlockQ6_K>(p).scales + 16); }},
    {DType::Q3_K, "hmask bit with the opposite meaning",
     [](uint8_t* p) {
       for (uint8_t& b : as<BlockQ3_K>(p).hmask) b = static_cast<uint8_t>(~b);
     }},
    {DType::Q3_K, "scale high bits in the wrong byte",
     [](uint8_t* p) {
       std::rotate(as<BlockQ3_K>(p).scales + 8, as<BlockQ3_K>(p).scales + 9, as<BlockQ3_K>(p).scales + 12);
     }},
    {DType::Q3_K, "scale low nibbles of sub-blocks i and i+8 swapped",
     [](uint8_t* p) {
       for (int j = 0; j < 8; ++j) as<BlockQ3_K>(p).scales[j] = swap_nibbles(as<BlockQ3_K>(p).scales[j]);
     }},
    {DType::Q2_K, "scale and min nibbles swapped",
     [](uint8_t* p) {
       for (uint8_t& b : as<BlockQ2_K>(p).scales) b = swap_nibbles(b);
     }},
    {DType::Q2_K, "2-bit fields in reverse order",
     [](uint8_t* p) {
       for (uint8_t& b : as<BlockQ2_K>(p).qs) b = reverse_pairs(b);
     }},
};

class KQuantMutation : public testing::TestWithParam<Mutation> {};

TEST_P(KQuantMutation, FailsTheRoundTripBound) {
  const Mutation m = GetParam();
  double bound = 0;
  for (const KQuantCase& c : kKQuantCases) {
    if (c.type == m.type) bound = c.max_nmse;
  }
  const std::vector<float> x = gaussian_row(16 * kQK_K, 0.02f, 77);
  std::vector<uint8_t> q = quantized(m.type, x);
  EXPECT_LE(nmse(x, dequantized(m.type, q, x.size())), bound);
  const size_t block_bytes = dtype_block_bytes(m.type);
  for (size_t off = 0; off < q.size(); off += block_bytes) m.apply(q.data() + off);
  const double e = nmse(x, dequantized(m.type, q, x.size()));
  EXPECT_GE(e, 2 * bound) << dtype_name(m.type) << ": " << m.bug;
  RecordProperty("nmse", fmt::format("{:.3g}", e));
}

INSTANTIATE_TEST_SUITE_P(PackingBugs, KQuantMutation, testing::ValuesIn(kMutations), [](const auto& param_info) {
  std::string name = fmt::format("{}_{}", dtype_name(param_info.param.type), param_info.index);
  return name;
});

}  // namespace
}  // namespace hearth::kernels::ref
