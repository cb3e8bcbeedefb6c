#include "kernels/cpu/packed.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/quant_blocks.h"
#include "kernels/cpu/dot.h"
#if defined(HEARTH_X86_KERNELS)
#include "kernels/cpu/x86/packed_x86.h"
#endif

namespace hearth::kernels {
namespace {

constexpr int kBlock = 32;

// Where the fields of one native block are.
struct Native {
  size_t block_bytes = 0;
  size_t d_at = 0;
  size_t m_at = 0;   // when the format has a min
  size_t qh_at = 0;  // when the format has fifth bits
  size_t qs_at = 0;
};

Native native(DType type) {
  switch (type) {
    case DType::Q4_0: return {sizeof(BlockQ4_0), offsetof(BlockQ4_0, d), 0, 0, offsetof(BlockQ4_0, qs)};
    case DType::Q4_1: return {sizeof(BlockQ4_1), offsetof(BlockQ4_1, d), offsetof(BlockQ4_1, m), 0, offsetof(BlockQ4_1, qs)};
    case DType::Q5_0: return {sizeof(BlockQ5_0), offsetof(BlockQ5_0, d), 0, offsetof(BlockQ5_0, qh), offsetof(BlockQ5_0, qs)};
    case DType::Q5_1:
      return {sizeof(BlockQ5_1), offsetof(BlockQ5_1, d), offsetof(BlockQ5_1, m), offsetof(BlockQ5_1, qh),
              offsetof(BlockQ5_1, qs)};
    case DType::Q8_0: return {sizeof(BlockQ8_0), offsetof(BlockQ8_0, d), 0, 0, offsetof(BlockQ8_0, qs)};
    default: throw Error(fmt::format("{} has no packed layout", dtype_name(type)));
  }
}

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

void check_k(int64_t k) { HEARTH_CHECK(k > 0 && k % kBlock == 0, "packed rows of {} elements (not a multiple of 32)", k); }

}  // namespace

bool packable_type(DType type) {
  switch (type) {
    case DType::Q4_0:
    case DType::Q4_1:
    case DType::Q5_0:
    case DType::Q5_1:
    case DType::Q8_0: return true;
    default: return false;
  }
}

namespace {
PackedFormat format(DType type) {
  HEARTH_CHECK(packable_type(type), "{} has no packed layout", dtype_name(type));
  return packed_format(type);
}
}  // namespace

int64_t packed_groups(int64_t m) { return (m + kPackRows - 1) / kPackRows; }

size_t packed_group_bytes(DType type, int64_t k) {
  check_k(k);
  return packed_regions(format(type), k / kBlock).total;
}

size_t packed_bytes(DType type, int64_t k, int64_t m) {
  return packed_group_bytes(type, k) * static_cast<size_t>(packed_groups(m));
}

size_t packed_act_row_bytes(int64_t k) { return static_cast<size_t>(k) + 8 * static_cast<size_t>(k / kBlock); }

void pack_groups(DType type, const void* src, int64_t k, int64_t m, void* dst, int64_t g0, int64_t g1) {
  check_k(k);
  const PackedFormat f = format(type);
  const Native nat = native(type);
  const int64_t nb = k / kBlock;
  const PackedRegions reg = packed_regions(f, nb);
  const size_t row_bytes = nat.block_bytes * static_cast<size_t>(nb);
  const auto* s = static_cast<const uint8_t*>(src);
  for (int64_t g = g0; g < g1; ++g) {
    uint8_t* out = static_cast<uint8_t*>(dst) + static_cast<size_t>(g) * reg.total;
    std::memset(out, 0, reg.total);  // padding rows: zero scales, zero quants
    for (int r = 0; r < kPackRows; ++r) {
      const int64_t row = g * kPackRows + r;
      if (row >= m) break;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = s + static_cast<size_t>(row) * row_bytes + static_cast<size_t>(b) * nat.block_bytes;
        const auto ub = static_cast<size_t>(b);
        uint8_t* qs = out + reg.qs + ub * reg.qs_block;
        if (f.q8) {
          for (int j = 0; j < 8; ++j) {
            for (int c = 0; c < 4; ++c) qs[64 * j + 4 * r + c] = static_cast<uint8_t>(blk[nat.qs_at + 4 * j + c] ^ 0x80);
          }
        } else {
          for (int i = 0; i < 4; ++i) std::memcpy(qs + 64 * i + 4 * r, blk + nat.qs_at + 4 * i, 4);
        }
        std::memcpy(out + reg.d + (ub * kPackRows + r) * 2, blk + nat.d_at, 2);
        if (f.has_min) std::memcpy(out + reg.m + (ub * kPackRows + r) * 2, blk + nat.m_at, 2);
        if (f.has_qh) {
          uint32_t qh;
          std::memcpy(&qh, blk + nat.qh_at, sizeof(qh));
          for (int j = 0; j < 8; ++j) {
            uint64_t word;
            uint8_t* at = out + reg.qh + (ub * 8 + static_cast<size_t>(j)) * sizeof(uint64_t);
            std::memcpy(&word, at, sizeof(word));
            word |= static_cast<uint64_t>((qh >> (4 * j)) & 0xF) << (4 * r);
            std::memcpy(at, &word, sizeof(word));
          }
        }
      }
    }
  }
}

void unpack_row(DType type, const void* packed, int64_t k, int64_t row, void* dst) {
  check_k(k);
  const PackedFormat f = format(type);
  const Native nat = native(type);
  const int64_t nb = k / kBlock;
  const PackedRegions reg = packed_regions(f, nb);
  const auto* in = static_cast<const uint8_t*>(packed) + static_cast<size_t>(row / kPackRows) * reg.total;
  const int r = static_cast<int>(row % kPackRows);
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t b = 0; b < nb; ++b) {
    const auto ub = static_cast<size_t>(b);
    uint8_t* blk = out + ub * nat.block_bytes;
    const uint8_t* qs = in + reg.qs + ub * reg.qs_block;
    if (f.q8) {
      for (int j = 0; j < 8; ++j) {
        for (int c = 0; c < 4; ++c) blk[nat.qs_at + 4 * j + c] = static_cast<uint8_t>(qs[64 * j + 4 * r + c] ^ 0x80);
      }
    } else {
      for (int i = 0; i < 4; ++i) std::memcpy(blk + nat.qs_at + 4 * i, qs + 64 * i + 4 * r, 4);
    }
    std::memcpy(blk + nat.d_at, in + reg.d + (ub * kPackRows + r) * 2, 2);
    if (f.has_min) std::memcpy(blk + nat.m_at, in + reg.m + (ub * kPackRows + r) * 2, 2);
    if (f.has_qh) {
      uint32_t qh = 0;
      for (int j = 0; j < 8; ++j) {
        uint64_t word;
        std::memcpy(&word, in + reg.qh + (ub * 8 + static_cast<size_t>(j)) * sizeof(uint64_t), sizeof(word));
        qh |= static_cast<uint32_t>((word >> (4 * r)) & 0xF) << (4 * j);
      }
      std::memcpy(blk + nat.qh_at, &qh, sizeof(qh));
    }
  }
}

namespace {

// Q8_0 blocks (from the level's quantizer, bytes identical to the reference) -> a packed
// activation row.
void to_packed_act(DType type, const uint8_t* q8, int64_t k, void* out) {
  const PackedFormat f = format(type);
  const int64_t nb = k / kBlock;
  auto* qs = static_cast<uint8_t*>(out);
  auto* d = reinterpret_cast<uint8_t*>(qs + k);
  uint8_t* corr = d + 4 * static_cast<size_t>(nb);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = q8 + static_cast<size_t>(b) * sizeof(BlockQ8_0);
    std::memcpy(qs + 32 * b, blk + offsetof(BlockQ8_0, qs), kBlock);
    int sum = 0;
    for (int i = 0; i < kBlock; ++i) sum += static_cast<int8_t>(blk[offsetof(BlockQ8_0, qs) + static_cast<size_t>(i)]);
    const float dx = fp16_to_fp32(load_u16(blk + offsetof(BlockQ8_0, d)));
    std::memcpy(d + 4 * b, &dx, 4);
    if (f.has_min) {
      const float s = dx * static_cast<float>(sum);
      std::memcpy(corr + 4 * b, &s, 4);
    } else {
      const int32_t c = -f.offset * sum;
      std::memcpy(corr + 4 * b, &c, 4);
    }
  }
}

void quantize_with(QuantizeFn q8_0, DType type, const float* x, void* out, int64_t k) {
  check_k(k);
  thread_local std::vector<uint8_t> blocks;  // the row as Q8_0 blocks: no allocation per token
  blocks.resize(static_cast<size_t>(k / kBlock) * sizeof(BlockQ8_0));
  q8_0(x, blocks.data(), k);
  to_packed_act(type, blocks.data(), k, out);
}

}  // namespace

void packed_quantize_ref(DType type, const float* x, void* out, int64_t k) {
  quantize_with(dot_kernel(DType::Q8_0, CpuLevel::Scalar).quantize, type, x, out, k);
}

void packed_gemm_ref(DType type, const void* w, int64_t k, int64_t m, int64_t g0, int64_t g1, const void* xa,
                     size_t act_stride, int64_t n, float* y, int64_t y_stride) {
  check_k(k);
  const PackedFormat f = format(type);
  const int64_t nb = k / kBlock;
  const PackedRegions reg = packed_regions(f, nb);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* grp = static_cast<const uint8_t*>(w) + static_cast<size_t>(g) * reg.total;
    for (int64_t t = 0; t < n; ++t) {
      const uint8_t* a = static_cast<const uint8_t*>(xa) + static_cast<size_t>(t) * act_stride;
      const auto* aq = reinterpret_cast<const int8_t*>(a);
      for (int r = 0; r < kPackRows; ++r) {
        const int64_t row = g * kPackRows + r;
        if (row >= m) break;
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
          const uint8_t* qs = grp + reg.qs + ub * reg.qs_block;
          uint64_t hbits[8] = {};
          if (f.has_qh) std::memcpy(hbits, grp + reg.qh + ub * 64, 64);
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
          const float dw = fp16_to_fp32(load_u16(grp + reg.d + (ub * kPackRows + static_cast<size_t>(r)) * 2));
          acc = std::fma(static_cast<float>(isum), dw * dx, acc);
          if (f.has_min) {
            const float mw = fp16_to_fp32(load_u16(grp + reg.m + (ub * kPackRows + static_cast<size_t>(r)) * 2));
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
void quantize_avx512(DType type, const float* x, void* out, int64_t k) {
  quantize_with(dot_kernel(DType::Q8_0, CpuLevel::Avx512).quantize, type, x, out, k);
}
#endif

}  // namespace

const PackedKernel* packed_kernel(DType type, CpuLevel level) {
#if defined(HEARTH_X86_KERNELS)
  if (level == CpuLevel::Avx512 && cpu_level_supported(CpuLevel::Avx512) && cpu_has_vnni()) {
    static const PackedKernel q4_0{quantize_avx512, x86::avx512::packed_gemm_q4_0};
    static const PackedKernel q4_1{quantize_avx512, x86::avx512::packed_gemm_q4_1};
    static const PackedKernel q5_0{quantize_avx512, x86::avx512::packed_gemm_q5_0};
    static const PackedKernel q5_1{quantize_avx512, x86::avx512::packed_gemm_q5_1};
    static const PackedKernel q8_0{quantize_avx512, x86::avx512::packed_gemm_q8_0};
    switch (type) {
      case DType::Q4_0: return &q4_0;
      case DType::Q4_1: return &q4_1;
      case DType::Q5_0: return &q5_0;
      case DType::Q5_1: return &q5_1;
      case DType::Q8_0: return &q8_0;
      default: return nullptr;
    }
  }
#endif
  (void)type;
  (void)level;
  return nullptr;
}

}  // namespace hearth::kernels
