#include "kernels/cpu/packed.h"

#include <cmath>
#include <cstring>
#include <iterator>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/quant_blocks.h"
#include "kernels/cpu/dot.h"
#if defined(HEARTH_X86_KERNELS)
#include "kernels/cpu/x86/packed_x86.h"
#endif
#if defined(HEARTH_ARM_KERNELS)
#include "kernels/cpu/arm/packed_arm.h"
#endif

namespace hearth::kernels {
namespace {


// Where the fields of one native block of a 32-element type are.
struct Native {
  size_t d_at = 0;
  size_t m_at = 0;   // when the format has a min
  size_t qh_at = 0;  // when the format has fifth bits
  size_t qs_at = 0;
};

Native native(DType type) {
  switch (type) {
    case DType::Q4_0: return {offsetof(BlockQ4_0, d), 0, 0, offsetof(BlockQ4_0, qs)};
    case DType::Q4_1: return {offsetof(BlockQ4_1, d), offsetof(BlockQ4_1, m), 0, offsetof(BlockQ4_1, qs)};
    case DType::Q5_0: return {offsetof(BlockQ5_0, d), 0, offsetof(BlockQ5_0, qh), offsetof(BlockQ5_0, qs)};
    case DType::Q5_1:
      return {offsetof(BlockQ5_1, d), offsetof(BlockQ5_1, m), offsetof(BlockQ5_1, qh),
              offsetof(BlockQ5_1, qs)};
    case DType::Q8_0: return {offsetof(BlockQ8_0, d), 0, 0, offsetof(BlockQ8_0, qs)};
    default: throw Error(fmt::format("{} has no packed layout", dtype_name(type)));
  }
}

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}


}  // namespace

bool packable_type(DType type) {
  switch (type) {
    case DType::Q4_0:
    case DType::Q4_1:
    case DType::Q5_0:
    case DType::Q5_1:
    case DType::Q8_0:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K: return true;
    default: return false;
  }
}

namespace {
PackedFormat format(DType type) {
  HEARTH_CHECK(packable_type(type), "{} has no packed layout", dtype_name(type));
  return packed_format(type);
}
// Blocks per row, checking k.
int64_t blocks(PackedFormat f, int64_t k) {
  HEARTH_CHECK(k > 0 && k % f.block == 0, "packed rows of {} elements (not a multiple of {})", k, f.block);
  return k / f.block;
}

// The 12 bytes of a Q4_K block's scales and mins from the 8 six-bit values of each: the inverse
// of unpack_scales_mins_k4 (core/quant_blocks.h), so a packed row unpacks to its native bytes.
void pack_scales_mins_k4(const int sc[8], const int mn[8], uint8_t* q) {
  for (int j = 0; j < 4; ++j) {
    q[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    q[j + 4] = static_cast<uint8_t>(mn[j] | ((mn[j + 4] >> 4) << 6));
    q[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4));
  }
}
}  // namespace

int64_t packed_groups(int64_t m) { return (m + kPackRows - 1) / kPackRows; }

size_t packed_group_bytes(DType type, int64_t k) {
  const PackedFormat f = format(type);
  return packed_regions(f, blocks(f, k)).total;
}

size_t packed_bytes(DType type, int64_t k, int64_t m) {
  return packed_group_bytes(type, k) * static_cast<size_t>(packed_groups(m));
}

size_t packed_act_row_bytes(DType type, int64_t k) {
  const PackedFormat f = format(type);
  const auto nb = static_cast<size_t>(blocks(f, k));
  return static_cast<size_t>(k) + (f.k4 ? 4 * nb + 16 * nb : f.k6 ? 4 * nb + 64 * nb : 8 * nb);
}

namespace {

// Copies `len` bytes between a place in a packed group and one in a native block, in the
// direction of `to_packed`. Each type's transfer below names every place once and serves both
// pack_groups and unpack_row.
void copy(bool to_packed, uint8_t* packed, uint8_t* native_bytes, size_t len) {
  if (to_packed) {
    std::memcpy(packed, native_bytes, len);
  } else {
    std::memcpy(native_bytes, packed, len);
  }
}

// Block `ub` of lane `r` of group `grp` <-> the native block `blk`.
void transfer_32(DType type, bool to_packed, uint8_t* grp, const PackedRegions& reg, size_t ub, size_t r, uint8_t* blk) {
  const PackedFormat f = packed_format(type);
  const Native nat = native(type);
  uint8_t* qs = grp + reg.at(reg.qs, reg.qs_block, ub);
  if (f.q8) {  // stored as q + 128
    for (size_t e = 0; e < 32; ++e) {
      uint8_t& p = qs[64 * (e / 4) + 4 * r + e % 4];
      uint8_t& n = blk[nat.qs_at + e];
      if (to_packed) {
        p = static_cast<uint8_t>(n ^ 0x80);
      } else {
        n = static_cast<uint8_t>(p ^ 0x80);
      }
    }
  } else {
    for (size_t i = 0; i < 4; ++i) copy(to_packed, qs + 64 * i + 4 * r, blk + nat.qs_at + 4 * i, 4);
  }
  copy(to_packed, grp + reg.at(reg.d, 2 * kPackRows, ub) + r * 2, blk + nat.d_at, 2);
  if (f.has_min) copy(to_packed, grp + reg.at(reg.m, 2 * kPackRows, ub) + r * 2, blk + nat.m_at, 2);
  if (f.has_qh) {  // 32 fifth bits <-> four bits of each of eight 64-bit masks
    uint32_t qh = 0;
    if (to_packed) std::memcpy(&qh, blk + nat.qh_at, sizeof(qh));
    for (size_t j = 0; j < 8; ++j) {
      uint64_t word;
      uint8_t* at = grp + reg.at(reg.qh, 8 * sizeof(uint64_t), ub) + j * sizeof(uint64_t);
      std::memcpy(&word, at, sizeof(word));
      if (to_packed) {
        word |= static_cast<uint64_t>((qh >> (4 * j)) & 0xF) << (4 * r);
        std::memcpy(at, &word, sizeof(word));
      } else {
        qh |= static_cast<uint32_t>((word >> (4 * r)) & 0xF) << (4 * j);
      }
    }
    if (!to_packed) std::memcpy(blk + nat.qh_at, &qh, sizeof(qh));
  }
}

// Q4_K, and Q5_K with its fifth bits: the blocks differ only in qh and where qs starts.
template <class Block>
void transfer_k4(bool to_packed, uint8_t* grp, const PackedRegions& reg, size_t ub, size_t r, uint8_t* blk) {
  for (size_t c = 0; c < 32; ++c) copy(to_packed, grp + reg.at(reg.qs, reg.qs_block, ub) + 64 * c + 4 * r, blk + offsetof(Block, qs) + 4 * c, 4);
  if constexpr (sizeof(Block) == sizeof(BlockQ5_K)) {
    for (size_t c = 0; c < 8; ++c) copy(to_packed, grp + reg.at(reg.qh, 512, ub) + 64 * c + 4 * r, blk + offsetof(BlockQ5_K, qh) + 4 * c, 4);
  }
  copy(to_packed, grp + reg.at(reg.d, 2 * kPackRows, ub) + r * 2, blk + offsetof(Block, d), 2);
  copy(to_packed, grp + reg.at(reg.m, 2 * kPackRows, ub) + r * 2, blk + offsetof(Block, dmin), 2);
  int sc[8], mn[8];
  if (to_packed) unpack_scales_mins_k4(blk + offsetof(Block, scales), sc, mn);
  for (size_t j = 0; j < 8; ++j) {
    uint8_t& ps = grp[reg.at(reg.sc, 128, ub) + 16 * j + r];
    uint8_t& pm = grp[reg.at(reg.mn, 128, ub) + 32 * (j / 2) + 2 * r + j % 2];
    if (to_packed) {
      ps = static_cast<uint8_t>(sc[j]);
      pm = static_cast<uint8_t>(mn[j]);
    } else {
      sc[j] = ps;
      mn[j] = pm;
    }
  }
  if (!to_packed) pack_scales_mins_k4(sc, mn, blk + offsetof(Block, scales));
}

void transfer_q6_K(bool to_packed, uint8_t* grp, const PackedRegions& reg, size_t ub, size_t r, uint8_t* blk) {
  uint8_t* units = grp + reg.at(reg.qs, reg.qs_block, ub);
  for (int c = 0; c < 32; ++c) copy(to_packed, units + q6k_ql(c) + 4 * r, blk + offsetof(BlockQ6_K, ql) + 4 * static_cast<size_t>(c), 4);
  for (int c = 0; c < 16; ++c) copy(to_packed, units + q6k_qh(c) + 4 * r, blk + offsetof(BlockQ6_K, qh) + 4 * static_cast<size_t>(c), 4);
  for (int j = 0; j < 16; ++j) copy(to_packed, units + q6k_sc(j) + r, blk + offsetof(BlockQ6_K, scales) + static_cast<size_t>(j), 1);
  copy(to_packed, grp + reg.at(reg.d, 2 * kPackRows, ub) + r * 2, blk + offsetof(BlockQ6_K, d), 2);
}

void transfer(DType type, bool to_packed, uint8_t* grp, const PackedRegions& reg, size_t ub, size_t r, uint8_t* blk) {
  switch (type) {
    case DType::Q4_K: return transfer_k4<BlockQ4_K>(to_packed, grp, reg, ub, r, blk);
    case DType::Q5_K: return transfer_k4<BlockQ5_K>(to_packed, grp, reg, ub, r, blk);
    case DType::Q6_K: return transfer_q6_K(to_packed, grp, reg, ub, r, blk);
    default: return transfer_32(type, to_packed, grp, reg, ub, r, blk);
  }
}

}  // namespace

void pack_groups(DType type, const void* src, int64_t k, int64_t m, void* dst, int64_t g0, int64_t g1) {
  const PackedFormat f = format(type);
  const int64_t nb = blocks(f, k);
  const PackedRegions reg = packed_regions(f, nb);
  const size_t block_bytes = dtype_block_bytes(type);
  const size_t row_bytes = block_bytes * static_cast<size_t>(nb);
  // The transfer only reads the native block when packing.
  auto* s = const_cast<uint8_t*>(static_cast<const uint8_t*>(src));
  for (int64_t g = g0; g < g1; ++g) {
    uint8_t* out = static_cast<uint8_t*>(dst) + static_cast<size_t>(g) * reg.total;
    std::memset(out, 0, reg.total);  // padding rows: zero scales, zero quants
    for (size_t r = 0; r < kPackRows && g * kPackRows + static_cast<int64_t>(r) < m; ++r) {
      uint8_t* row = s + static_cast<size_t>(g * kPackRows + static_cast<int64_t>(r)) * row_bytes;
      for (size_t b = 0; b < static_cast<size_t>(nb); ++b) transfer(type, true, out, reg, b, r, row + b * block_bytes);
    }
  }
}

void unpack_row(DType type, const void* packed, int64_t k, int64_t row, void* dst) {
  const PackedFormat f = format(type);
  const int64_t nb = blocks(f, k);
  const PackedRegions reg = packed_regions(f, nb);
  // The transfer only writes the packed group when packing.
  auto* grp = const_cast<uint8_t*>(static_cast<const uint8_t*>(packed)) + static_cast<size_t>(row / kPackRows) * reg.total;
  const size_t block_bytes = dtype_block_bytes(type);
  for (size_t b = 0; b < static_cast<size_t>(nb); ++b) {
    transfer(type, false, grp, reg, b, static_cast<size_t>(row % kPackRows), static_cast<uint8_t*>(dst) + b * block_bytes);
  }
}

namespace {

// Q8_0 blocks (offset types) or Q8_1 blocks (types with a min), from the level's quantizer
// (bytes identical to the reference) -> a packed activation row of a 32-element type. The
// min's term takes Q8_1's f16 s = d sum(q), as llama.cpp's arithmetic does.
void to_packed_act(PackedFormat f, const uint8_t* q8, int64_t k, void* out) {
  const int64_t nb = blocks(f, k);
  const size_t block = f.has_min ? sizeof(BlockQ8_1) : sizeof(BlockQ8_0);
  const size_t qs_at = f.has_min ? offsetof(BlockQ8_1, qs) : offsetof(BlockQ8_0, qs);
  auto* qs = static_cast<uint8_t*>(out);
  uint8_t* d = qs + k;
  uint8_t* corr = d + 4 * static_cast<size_t>(nb);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = q8 + static_cast<size_t>(b) * block;
    std::memcpy(qs + 32 * b, blk + qs_at, 32);
    const float dx = fp16_to_fp32(load_u16(blk));  // d comes first in both block types
    std::memcpy(d + 4 * b, &dx, 4);
    if (f.has_min) {
      const float sx = fp16_to_fp32(load_u16(blk + offsetof(BlockQ8_1, s)));
      std::memcpy(corr + 4 * b, &sx, 4);
    } else {
      int sum = 0;
      for (size_t i = 0; i < 32; ++i) sum += static_cast<int8_t>(blk[qs_at + i]);
      const int32_t c = -f.offset * sum;
      std::memcpy(corr + 4 * b, &c, 4);
    }
  }
}

// Q8_K blocks -> a packed activation row for Q4_K (quants, scales, int16 sums of 32) or Q6_K
// (quants, scales, int32 -32 x Q8_K's sums of 16).
void to_packed_act_k(bool sums_of_16, const uint8_t* q8k, int64_t k, void* out) {
  const int64_t nb = k / 256;
  auto* qs = static_cast<uint8_t*>(out);
  uint8_t* d = qs + k;
  uint8_t* sums = d + 4 * static_cast<size_t>(nb);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = q8k + static_cast<size_t>(b) * sizeof(BlockQ8_K);
    std::memcpy(qs + 256 * b, blk + offsetof(BlockQ8_K, qs), 256);
    std::memcpy(d + 4 * b, blk + offsetof(BlockQ8_K, d), 4);
    int16_t bs[16];
    std::memcpy(bs, blk + offsetof(BlockQ8_K, bsums), sizeof(bs));
    if (sums_of_16) {  // Q6_K: the int32 -32 * sum of each 16, the quants' offset
      for (int j = 0; j < 16; ++j) {
        const int32_t c = -32 * bs[j];
        std::memcpy(sums + 64 * b + 4 * j, &c, 4);
      }
      continue;
    }
    for (int j = 0; j < 8; ++j) {
      const auto sum = static_cast<int16_t>(bs[2 * j] + bs[2 * j + 1]);  // |sum| <= 32 * 127
      std::memcpy(sums + 16 * b + 2 * j, &sum, 2);
    }
  }
}

void quantize_at(CpuLevel level, DType type, const float* x, void* out, int64_t k) {
  const PackedFormat f = format(type);
  const int64_t nb = blocks(f, k);
  thread_local std::vector<uint8_t> row;  // the row in the level's activation format, reused
  if (f.k4 || f.k6) {
    row.resize(static_cast<size_t>(nb) * sizeof(BlockQ8_K));
    dot_kernel(type, level).quantize(x, row.data(), k);
    to_packed_act_k(f.k6, row.data(), k, out);
  } else {
    // The native path's activation type: Q8_1 for types with a min, Q8_0 for the others.
    row.resize(static_cast<size_t>(nb) * (f.has_min ? sizeof(BlockQ8_1) : sizeof(BlockQ8_0)));
    dot_kernel(type, level).quantize(x, row.data(), k);
    to_packed_act(f, row.data(), k, out);
  }
}

// The scalar model of one Q4_K or Q5_K row (lane r of group `grp`) against one token.
float dot_k4_ref(PackedFormat f, const uint8_t* grp, const PackedRegions& reg, int r, int64_t nb, int64_t k, const uint8_t* a) {
  const auto* aq = reinterpret_cast<const int8_t*>(a);
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const auto ub = static_cast<size_t>(b);
    float dx;
    std::memcpy(&dx, a + k + 4 * b, 4);
    const uint8_t* qs = grp + reg.at(reg.qs, reg.qs_block, ub);
    int32_t total = 0, msum = 0;
    for (int j = 0; j < 8; ++j) {  // sub-block j
      int32_t isum = 0;
      for (int i = 0; i < 8; ++i) {
        for (int c = 0; c < 4; ++c) {
          const uint8_t byte = qs[64 * (8 * (j / 2) + i) + 4 * r + c];
          int q = j % 2 == 0 ? (byte & 0xF) : (byte >> 4);
          if (f.has_qh) q |= ((grp[reg.at(reg.qh, 512, ub) + 64 * static_cast<size_t>(i) + 4 * static_cast<size_t>(r) + static_cast<size_t>(c)] >> j) & 1) << 4;
          isum += q * aq[256 * b + 32 * j + 4 * i + c];
        }
      }
      total += isum * grp[reg.at(reg.sc, 128, ub) + 16 * static_cast<size_t>(j) + static_cast<size_t>(r)];
      int16_t bsum;
      std::memcpy(&bsum, a + k + 4 * nb + 16 * b + 2 * j, 2);
      msum += bsum * grp[reg.at(reg.mn, 128, ub) + 32 * static_cast<size_t>(j / 2) + 2 * static_cast<size_t>(r) + j % 2];
    }
    const float dw = fp16_to_fp32(load_u16(grp + reg.at(reg.d, 2 * kPackRows, ub) + static_cast<size_t>(r) * 2));
    const float dmin = fp16_to_fp32(load_u16(grp + reg.at(reg.m, 2 * kPackRows, ub) + static_cast<size_t>(r) * 2));
    acc = std::fma(static_cast<float>(total), dw * dx, acc);
    acc = std::fma(-static_cast<float>(msum), dmin * dx, acc);
  }
  return acc;
}

// The 6-bit quant of element e (0..255) of lane r in a packed Q6_K super-block: the native
// layout's low four bits from ql, high two from qh (as dequantize_row_q6_K reads them).
int q6_at(const uint8_t* units, int r, int e) {
  const int h = e / 128, quarter = e % 128 / 32, l = e % 32;
  const int ql_byte = 64 * h + 32 * (quarter % 2) + l, qh_byte = 32 * h + l;
  const uint8_t lo = units[q6k_ql(ql_byte / 4) + static_cast<size_t>(4 * r + ql_byte % 4)];
  const uint8_t hi = units[q6k_qh(qh_byte / 4) + static_cast<size_t>(4 * r + qh_byte % 4)];
  return ((lo >> (4 * (quarter / 2))) & 0xF) | (((hi >> (2 * quarter)) & 3) << 4);
}

float dot_k6_ref(const uint8_t* grp, const PackedRegions& reg, int r, int64_t nb, int64_t k, const uint8_t* a) {
  const auto* aq = reinterpret_cast<const int8_t*>(a);
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const auto ub = static_cast<size_t>(b);
    float dx;
    std::memcpy(&dx, a + k + 4 * b, 4);
    int32_t total = 0;
    for (int j = 0; j < 16; ++j) {
      int32_t isum;  // starts at -32 * sum(q_x): the quants' offset
      std::memcpy(&isum, a + k + 4 * nb + 64 * b + 4 * j, 4);
      for (int e = 16 * j; e < 16 * j + 16; ++e) {
        isum += q6_at(grp + reg.at(reg.qs, reg.qs_block, ub), r, e) * aq[256 * b + e];
      }
      total += isum * static_cast<int8_t>(grp[reg.at(reg.qs, reg.qs_block, ub) + q6k_sc(j) + static_cast<size_t>(r)]);
    }
    const float dw = fp16_to_fp32(load_u16(grp + reg.at(reg.d, 2 * kPackRows, ub) + static_cast<size_t>(r) * 2));
    acc = std::fma(static_cast<float>(total), dw * dx, acc);
  }
  return acc;
}

}  // namespace

void packed_quantize_ref(DType type, const float* x, void* out, int64_t k) { quantize_at(CpuLevel::Scalar, type, x, out, k); }

void packed_gemm_ref(DType type, const void* w, int64_t k, int64_t m, int64_t g0, int64_t g1, const void* xa,
                     size_t act_stride, int64_t n, float* y, int64_t y_stride) {
  const PackedFormat f = format(type);
  const int64_t nb = blocks(f, k);
  const PackedRegions reg = packed_regions(f, nb);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* grp = static_cast<const uint8_t*>(w) + static_cast<size_t>(g) * reg.total;
    for (int64_t t = 0; t < n; ++t) {
      const uint8_t* a = static_cast<const uint8_t*>(xa) + static_cast<size_t>(t) * act_stride;
      const auto* aq = reinterpret_cast<const int8_t*>(a);
      for (int r = 0; r < kPackRows; ++r) {
        const int64_t row = g * kPackRows + r;
        if (row >= m) break;
        if (f.k4 || f.k6) {
          y[t * y_stride + row] = f.k4 ? dot_k4_ref(f, grp, reg, r, nb, k, a) : dot_k6_ref(grp, reg, r, nb, k, a);
          continue;
        }
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; ++b) {
          const auto ub = static_cast<size_t>(b);
          float dx;
          std::memcpy(&dx, a + k + 4 * b, 4);
          int32_t isum = 0;
          float sx = 0.0f;
          if (f.has_min) {
            std::memcpy(&sx, a + k + 4 * nb + 4 * b, 4);
          } else {
            std::memcpy(&isum, a + k + 4 * nb + 4 * b, 4);
          }
          const uint8_t* qs = grp + reg.at(reg.qs, reg.qs_block, ub);
          uint64_t hbits[8] = {};
          if (f.has_qh) std::memcpy(hbits, grp + reg.at(reg.qh, 64, ub), 64);
          for (int j = 0; j < 8; ++j) {  // k-step j: elements 4 j .. 4 j + 3
            for (int c = 0; c < 4; ++c) {
              int q;
              if (f.q8) {
                q = qs[64 * j + 4 * r + c];
              } else {
                const uint8_t byte = qs[64 * (j % 4) + 4 * r + c];
                q = j < 4 ? (byte & 0xF) : (byte >> 4);
                if (f.has_qh) q |= static_cast<int>((hbits[j] >> (4 * r + c)) & 1) << 4;
              }
              isum += q * aq[32 * b + 4 * j + c];
            }
          }
          const float dw = fp16_to_fp32(load_u16(grp + reg.at(reg.d, 2 * kPackRows, ub) + static_cast<size_t>(r) * 2));
          acc = std::fma(static_cast<float>(isum), dw * dx, acc);
          if (f.has_min) {
            const float mw = fp16_to_fp32(load_u16(grp + reg.at(reg.m, 2 * kPackRows, ub) + static_cast<size_t>(r) * 2));
            acc = std::fma(mw, sx, acc);
          }
        }
        y[t * y_stride + row] = acc;
      }
    }
  }
}

namespace {

#if defined(HEARTH_X86_KERNELS)
void quantize_avx2(DType type, const float* x, void* out, int64_t k) { quantize_at(CpuLevel::Avx2, type, x, out, k); }
void quantize_avx512(DType type, const float* x, void* out, int64_t k) { quantize_at(CpuLevel::Avx512, type, x, out, k); }

// One instruction set's kernels for the seven packable types, in packable order.
#define HEARTH_PACKED_SET(ns, quantize)                                                                           \
  {                                                                                                               \
    PackedKernel{quantize, x86::ns::packed_gemm_q4_0}, PackedKernel{quantize, x86::ns::packed_gemm_q4_1},          \
        PackedKernel{quantize, x86::ns::packed_gemm_q5_0}, PackedKernel{quantize, x86::ns::packed_gemm_q5_1},      \
        PackedKernel{quantize, x86::ns::packed_gemm_q8_0}, PackedKernel{quantize, x86::ns::packed_gemm_q4_K},      \
        PackedKernel{quantize, x86::ns::packed_gemm_q6_K},                                                         \
  }
const PackedKernel kAvx512[] = HEARTH_PACKED_SET(avx512, quantize_avx512);
const PackedKernel kAvx2[] = HEARTH_PACKED_SET(avx2, quantize_avx2);
// Q4_0, Q4_1 and Q8_0 at the avx512 level: one token through the AVX2 ymm kernel (vpmaddubsw,
// the same layout and bits; its activation bytes are the avx512 quantizer's), several through
// the zmm kernel. For one token the ymm kernel streams these types from memory faster:
// kernel_lab DecodeLayers/<type>/packed/llama1bx4, one thread, Zen 4 EPYC, interleaved runs:
// Q4_0 26-29 GB/s against 18-21, Q4_1 24 against 19, Q8_0 23-31 against 20-24 (llama-1b Q4_0
// one thread: 36.8 t/s at the avx2 level against 30.4 at avx512). Q5_0 / Q5_1 (the fifth bits
// cost AVX2 more) and the k-quants read as fast or faster on zmm, and prefill is zmm's.
template <int I>
void packed_gemm_one_token_ymm(const void* w, int64_t k, int64_t m, int64_t g0, int64_t g1, const void* xa,
                               size_t act_stride, int64_t n, float* y, int64_t y_stride) {
  (n == 1 ? kAvx2[I].gemm : kAvx512[I].gemm)(w, k, m, g0, g1, xa, act_stride, n, y, y_stride);
}
const PackedKernel kAvx512OneTokenYmm[] = {{quantize_avx512, packed_gemm_one_token_ymm<0>},   // Q4_0
                                           {quantize_avx512, packed_gemm_one_token_ymm<1>},   // Q4_1
                                           {quantize_avx512, packed_gemm_one_token_ymm<4>}};  // Q8_0
// The avx512 level's kernel set for packable type index i (the composite where there is one).
const PackedKernel* avx512_kernel(int i) {
  switch (i) {
    case 0: return &kAvx512OneTokenYmm[0];
    case 1: return &kAvx512OneTokenYmm[1];
    case 4: return &kAvx512OneTokenYmm[2];
    default: return &kAvx512[i];
  }
}
#if defined(HEARTH_X86_AVXVNNI)
const PackedKernel kAvxVnni[] = HEARTH_PACKED_SET(avxvnni, quantize_avx2);
#endif
const PackedKernel kAvx2Evex[] = HEARTH_PACKED_SET(avx2_evex, quantize_avx512);
#undef HEARTH_PACKED_SET
#endif

#if defined(HEARTH_ARM_KERNELS)
// The activations of every aarch64 level come from the neon quantizers, which write the scalar
// ones' bytes (dot products and smmla have no use in quantizing).
void quantize_neon(DType type, const float* x, void* out, int64_t k) { quantize_at(CpuLevel::Neon, type, x, out, k); }

#define HEARTH_PACKED_SET(ns)                                                                                     \
  {                                                                                                               \
    PackedKernel{quantize_neon, arm::ns::packed_gemm_q4_0}, PackedKernel{quantize_neon, arm::ns::packed_gemm_q4_1}, \
        PackedKernel{quantize_neon, arm::ns::packed_gemm_q5_0}, PackedKernel{quantize_neon, arm::ns::packed_gemm_q5_1}, \
        PackedKernel{quantize_neon, arm::ns::packed_gemm_q8_0}, PackedKernel{quantize_neon, arm::ns::packed_gemm_q4_K}, \
        PackedKernel{quantize_neon, arm::ns::packed_gemm_q6_K}, PackedKernel{quantize_neon, arm::ns::packed_gemm_q5_K}, \
  }
const PackedKernel kNeon[] = HEARTH_PACKED_SET(neon);
const PackedKernel kDotprod[] = HEARTH_PACKED_SET(dotprod);
const PackedKernel kI8mm[] = HEARTH_PACKED_SET(i8mm);
#undef HEARTH_PACKED_SET
#endif

// The index of a packable type in the sets above, or -1.
int packed_index(DType type) {
  switch (type) {
    case DType::Q4_0: return 0;
    case DType::Q4_1: return 1;
    case DType::Q5_0: return 2;
    case DType::Q5_1: return 3;
    case DType::Q8_0: return 4;
    case DType::Q4_K: return 5;
    case DType::Q6_K: return 6;
    case DType::Q5_K: return 7;  // aarch64 kernels only
    default: return -1;
  }
}

}  // namespace

const PackedKernel* packed_kernel(DType type, CpuLevel level) {
  const int i = packed_index(type);
  if (i < 0 || !cpu_level_supported(level)) return nullptr;
#if defined(HEARTH_X86_KERNELS)
  if (i >= static_cast<int>(std::size(kAvx2))) return nullptr;  // a type with aarch64 kernels only
  if (level == CpuLevel::Avx512 && cpu_has_vnni()) return avx512_kernel(i);
  // The ymm kernels serve the avx2 level, and the avx512 level of a CPU without VNNI.
  if (level == CpuLevel::Avx2 || level == CpuLevel::Avx512) {
#if defined(HEARTH_X86_AVXVNNI)
    if (cpu_has_avx_vnni()) return &kAvxVnni[i];
#endif
    return &kAvx2[i];
  }
#endif
#if defined(HEARTH_ARM_KERNELS)
  switch (level) {
    // Without sdot the k-quants' packed kernels count more instructions per prompt token than
    // the native rows (bench/arm-insn-count.sh: Q4_K +12%, Q5_K +29%, Q6_K +58%), and prefill
    // is where instructions are the limit: plain NEON keeps them in rows (their packed kernels
    // stay tested through packed_kernel_variants).
    case CpuLevel::Neon: return packed_format(type).block == 256 ? nullptr : &kNeon[i];
    case CpuLevel::Dotprod: return &kDotprod[i];
    case CpuLevel::I8mm: return &kI8mm[i];
    default: break;
  }
#endif
  return nullptr;
}

std::vector<PackedVariant> packed_kernel_variants(DType type) {
  std::vector<PackedVariant> out;
  const int i = packed_index(type);
  if (i < 0) return out;
#if defined(HEARTH_X86_KERNELS)
  if (i >= static_cast<int>(std::size(kAvx2))) return out;
  if (cpu_level_supported(CpuLevel::Avx2)) out.push_back({"avx2", &kAvx2[i]});
#if defined(HEARTH_X86_AVXVNNI)
  if (cpu_has_avx_vnni()) out.push_back({"avx2 avx-vnni", &kAvxVnni[i]});
#endif
  if (cpu_level_supported(CpuLevel::Avx512) && cpu_has_vnni()) {
    out.push_back({"avx2 vpdpbusd (evex)", &kAvx2Evex[i]});
    out.push_back({"avx512", &kAvx512[i]});
    if (avx512_kernel(i) != &kAvx512[i]) out.push_back({"avx512 (one token: avx2)", avx512_kernel(i)});
  }
#endif
#if defined(HEARTH_ARM_KERNELS)
  if (packed_format(type).block == 256 && cpu_level_supported(CpuLevel::Neon)) out.push_back({"neon k-quants", &kNeon[i]});
#endif
  return out;
}

}  // namespace hearth::kernels
