#include "kernels/cpu/dot.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <iterator>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/quant_blocks.h"
#include "kernels/cpu/dot_ref.h"
#include "kernels/cpu/quants_ref.h"
#if defined(HEARTH_X86_KERNELS)
#include "kernels/cpu/x86/dot_x86.h"
#endif
#if defined(HEARTH_ARM_KERNELS)
#include "kernels/cpu/arm/dot_arm.h"
#endif

namespace hearth::kernels {
namespace {

// Type ids run up to Q1_0 (41); the table is indexed by them.
constexpr size_t kTypeSlots = 64;
constexpr size_t kLevels = std::size(kAllCpuLevels);

template <DType T>
float ref_dot(int64_t n, const void* w, const void* x) {
  return ref::vec_dot(T, n, w, x);
}
template <DType T>
void ref_quantize(const float* x, void* y, int64_t n) {
  ref::quantize_activations(T, x, y, n);
}

using Table = std::array<DotKernel, kTypeSlots>;

template <DType W>
void set_ref(Table& t) {
  DotKernel& k = t[static_cast<size_t>(W)];
  k.vec_dot_type = ref::vec_dot_type(W);
  k.vec_dot = ref_dot<W>;
  switch (k.vec_dot_type) {
    case DType::Q8_0: k.quantize = ref_quantize<DType::Q8_0>; break;
    case DType::Q8_1: k.quantize = ref_quantize<DType::Q8_1>; break;
    case DType::Q8_K: k.quantize = ref_quantize<DType::Q8_K>; break;
    case DType::F16: k.quantize = ref_quantize<DType::F16>; break;
    case DType::BF16: k.quantize = ref_quantize<DType::BF16>; break;
    default: k.quantize = ref_quantize<DType::F32>; break;
  }
}

Table scalar_table() {
  Table t{};
  set_ref<DType::F32>(t);
  set_ref<DType::F16>(t);
  set_ref<DType::BF16>(t);
  set_ref<DType::Q4_0>(t);
  set_ref<DType::Q4_1>(t);
  set_ref<DType::Q5_0>(t);
  set_ref<DType::Q5_1>(t);
  set_ref<DType::Q8_0>(t);
  set_ref<DType::Q2_K>(t);
  set_ref<DType::Q3_K>(t);
  set_ref<DType::Q4_K>(t);
  set_ref<DType::Q5_K>(t);
  set_ref<DType::Q6_K>(t);
  for (size_t i = 0; i < kTypeSlots; ++i) {
    // Every type the reference can dot must be in the table (guards against a new type).
    if (dtype_traits_or_null(static_cast<uint32_t>(i)) != nullptr && ref::can_vec_dot(static_cast<DType>(i))) {
      HEARTH_CHECK(t[i].vec_dot != nullptr, "no scalar dot for {}", dtype_name(static_cast<DType>(i)));
    }
  }
  return t;
}

// A copy of the scalar table with one SIMD level's kernels (namespace `ns`, e.g. x86::avx2)
// for the types it covers, and its activation quantizers for every type whose activations
// are Q8_0 / Q8_1 / Q8_K. Every SIMD namespace provides the same set of functions.
#define HEARTH_SET_BLOCK(ns, wtype, name)                                       \
  t[static_cast<size_t>(DType::wtype)].vec_dot = ns::vec_dot_##name;            \
  t[static_cast<size_t>(DType::wtype)].vec_dot_rows = ns::vec_dot_##name##_4;   \
  t[static_cast<size_t>(DType::wtype)].simd_dot = true;
#define HEARTH_SET_PLAIN(ns, wtype, name)                            \
  t[static_cast<size_t>(DType::wtype)].vec_dot = ns::vec_dot_##name; \
  t[static_cast<size_t>(DType::wtype)].simd_dot = true;
#define HEARTH_SIMD_TABLE(fn, ns)                                                                  \
  Table fn() {                                                                                     \
    Table t = scalar_table();                                                                      \
    HEARTH_SET_BLOCK(ns, Q8_0, q8_0)                                                               \
    HEARTH_SET_BLOCK(ns, Q4_0, q4_0)                                                               \
    HEARTH_SET_BLOCK(ns, Q4_1, q4_1)                                                               \
    HEARTH_SET_BLOCK(ns, Q5_0, q5_0)                                                               \
    HEARTH_SET_BLOCK(ns, Q5_1, q5_1)                                                               \
    HEARTH_SET_BLOCK(ns, Q4_K, q4_K)                                                               \
    HEARTH_SET_BLOCK(ns, Q5_K, q5_K)                                                               \
    HEARTH_SET_BLOCK(ns, Q6_K, q6_K)                                                               \
    HEARTH_SET_PLAIN(ns, F16, f16)                                                                 \
    HEARTH_SET_PLAIN(ns, BF16, bf16)                                                               \
    HEARTH_SET_PLAIN(ns, F32, f32)                                                                 \
    for (DotKernel& k : t) {                                                                       \
      if (k.vec_dot == nullptr) continue;                                                          \
      switch (k.vec_dot_type) {                                                                    \
        case DType::Q8_0: k.quantize = ns::quantize_q8_0; k.simd_quantize = true; break;           \
        case DType::Q8_1: k.quantize = ns::quantize_q8_1; k.simd_quantize = true; break;           \
        case DType::Q8_K: k.quantize = ns::quantize_q8_K; k.simd_quantize = true; break;           \
        default: break;                                                                            \
      }                                                                                            \
    }                                                                                              \
    return t;                                                                                      \
  }
#if defined(HEARTH_X86_KERNELS)
HEARTH_SIMD_TABLE(avx2_simd_table, x86::avx2)
HEARTH_SIMD_TABLE(avx512_simd_table, x86::avx512)
#define HEARTH_SET_SCALED(ns, wtype, name) \
  t[static_cast<size_t>(DType::wtype)].vec_dot_rows_scaled = ns::vec_dot_##name##_4s;
#define HEARTH_X86_TABLE(fn, base, ns)  \
  Table fn() {                          \
    Table t = base();                   \
    HEARTH_SET_SCALED(ns, Q8_0, q8_0)   \
    HEARTH_SET_SCALED(ns, Q4_0, q4_0)   \
    HEARTH_SET_SCALED(ns, Q5_0, q5_0)   \
    HEARTH_SET_SCALED(ns, Q4_1, q4_1)   \
    HEARTH_SET_SCALED(ns, Q5_1, q5_1)   \
    return t;                           \
  }
HEARTH_X86_TABLE(avx2_table, avx2_simd_table, x86::avx2)
HEARTH_X86_TABLE(avx512_table, avx512_simd_table, x86::avx512)
#undef HEARTH_X86_TABLE
#undef HEARTH_SET_SCALED
#endif
#if defined(HEARTH_ARM_KERNELS)
HEARTH_SIMD_TABLE(neon_simd_table, arm::neon)
HEARTH_SIMD_TABLE(dotprod_simd_table, arm::dotprod)
// And the aarch64 kernels of the 2- and 3-bit k-quants (their activations, Q8_K, already come
// from the level's quantizer).
#define HEARTH_ARM_TABLE(fn, base, ns) \
  Table fn() {                         \
    Table t = base();                  \
    HEARTH_SET_BLOCK(ns, Q2_K, q2_K)   \
    HEARTH_SET_BLOCK(ns, Q3_K, q3_K)   \
    return t;                          \
  }
HEARTH_ARM_TABLE(neon_table, neon_simd_table, arm::neon)
HEARTH_ARM_TABLE(dotprod_table, dotprod_simd_table, arm::dotprod)
#undef HEARTH_ARM_TABLE
#endif
#undef HEARTH_SIMD_TABLE
#undef HEARTH_SET_PLAIN
#undef HEARTH_SET_BLOCK

// Indexed by CpuLevel. A level of the other architecture keeps the scalar table; it is never
// selected (cpu_level_supported() is false for it), the entry only keeps the indexing simple.
const std::array<Table, kLevels>& tables() {
  static const std::array<Table, kLevels> all = [] {
    std::array<Table, kLevels> a;
    a.fill(scalar_table());
#if defined(HEARTH_X86_KERNELS)
    a[static_cast<size_t>(CpuLevel::Avx2)] = avx2_table();
    // The AVX-512 kernels are built with VNNI; without it the level runs the AVX2 kernels.
    a[static_cast<size_t>(CpuLevel::Avx512)] = cpu_has_vnni() ? avx512_table() : avx2_table();
#endif
#if defined(HEARTH_ARM_KERNELS)
    a[static_cast<size_t>(CpuLevel::Neon)] = neon_table();
    // Without sdot the level is never selected; should a caller break dot_kernel's contract
    // anyway, it gets the plain NEON kernels instead of an illegal instruction.
    a[static_cast<size_t>(CpuLevel::Dotprod)] =
        cpu_level_supported(CpuLevel::Dotprod) ? dotprod_table() : a[static_cast<size_t>(CpuLevel::Neon)];
    // i8mm pays in the packed prefill kernels (packed.h); the native-row dots stay dotprod's.
    a[static_cast<size_t>(CpuLevel::I8mm)] = a[static_cast<size_t>(CpuLevel::Dotprod)];
#endif
    return a;
  }();
  return all;
}

}  // namespace

const DotKernel& dot_kernel(DType weight, CpuLevel level) {
  const auto type = static_cast<size_t>(weight);
  HEARTH_CHECK(type < kTypeSlots, "type id {}", type);
  return tables()[static_cast<size_t>(level)][type];
}

void matmul_rows(const DotKernel& kernel, const void* w, size_t w_row_bytes, int64_t k, int64_t r0, int64_t r1,
                 const void* xq, size_t xq_row_bytes, int64_t n, float* y, int64_t y_stride) {
  HEARTH_CHECK(kernel.vec_dot != nullptr, "no dot product for this weight type");
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* xb = static_cast<const uint8_t*>(xq);
  // Two or three tokens beyond the groups of four: copy the activations and repeat the last
  // token to fill a last group, so those tokens too share each decoded weight block (the
  // repeated rows are computed and dropped; four-row kernels give one-row bits).
  const int64_t n_out = n;
  std::vector<uint8_t> padded;
  if (kernel.vec_dot_rows != nullptr && n % kDotRows >= 2) {
    const int64_t n_padded = (n / kDotRows + 1) * kDotRows;
    padded.resize(static_cast<size_t>(n_padded) * xq_row_bytes);
    std::memcpy(padded.data(), xb, static_cast<size_t>(n) * xq_row_bytes);
    for (int64_t t = n; t < n_padded; ++t) {
      std::memcpy(padded.data() + static_cast<size_t>(t) * xq_row_bytes, xb + static_cast<size_t>(n - 1) * xq_row_bytes,
                  xq_row_bytes);
    }
    xb = padded.data();
    n = n_padded;
  }
  // Weight rows in tiles of about 16 KiB: a tile stays in L1 while every group of tokens
  // passes over it, so each weight byte comes from memory once per call.
  const int64_t tile = std::max<int64_t>(1, static_cast<int64_t>(16384 / std::max<size_t>(w_row_bytes, 1)));
  const int64_t n_grouped = kernel.vec_dot_rows != nullptr ? n / kDotRows * kDotRows : 0;
  // For the scaled kernels: each group's activation block scales as floats, [group][block][row].
  std::vector<float> xd, xs;
  const int64_t nb = k / 32;
  const bool scaled = kernel.vec_dot_rows_scaled != nullptr && n_grouped > 0;
  if (scaled) {
    HEARTH_CHECK(kernel.vec_dot_type == DType::Q8_0 || kernel.vec_dot_type == DType::Q8_1);
    const bool q8_1 = kernel.vec_dot_type == DType::Q8_1;
    const size_t block_bytes = q8_1 ? sizeof(BlockQ8_1) : sizeof(BlockQ8_0);
    const size_t d_at = q8_1 ? offsetof(BlockQ8_1, d) : offsetof(BlockQ8_0, d);
    xd.resize(static_cast<size_t>(n_grouped * nb));
    if (q8_1) xs.resize(xd.size());
    for (int64_t t = 0; t < n_grouped; ++t) {
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* block = xb + static_cast<size_t>(t) * xq_row_bytes + static_cast<size_t>(b) * block_bytes;
        const size_t at = static_cast<size_t>((t / kDotRows * nb + b) * kDotRows + t % kDotRows);
        uint16_t h;
        std::memcpy(&h, block + d_at, sizeof(h));
        xd[at] = fp16_to_fp32(h);
        if (q8_1) {
          std::memcpy(&h, block + offsetof(BlockQ8_1, s), sizeof(h));
          xs[at] = fp16_to_fp32(h);
        }
      }
    }
  }
  for (int64_t rt = r0; rt < r1; rt += tile) {
    const int64_t rt_end = std::min(r1, rt + tile);
    for (int64_t t = 0; t < n_grouped; t += kDotRows) {
      const uint8_t* x = xb + static_cast<size_t>(t) * xq_row_bytes;
      const size_t scales_at = static_cast<size_t>(t * nb);  // (t / kDotRows) * nb * kDotRows
      for (int64_t r = rt; r < rt_end; ++r) {
        float out[kDotRows];
        if (scaled) {
          kernel.vec_dot_rows_scaled(k, wb + static_cast<size_t>(r) * w_row_bytes, x, xq_row_bytes,
                                     xd.data() + scales_at, xs.empty() ? nullptr : xs.data() + scales_at, out);
        } else {
          kernel.vec_dot_rows(k, wb + static_cast<size_t>(r) * w_row_bytes, x, xq_row_bytes, out);
        }
        for (int i = 0; i < kDotRows && t + i < n_out; ++i) y[(t + i) * y_stride + r] = out[i];
      }
    }
    for (int64_t t = n_grouped; t < n; ++t) {
      const uint8_t* x = xb + static_cast<size_t>(t) * xq_row_bytes;
      for (int64_t r = rt; r < rt_end; ++r) y[t * y_stride + r] = kernel.vec_dot(k, wb + static_cast<size_t>(r) * w_row_bytes, x);
    }
  }
}

}  // namespace hearth::kernels
