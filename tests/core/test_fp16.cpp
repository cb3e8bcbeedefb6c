#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>

#include "core/fp16.h"

namespace hearth {
namespace {

bool is_f16_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }

TEST(Fp16, EveryHalfRoundTripsExactly) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    const float f = fp16_to_fp32(bits);
    if (is_f16_nan(bits)) {
      EXPECT_TRUE(std::isnan(f)) << h;
      EXPECT_TRUE(is_f16_nan(fp32_to_fp16(f))) << h;
      continue;
    }
    ASSERT_EQ(fp32_to_fp16(f), bits) << "half 0x" << std::hex << h << " -> " << f;
  }
}

TEST(Fp16, KnownValues) {
  EXPECT_EQ(fp16_to_fp32(0x3c00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0xc000), -2.0f);
  EXPECT_EQ(fp16_to_fp32(0x7bff), 65504.0f);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(std::bit_cast<uint32_t>(fp16_to_fp32(0x8000)), 0x80000000u);
}

TEST(Fp16, RoundsToNearestEven) {
  EXPECT_EQ(fp32_to_fp16(65519.0f), 0x7bff);                  // below the midpoint to inf
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7c00);                  // the midpoint rounds to inf
  EXPECT_EQ(fp32_to_fp16(1e10f), 0x7c00);
  EXPECT_EQ(fp32_to_fp16(-1e10f), 0xfc00);
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie, even stays
  EXPECT_EQ(fp32_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie, odd rounds up
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);     // tie between 0 and min subnormal
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(3.0f, -25)), 0x0002);     // tie 1.5 ulp -> even (2)
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1023.5f, -24)), 0x0400);  // rounds up into the normals
  EXPECT_EQ(fp32_to_fp16(1e-30f), 0x0000);
  EXPECT_EQ(fp32_to_fp16(-1e-30f), 0x8000);
  EXPECT_TRUE(is_f16_nan(fp32_to_fp16(std::numeric_limits<float>::quiet_NaN())));
}

// The compiler's own half-precision conversion (libgcc's soft-float routine or the hardware's)
// is an independent implementation of the same IEEE rounding. g++ 12 has no _Float16 in C++ on
// aarch64; its __fp16 (IEEE format, converted by fcvt) serves there.
#if defined(__aarch64__)
#define HEARTH_COMPILER_F16 __fp16
#elif defined(__FLT16_MAX__)
#define HEARTH_COMPILER_F16 _Float16
#endif
#if defined(HEARTH_COMPILER_F16)
TEST(Fp16, AgreesWithCompilerFloat16OnRandomFloats) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 2'000'000; ++i) {
    uint32_t x = bits(rng);
    // Concentrate on the exponent range where f16 is interesting (subnormals to overflow).
    if (i % 2 == 0) x = (x & 0x807fffffu) | ((100u + (x >> 23) % 50u) << 23);
    const float f = std::bit_cast<float>(x);
    if (std::isnan(f)) continue;
    const auto expected = std::bit_cast<uint16_t>(static_cast<HEARTH_COMPILER_F16>(f));
    ASSERT_EQ(fp32_to_fp16(f), expected) << "float bits 0x" << std::hex << x;
  }
}
#endif

TEST(Bf16, ConversionsAndRounding) {
  EXPECT_EQ(bf16_to_fp32(0x3f80), 1.0f);
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3f808001u)), 0x3f81);
  const uint16_t nan = fp32_to_bf16(std::bit_cast<float>(0x7f800001u));  // signaling NaN stays NaN
  EXPECT_TRUE(std::isnan(bf16_to_fp32(nan)));
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_fp32(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_bf16(f), b);
  }
}

}  // namespace
}  // namespace hearth
