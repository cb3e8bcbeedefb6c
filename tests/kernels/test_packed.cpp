// The packed-weight matmul (kernels/cpu/packed.h): the layout round-trips every native byte;
// the scalar model of its arithmetic agrees with the reference dot products; the SIMD kernels
// give the scalar model's bits for every tile size, group range and misalignment; a token's
// result never depends on its company or the thread count; and the CPU backend's get_rows reads
// rows back out of a packed table exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/fp16.h"
#include "core/quant_blocks.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/dot_ref.h"
#include "kernels/cpu/packed.h"
#include "kernels/cpu/quants_ref.h"

namespace hearth::kernels {
namespace {

constexpr DType kTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K};

// A row length of `blocks` blocks of the type (32 or 256 elements each).
int64_t row_of(DType type, int64_t blocks) { return dtype_block_size(type) * blocks; }

// m rows of k random values quantized to `type` (every block valid, scales of both signs).
std::vector<uint8_t> random_rows(DType type, int64_t k, int64_t m, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  if (type == DType::Q6_K) {  // no reference quantizer: random bytes, sane f16 d
    std::vector<uint8_t> out(dtype_row_bytes(type, k) * static_cast<size_t>(m));
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto& b : out) b = static_cast<uint8_t>(byte(rng));
    for (size_t b = 0; b < out.size() / sizeof(BlockQ6_K); ++b) {
      const uint16_t d = fp32_to_fp16(0.001f * normal(rng));
      std::memcpy(out.data() + b * sizeof(BlockQ6_K) + offsetof(BlockQ6_K, d), &d, 2);
    }
    return out;
  }
  if (type == DType::Q4_K || type == DType::Q5_K) {
    // Random bytes (any scale bytes are valid six-bit values, any qh bits valid fifth bits:
    // more variety than the quantizer's output) with sane f16 d and dmin, which both blocks
    // begin with.
    static_assert(offsetof(BlockQ4_K, d) == offsetof(BlockQ5_K, d) && offsetof(BlockQ4_K, dmin) == offsetof(BlockQ5_K, dmin));
    std::vector<uint8_t> out(dtype_row_bytes(type, k) * static_cast<size_t>(m));
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto& b : out) b = static_cast<uint8_t>(byte(rng));
    const size_t block = dtype_block_bytes(type);
    for (size_t b = 0; b < out.size() / block; ++b) {
      const uint16_t d = fp32_to_fp16(0.01f * normal(rng)), dmin = fp32_to_fp16(0.01f * std::fabs(normal(rng)));
      std::memcpy(out.data() + b * block + offsetof(BlockQ4_K, d), &d, 2);
      std::memcpy(out.data() + b * block + offsetof(BlockQ4_K, dmin), &dmin, 2);
    }
    return out;
  }
  std::vector<float> row(static_cast<size_t>(k));
  const size_t row_bytes = dtype_row_bytes(type, k);
  std::vector<uint8_t> out(row_bytes * static_cast<size_t>(m));
  for (int64_t r = 0; r < m; ++r) {
    const float scale = r % 3 == 0 ? 0.01f : 1.0f;
    for (auto& v : row) v = scale * normal(rng) + (r % 5 == 1 ? 0.5f : 0.0f);
    ref::quantize_row(type, row.data(), out.data() + static_cast<size_t>(r) * row_bytes, k);
  }
  return out;
}

std::vector<float> random_floats(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = normal(rng);
  return x;
}

struct Packed {
  std::vector<uint8_t> bytes;
  Packed(DType type, const std::vector<uint8_t>& native, int64_t k, int64_t m) : bytes(packed_bytes(type, k, m)) {
    pack_groups(type, native.data(), k, m, bytes.data(), 0, packed_groups(m));
  }
};

// Activations of n tokens in the packed format, through the scalar quantizer.
std::vector<uint8_t> packed_acts(DType type, const std::vector<float>& x, int64_t k, int64_t n) {
  const size_t stride = packed_act_row_bytes(type, k);
  std::vector<uint8_t> out(stride * static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) packed_quantize_ref(type, x.data() + t * k, out.data() + static_cast<size_t>(t) * stride, k);
  return out;
}

class PackedType : public ::testing::TestWithParam<DType> {};

TEST_P(PackedType, LayoutRoundTripsEveryRow) {
  const DType type = GetParam();
  std::mt19937 rng(1);
  for (const int64_t blocks : {3, 4}) {
    for (const int64_t m : {1, 15, 16, 17, 37}) {
      const int64_t k = row_of(type, blocks);
      const std::vector<uint8_t> native = random_rows(type, k, m, rng);
      const Packed packed(type, native, k, m);
      // The native size for whole groups; Q4_K's and Q5_K's scales and mins unpacked to bytes add
      // 64 per super-block of 16 rows. Types whose block slots do not fill whole cache lines (Q4_0,
      // Q5_0, Q8_0, Q6_K) interleave blocks in pairs: an odd count pads one block a group.
      const size_t block_bytes = kPackRows * dtype_row_bytes(type, k) / static_cast<size_t>(blocks) +
                                 (type == DType::Q4_K || type == DType::Q5_K ? 64 : 0);
      const size_t pad = block_bytes % 64 != 0 && blocks % 2 == 1 ? block_bytes : 0;
      EXPECT_EQ(packed.bytes.size(), static_cast<size_t>(packed_groups(m)) * (static_cast<size_t>(blocks) * block_bytes + pad))
          << blocks << " blocks";
      std::vector<uint8_t> row(dtype_row_bytes(type, k));
      for (int64_t r = 0; r < m; ++r) {
        unpack_row(type, packed.bytes.data(), k, r, row.data());
        EXPECT_EQ(0, std::memcmp(row.data(), native.data() + static_cast<size_t>(r) * row.size(), row.size())) << "row " << r;
      }
    }
  }
}

// Q6_K's block slot: the 32 ql lines, 16 qh lines and 16 sub-blocks' scales (four lines) fill
// its 52 lines once each, and the one-token kernel, unit by unit and quarter by quarter (a
// quarter's scales, then four ql lines and the four qh lines beside them), first reads each line
// after every line below it: the block is one ascending run.
TEST(PackedQ6K, UnitsHoldEveryLineOnceInReadingOrder) {
  std::vector<int> uses(52 * 4, 0);  // 16-byte pieces of the 52 lines
  const auto mark = [&](size_t at, size_t bytes) {
    ASSERT_EQ(at % 16, 0u);
    for (size_t p = at / 16; p < (at + bytes) / 16; ++p) {
      ASSERT_LT(p, uses.size()) << "offset " << at;
      ++uses[p];
    }
  };
  for (int c = 0; c < 32; ++c) mark(q6k_ql(c), 64);
  for (int c = 0; c < 16; ++c) mark(q6k_qh(c), 64);
  for (int j = 0; j < 16; ++j) mark(q6k_sc(j), 16);
  for (size_t p = 0; p < uses.size(); ++p) EXPECT_EQ(uses[p], 1) << "16-byte piece " << p;
  EXPECT_EQ(packed_regions(packed_format(DType::Q6_K), 2).qs_block, 52u * 64u);

  std::vector<bool> seen(52, false);
  size_t highest = 0;
  bool first = true;
  const auto touch = [&](size_t at) {
    const size_t line = at / 64;
    if (seen[line]) return;
    seen[line] = true;
    if (!first) {
      EXPECT_GT(line, highest) << "line " << line << " first read after line " << highest;
    }
    highest = std::max(highest, line);
    first = false;
  };
  for (int u = 0; u < 4; ++u) {
    const int h = u / 2, half = u % 2;
    for (int quarter = 0; quarter < 4; ++quarter) {
      touch(q6k_sc(8 * h + 2 * quarter + half));
      for (int i = 0; i < 4; ++i) touch(q6k_ql(16 * h + 8 * (quarter % 2) + 4 * half + i));
      for (int i = 0; i < 4; ++i) touch(q6k_qh(8 * h + 4 * half + i));
    }
  }
  EXPECT_EQ(std::count(seen.begin(), seen.end(), true), 52);
}

// The regions are interleaved by block: every slot of block b lies in chunk b / per (per = 1 or
// 2 blocks, chunks whole cache lines), the slots never overlap and fill the group but for an odd
// count's padding block, so decoding a group reads one ascending run of memory.
TEST_P(PackedType, RegionsInterleaveByBlockInWholeLines) {
  const DType type = GetParam();
  const PackedFormat f = packed_format(type);
  for (const int64_t nb : {1, 2, 3, 8}) {
    const PackedRegions reg = packed_regions(f, nb);
    const size_t per = size_t{1} << reg.chunk_shift;
    EXPECT_EQ(reg.chunk_bytes % 64, 0u) << nb;
    // The super-block types' quants close each chunk (their one token reads the small regions
    // first); the 32-element types' open it.
    if (f.k4 || f.k6) {
      EXPECT_EQ(reg.qs + per * reg.qs_block, reg.chunk_bytes) << nb;
    } else {
      EXPECT_EQ(reg.qs, 0u) << nb;
    }
    EXPECT_EQ(reg.total, (static_cast<size_t>(nb) + per - 1) / per * reg.chunk_bytes) << nb;
    // (offset in the group, bytes) of every slot: quants, scales, mins, fifth/high bits, sub-block
    // scales and mins, as the layout comment in packed.h lists them.
    std::vector<std::pair<size_t, size_t>> slots;
    size_t block_bytes = 0;
    for (int64_t b = 0; b < nb; ++b) {
      const auto ub = static_cast<size_t>(b);
      std::vector<std::pair<size_t, size_t>> mine = {{reg.at(reg.qs, reg.qs_block, ub), reg.qs_block}, {reg.at(reg.d, 32, ub), 32}};
      if (f.has_min) mine.emplace_back(reg.at(reg.m, 32, ub), 32);
      if (f.has_qh && !f.k6) {  // Q6_K's high bits and sub-block scales lie in its quants' slot
        const size_t qh = f.k4 ? 512 : 64;
        mine.emplace_back(reg.at(reg.qh, qh, ub), qh);
      }
      if (f.k4) mine.emplace_back(reg.at(reg.sc, 128, ub), 128);
      if (f.k4) mine.emplace_back(reg.at(reg.mn, 128, ub), 128);
      block_bytes = 0;
      for (const auto& [at, size] : mine) {
        EXPECT_GE(at, ub / per * reg.chunk_bytes) << "block " << b << " of " << nb;
        EXPECT_LE(at + size, (ub / per + 1) * reg.chunk_bytes) << "block " << b << " of " << nb;
        block_bytes += size;
        slots.emplace_back(at, size);
      }
    }
    EXPECT_EQ(block_bytes, reg.block);
    std::sort(slots.begin(), slots.end());
    for (size_t i = 1; i < slots.size(); ++i) {
      EXPECT_LE(slots[i - 1].first + slots[i - 1].second, slots[i].first) << "overlapping slots, " << nb << " blocks";
    }
    EXPECT_LE(reg.total - static_cast<size_t>(nb) * reg.block, nb % 2 == 1 ? reg.block * (per - 1) : 0) << nb;
  }
}

// The scalar model against ref::vec_dot with the reference's activation type: the same integer
// products; only the float rounding of the scales (and Q8_1's f16 block sums) differ.
TEST_P(PackedType, ScalarModelAgreesWithReferenceDots) {
  const DType type = GetParam();
  std::mt19937 rng(2);
  const int64_t k = row_of(type, 11), m = 21, n = 3;
  const std::vector<uint8_t> native = random_rows(type, k, m, rng);
  const Packed packed(type, native, k, m);
  const std::vector<float> x = random_floats(k * n, rng);
  const std::vector<uint8_t> xa = packed_acts(type, x, k, n);
  std::vector<float> y(static_cast<size_t>(m * n), NAN);
  packed_gemm_ref(type, packed.bytes.data(), k, m, 0, packed_groups(m), xa.data(), packed_act_row_bytes(type, k), n, y.data(), m);
  const DType xq_type = ref::vec_dot_type(type);
  std::vector<uint8_t> xq(dtype_row_bytes(xq_type, k));
  std::vector<float> wf(static_cast<size_t>(k)), xf(static_cast<size_t>(k));
  for (int64_t t = 0; t < n; ++t) {
    ref::quantize_activations(xq_type, x.data() + t * k, xq.data(), k);
    ref::dequantize_row(xq_type, xq.data(), xf.data(), k);
    for (int64_t r = 0; r < m; ++r) {
      const uint8_t* w = native.data() + static_cast<size_t>(r) * dtype_row_bytes(type, k);
      ref::dequantize_row(type, w, wf.data(), k);
      double scale = 0.0;
      for (int64_t i = 0; i < k; ++i) scale += std::fabs(double(wf[i]) * double(xf[i]));
      EXPECT_NEAR(y[static_cast<size_t>(t * m + r)], ref::vec_dot(type, k, w, xq.data()), 2e-3 * scale + 1e-5)
          << "token " << t << " row " << r;
    }
  }
}

// The SIMD kernels of every level that has them: the scalar model's bits, for tiles of 1 to 8
// tokens and past (n up to 19), a range of groups in the middle, and misaligned buffers.
TEST_P(PackedType, SimdKernelsGiveTheScalarModelsBits) {
  const DType type = GetParam();
  int levels = 0;
  // Every level's kernels, and the variants no level picks on this CPU (packed_kernel_variants).
  std::vector<PackedVariant> variants;
  for (const CpuLevel level : kAllCpuLevels) {
    if (!cpu_level_supported(level) || packed_kernel(type, level) == nullptr) continue;
    variants.push_back({cpu_level_name(level).data(), packed_kernel(type, level)});
  }
  for (const PackedVariant& v : packed_kernel_variants(type)) variants.push_back(v);
  for (const auto& [name, kernel] : variants) {
    ++levels;
    std::mt19937 rng(3);
    const int64_t k = row_of(type, 5), m = 53;  // four groups, the last one of five rows
    const std::vector<uint8_t> native = random_rows(type, k, m, rng);
    const Packed packed(type, native, k, m);
    std::vector<uint8_t> w_off(packed.bytes.size() + 3);
    std::memcpy(w_off.data() + 3, packed.bytes.data(), packed.bytes.size());
    const int64_t max_n = 19;
    const std::vector<float> x = random_floats(k * max_n, rng);
    const size_t stride = packed_act_row_bytes(type, k);
    // The level's quantizer writes the scalar one's bytes.
    const std::vector<uint8_t> xa = packed_acts(type, x, k, max_n);
    std::vector<uint8_t> xa_simd(xa.size() + 1);
    for (int64_t t = 0; t < max_n; ++t) {
      kernel->quantize(type, x.data() + t * k, xa_simd.data() + 1 + static_cast<size_t>(t) * stride, k);
    }
    ASSERT_EQ(0, std::memcmp(xa.data(), xa_simd.data() + 1, xa.size())) << name;
    for (int64_t n = 1; n <= max_n; ++n) {
      for (const auto& [g0, g1] : {std::pair<int64_t, int64_t>{0, 4}, {1, 3}, {3, 4}}) {
        std::vector<float> want(static_cast<size_t>(m * n), NAN), got(want.size(), NAN);
        packed_gemm_ref(type, packed.bytes.data(), k, m, g0, g1, xa.data(), stride, n, want.data(), m);
        kernel->gemm(w_off.data() + 3, k, m, g0, g1, xa_simd.data() + 1, stride, n, got.data(), m);
        for (size_t i = 0; i < want.size(); ++i) {
          // Rows outside [g0, g1) stay untouched (NaN in both).
          if (std::isnan(want[i])) {
            EXPECT_TRUE(std::isnan(got[i])) << "wrote outside its groups at " << i;
            continue;
          }
          ASSERT_EQ(want[i], got[i]) << name << " n=" << n << " groups [" << g0 << ", " << g1
                                     << ") token " << i / m << " row " << i % m;
        }
      }
    }
  }
  if (levels == 0) GTEST_SKIP() << "no packed kernels on this CPU";
}

// Through the backend: each token's row of results is the same bits alone, in any batch, and
// with any number of threads; and equal (within rounding) to the native-rows path.
TEST_P(PackedType, BackendMatmulIsBatchAndThreadInvariant) {
  const DType type = GetParam();
  const CpuLevel level = cpu_level();
  if (packed_kernel(type, level) == nullptr) GTEST_SKIP() << "no packed kernel for this type at " << cpu_level_name(level);
  std::mt19937 rng(4);
  const int64_t k = row_of(type, 9), m = 70, max_n = 11;
  const std::vector<uint8_t> native = random_rows(type, k, m, rng);
  const std::vector<float> x = random_floats(k * max_n, rng);
  auto run = [&](CpuBackend& backend, int64_t first, int64_t n) {
    const Tensor w = backend.weight(type, {k, m, 1, 1}, native.data(), nullptr);
    Tensor xt = backend.new_tensor(DType::F32, {k, n, 1, 1});
    backend.write(xt, x.data() + first * k, static_cast<size_t>(n * k) * sizeof(float));
    Tensor yt = backend.new_tensor(DType::F32, {m, n, 1, 1});
    backend.matmul(w, xt, yt);
    std::vector<float> y(static_cast<size_t>(m * n));
    backend.read(yt, y.data(), y.size() * sizeof(float));
    return y;
  };
  CpuBackend one(1, level), three(3, level), native_rows(2, level, false);
  const std::vector<float> all = run(three, 0, max_n);
  const std::vector<float> unpacked = run(native_rows, 0, max_n);
  std::vector<float> wf(static_cast<size_t>(k));
  for (int64_t t = 0; t < max_n; ++t) {
    const std::vector<float> alone = run(one, t, 1);
    for (int64_t r = 0; r < m; ++r) {
      const float v = all[static_cast<size_t>(t * m + r)];
      ASSERT_EQ(v, alone[static_cast<size_t>(r)]) << "token " << t << " row " << r;
      // The native path's Q8_1 activations carry f16 block sums (for the min's term), the
      // packed path exact ones: the bound scales with sum |w x|.
      ref::dequantize_row(type, native.data() + static_cast<size_t>(r) * dtype_row_bytes(type, k), wf.data(), k);
      double scale = 0.0;
      for (int64_t i = 0; i < k; ++i) scale += std::fabs(double(wf[i]) * double(x[static_cast<size_t>(t * k + i)]));
      EXPECT_NEAR(v, unpacked[static_cast<size_t>(t * m + r)], 2e-3 * scale + 1e-5) << "token " << t << " row " << r;
    }
  }
}

TEST_P(PackedType, GetRowsReadsPackedTablesExactly) {
  const DType type = GetParam();
  std::mt19937 rng(5);
  const int64_t k = row_of(type, 2), m = 35;
  const std::vector<uint8_t> native = random_rows(type, k, m, rng);
  CpuBackend packed_backend(2), plain_backend(2, cpu_level(), false);
  const Tensor packed = packed_backend.weight(type, {k, m, 1, 1}, native.data(), nullptr);
  const Tensor plain = plain_backend.weight(type, {k, m, 1, 1}, native.data(), nullptr);
  const std::vector<int32_t> ids = {0, 34, 16, 15, 17, 3, 3};
  Tensor a = packed_backend.new_tensor(DType::F32, {k, static_cast<int64_t>(ids.size()), 1, 1});
  Tensor b = plain_backend.new_tensor(DType::F32, a.ne);
  packed_backend.get_rows(packed, upload_i32(packed_backend, ids), a);
  plain_backend.get_rows(plain, upload_i32(plain_backend, ids), b);
  EXPECT_EQ(0, std::memcmp(CpuBackend::host(a), CpuBackend::host(b), static_cast<size_t>(a.n_elements()) * sizeof(float)));
}

std::string type_name(const ::testing::TestParamInfo<DType>& info) { return std::string(dtype_name(info.param)); }

// The largest quants every format can hold (all nibbles and fifth bits set, Q8_0 at -128,
// Q4_K's 6-bit scales and mins at 63, Q6_K's scales at -128) against activations all at +127
// or all at -127: the integer sums where narrow SIMD steps (vpmaddubsw's int16 pairs) would
// saturate or wrap first, if their bounds were wrong. Every kernel must still give the model's
// bits.
TEST_P(PackedType, SimdKernelsExactAtTheExtremes) {
  const DType type = GetParam();
  std::mt19937 rng(5);
  const int64_t k = row_of(type, 4), m = 21;
  std::vector<uint8_t> native = random_rows(type, k, m, rng);
  const size_t block = dtype_block_bytes(type);
  for (size_t at = 0; at < native.size(); at += block) {
    uint8_t* b = native.data() + at;
    const auto fill = [&](size_t offset, size_t len, uint8_t v) { std::memset(b + offset, v, len); };
    switch (type) {
      case DType::Q4_0: fill(offsetof(BlockQ4_0, qs), sizeof(BlockQ4_0::qs), 0xFF); break;
      case DType::Q4_1: fill(offsetof(BlockQ4_1, qs), sizeof(BlockQ4_1::qs), 0xFF); break;
      case DType::Q5_0:
        fill(offsetof(BlockQ5_0, qs), sizeof(BlockQ5_0::qs), 0xFF);
        fill(offsetof(BlockQ5_0, qh), sizeof(BlockQ5_0::qh), 0xFF);
        break;
      case DType::Q5_1:
        fill(offsetof(BlockQ5_1, qs), sizeof(BlockQ5_1::qs), 0xFF);
        fill(offsetof(BlockQ5_1, qh), sizeof(BlockQ5_1::qh), 0xFF);
        break;
      case DType::Q8_0: fill(offsetof(BlockQ8_0, qs), sizeof(BlockQ8_0::qs), 0x80); break;
      case DType::Q4_K:
        fill(offsetof(BlockQ4_K, qs), sizeof(BlockQ4_K::qs), 0xFF);
        fill(offsetof(BlockQ4_K, scales), sizeof(BlockQ4_K::scales), 0xFF);
        break;
      case DType::Q5_K:
        fill(offsetof(BlockQ5_K, qs), sizeof(BlockQ5_K::qs), 0xFF);
        fill(offsetof(BlockQ5_K, qh), sizeof(BlockQ5_K::qh), 0xFF);
        fill(offsetof(BlockQ5_K, scales), sizeof(BlockQ5_K::scales), 0xFF);
        break;
      case DType::Q6_K:
        fill(offsetof(BlockQ6_K, ql), sizeof(BlockQ6_K::ql), 0xFF);
        fill(offsetof(BlockQ6_K, qh), sizeof(BlockQ6_K::qh), 0xFF);
        fill(offsetof(BlockQ6_K, scales), sizeof(BlockQ6_K::scales), 0x80);
        break;
      default: FAIL() << "no extremes for " << dtype_name(type);
    }
  }
  const Packed packed(type, native, k, m);
  const int64_t n = 6;  // tokens alternately all +1 and all -1: quants all +-127
  std::vector<float> x(static_cast<size_t>(k * n));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < k; ++i) x[static_cast<size_t>(t * k + i)] = t % 2 == 0 ? 1.0f : -1.0f;
  }
  const std::vector<uint8_t> xa = packed_acts(type, x, k, n);
  const size_t stride = packed_act_row_bytes(type, k);
  std::vector<float> want(static_cast<size_t>(m * n));
  packed_gemm_ref(type, packed.bytes.data(), k, m, 0, packed_groups(m), xa.data(), stride, n, want.data(), m);
  int kernels = 0;
  std::vector<PackedVariant> variants;
  for (const CpuLevel level : kAllCpuLevels) {
    if (cpu_level_supported(level) && packed_kernel(type, level) != nullptr) {
      variants.push_back({cpu_level_name(level).data(), packed_kernel(type, level)});
    }
  }
  for (const PackedVariant& v : packed_kernel_variants(type)) variants.push_back(v);
  for (const auto& [name, kernel] : variants) {
    ++kernels;
    for (int64_t tokens = 1; tokens <= n; ++tokens) {
      std::vector<float> got(static_cast<size_t>(m * tokens), NAN);
      kernel->gemm(packed.bytes.data(), k, m, 0, packed_groups(m), xa.data(), stride, tokens, got.data(), m);
      for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(want[i], got[i]) << name << " tokens=" << tokens << " at " << i;
    }
  }
  if (kernels == 0) GTEST_SKIP() << "no packed kernels on this CPU";
}

INSTANTIATE_TEST_SUITE_P(Types, PackedType, ::testing::ValuesIn(kTypes), type_name);

}  // namespace
}  // namespace hearth::kernels
