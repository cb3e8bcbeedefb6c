// Weights repacked for the CPU matmul: 16 rows interleaved so that one 512-bit integer dot
// product (or two 256-bit ones, on AVX2) computes a partial sum for each of 16 rows at once, against one token's four
// activation bytes broadcast to every lane. The sum of a block stays in its row's lane, so no
// horizontal reduction is ever needed, and one decoded weight block serves up to
// kPackTokens tokens from registers. The CPU backend repacks a weight at load when its type and
// the CPU level have a packed kernel (packed_kernel() != nullptr) and then releases the mapped
// original; get_rows reads rows back out of the packed layout.
//
// Layout, for a weight [m, k] of 32-element blocks (nb = k / 32 blocks per row): rows in groups
// of 16 (the last group padded with zero rows), group g at g * packed_group_bytes. Inside a
// group, one slot per block in each region below, the regions interleaved by block (chunks of
// one block, or of two where a block's slots do not fill whole cache lines: see PackedRegions):
//   qs   nb x 256 bytes (4-bit types) or nb x 512 (Q8_0). For 4- and 5-bit types, the 64 bytes
//        at 64 i (i = 0..3) hold, at 4 r + c, byte 4 i + c of row r's native qs: low nibbles are
//        elements 4 i + c, high nibbles 16 + 4 i + c. For Q8_0, the 64 bytes at 64 j hold, at
//        4 r + c, element 4 j + c of row r plus 128 (as u8).
//   d    nb x 16 f16: the rows' scales.
//   m    nb x 16 f16: the rows' mins (Q4_1, Q5_1 only).
//   qh   nb x 8 u64 (Q5_0, Q5_1 only): bit 4 r + c of word j is the fifth bit of element
//        4 j + c of row r.
// The byte count equals the native one for whole groups (and an even nb where chunks are of two
// blocks; an odd one pads the last chunk by one block).
//
// Q4_K (super-blocks of 256, nb = k / 256), in this order in a block's chunk: d and m (dmin)
// nb x 16 f16; sc nb x 8 x 16 u8 (sub-block j's 6-bit scale of row r at 16 j + r); mn
// nb x 4 x 16 x 2 u8 (the mins of sub-blocks 2 q and 2 q + 1 of row r at 32 q + 2 r, as pairs
// for vpdpwssd); qs nb x 2048, the 64 bytes at 64 (8 p + i) holding, at 4 r + c, byte
// 32 p + 4 i + c of row r's native qs (low nibble: element 4 i + c of sub-block 2 p, high: of
// sub-block 2 p + 1). 2368 bytes per super-block of 16 rows, 2.8% over the native 2304.
//
// Q5_K: Q4_K's regions, plus qh nb x 512 between mn and qs (the 64 bytes at 64 c, c = 0..7, hold
// at 4 r + c' byte 4 c + c' of row r's native qh: bit j of it is the fifth bit of element
// 4 c + c' of sub-block j). 2880 bytes per super-block of 16 rows, 2.3% over the native 2816.
// Its activations are Q4_K's. (aarch64 kernels only so far.)
//
// Q6_K (nb = k / 256): 52 lines of 64 bytes per super-block, its slot in qs (qs_block 3328):
// "ql line c" (c = 0..31) holds, at 4 r + c', byte 4 c + c' of row r's native ql, "qh line c"
// (c = 0..15) likewise of its native qh, and "sc line" 16 int8 scales per sub-block (row r's at
// r). The lines lie in four units of 13, in the order the one-token kernel first reads them:
// unit u = 2 h + half (h, half = 0..1) is the scales of sub-blocks 8 h + 2 q + half (q = 0..3,
// 16 bytes each), then ql lines 16 h + 4 half + i, qh lines 8 h + 4 half + i and ql lines
// 16 h + 8 + 4 half + i (i = 0..3): the unit holds every bit of its four sub-blocks (q6k_ql,
// q6k_qh, q6k_sc give the offsets). d nb x 16 f16, in chunks of two blocks like the others but
// ahead of the quants ([d of both][units of block 2 c][units of block 2 c + 1]), so one block
// pair is one ascending run: exactly the native size.
//
// Activations for a packed matmul are quantized per token to a row of packed_act_row_bytes:
// k int8 (Q8_0's rounding), then nb float scales (Q8_0's f16 scale widened), then nb 32-bit
// corrections: for types with an offset (Q4_0: 8, Q5_0: 16, Q8_0: 128, stored quants = q + o)
// the int32 -o * sum(q_x); for types with a min (Q4_1, Q5_1) Q8_1's f16 s = d_x * sum(q_x)
// widened (the rounding llama.cpp's arithmetic has). For
// Q4_K: k int8 and nb float scales as Q8_K, then nb x 8 int16 sums of each 32 quants; for
// Q6_K the same, then nb x 16 int32 -32 x the sum of each 16 quants.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/cpu_features.h"

namespace hearth::kernels {

inline constexpr int kPackRows = 16;
inline constexpr int kPackTokens = 8;  // tokens per register tile of the kernels

// Whether the packed layout is defined for this type (kernels may still be missing for a level).
bool packable_type(DType type);

// The layout's parameters for a packable type, and the byte offsets of a group's regions.
// Always inlined: the SIMD translation units use them too, and an out-of-line copy compiled
// with their flags must never be the one the linker keeps for baseline code.
struct PackedFormat {
  bool q8 = false;       // 32 int8 quants per block row (Q8_0) instead of nibbles
  bool has_min = false;  // Q4_1, Q5_1
  bool has_qh = false;   // Q5_0, Q5_1, Q5_K, Q6_K
  bool k4 = false;       // Q4_K, Q5_K: super-blocks of 256 with 6-bit sub-block scales and mins
  bool k6 = false;       // Q6_K: super-blocks of 256, 16 sub-blocks with int8 scales
  int offset = 0;        // stored quant = value + offset (32-element types without a min)
  int block = 32;        // elements per block
};
[[gnu::always_inline]] constexpr PackedFormat packed_format(DType type) {
  switch (type) {
    case DType::Q4_0: return {false, false, false, false, false, 8, 32};
    case DType::Q4_1: return {false, true, false, false, false, 0, 32};
    case DType::Q5_0: return {false, false, true, false, false, 16, 32};
    case DType::Q5_1: return {false, true, true, false, false, 0, 32};
    case DType::Q8_0: return {true, false, false, false, false, 128, 32};
    case DType::Q4_K: return {false, true, false, true, false, 0, 256};
    case DType::Q5_K: return {false, true, true, true, false, 0, 256};
    case DType::Q6_K: return {false, false, true, false, true, 32, 256};
    default: return {};
  }
}
// Where a group's regions lie. The regions are interleaved by block: a chunk of blocks (one, or
// two where one block's bytes are not a multiple of 64, so that every chunk starts on a cache
// line) holds those blocks' slots of each region one after the other, and the chunks follow one
// another, so that decoding a group walks up one run of memory instead of one run per region.
// qs, d, ...: the offset of block 0's slot in its chunk; at(region, slot_bytes, b): the offset of
// block b's slot in the group.
struct PackedRegions {
  size_t qs = 0, d = 0, m = 0, qh = 0, sc = 0, mn = 0, total = 0;
  size_t qs_block = 0;     // bytes of one block's quants
  size_t block = 0;        // bytes of one block's slots in every region
  size_t chunk_shift = 0;  // log2 of the blocks per chunk (0 or 1)
  size_t chunk_bytes = 0;  // block << chunk_shift
  [[gnu::always_inline]] constexpr size_t at(size_t region, size_t slot_bytes, size_t b) const {
    return (b >> chunk_shift) * chunk_bytes + region + (b & ((size_t{1} << chunk_shift) - 1)) * slot_bytes;
  }
};
// nb: blocks per row (k / f.block).
[[gnu::always_inline]] constexpr PackedRegions packed_regions(PackedFormat f, int64_t nb) {
  const auto n = static_cast<size_t>(nb);
  PackedRegions r;
  r.qs_block = f.k6 ? 3328 : f.k4 ? 2048 : f.q8 ? 512 : 256;
  const size_t d = 2 * kPackRows, m = f.has_min ? 2 * kPackRows : 0;
  const size_t qh = f.has_qh && !f.k6 ? (f.k4 ? 32 * kPackRows : 8 * sizeof(uint64_t)) : 0;
  const size_t sc = f.k4 ? 8 * kPackRows : 0;
  const size_t mn = f.k4 ? 8 * kPackRows : 0;
  r.block = r.qs_block + d + m + qh + sc + mn;
  r.chunk_shift = r.block % 64 == 0 ? 0 : 1;
  const size_t per = size_t{1} << r.chunk_shift;
  r.chunk_bytes = r.block * per;
  // The super-block types put their quants last, so that their one-token kernels read a chunk
  // as one ascending run with the small regions first (for Q6_K only d: its sub-block scales and
  // high bits live in its quants' slot); the 32-element types put them first.
  const bool quants_last = f.k4 || f.k6;
  size_t at = quants_last ? 0 : per * r.qs_block;
  r.qs = 0;
  r.d = at;
  r.m = at += per * d;
  r.sc = at += per * m;
  r.mn = at += per * sc;
  r.qh = at += per * mn;
  if (quants_last) r.qs = at + per * qh;
  r.total = (n + per - 1) / per * r.chunk_bytes;
  return r;
}

// Offsets inside a Q6_K block's slot (see the layout above): of ql line c (0..31), qh line c
// (0..15) and sub-block j's 16 scales (0..15).
[[gnu::always_inline]] constexpr size_t q6k_unit(int h, int half) { return 832 * static_cast<size_t>(2 * h + half); }
[[gnu::always_inline]] constexpr size_t q6k_ql(int c) {
  return q6k_unit(c / 16, c % 8 / 4) + (c % 16 / 8 == 0 ? 64 : 576) + 64 * static_cast<size_t>(c % 4);
}
[[gnu::always_inline]] constexpr size_t q6k_qh(int c) { return q6k_unit(c / 8, c % 8 / 4) + 320 + 64 * static_cast<size_t>(c % 4); }
[[gnu::always_inline]] constexpr size_t q6k_sc(int j) { return q6k_unit(j / 8, j % 2) + 16 * static_cast<size_t>(j % 8 / 2); }

int64_t packed_groups(int64_t m);
size_t packed_group_bytes(DType type, int64_t k);
size_t packed_bytes(DType type, int64_t k, int64_t m);
size_t packed_act_row_bytes(DType type, int64_t k);

// Repacks row groups [g0, g1) of the native rows `src` ([m, k] of `type`) into `dst` (the whole
// packed buffer, packed_bytes long).
void pack_groups(DType type, const void* src, int64_t k, int64_t m, void* dst, int64_t g0, int64_t g1);
// Writes row `row` of a packed weight back in the native layout (dtype_row_bytes(type, k) bytes).
void unpack_row(DType type, const void* packed, int64_t k, int64_t row, void* dst);

// Quantizes one token's activations (k floats) for weights of `type`.
using PackedQuantizeFn = void (*)(DType type, const float* x, void* out, int64_t k);
// y[t * y_stride + r] = row r of the packed weight . token t, for the rows of groups [g0, g1)
// (rows past m are not written) and tokens [0, n) of `xa` (rows act_stride bytes apart).
// Each token's result is bit-identical whatever n and the group range are.
using PackedGemmFn = void (*)(const void* w, int64_t k, int64_t m, int64_t g0, int64_t g1, const void* xa,
                              size_t act_stride, int64_t n, float* y, int64_t y_stride);

struct PackedKernel {
  PackedQuantizeFn quantize = nullptr;
  PackedGemmFn gemm = nullptr;
};

// The packed kernels for weights of `type` at `level`, or nullptr where there are none (the
// weight then stays in its native layout and goes through dot_kernel()).
const PackedKernel* packed_kernel(DType type, CpuLevel level);

// Every packed kernel set this CPU can run, for tests and the kernel lab: the one
// packed_kernel() picks for each level plus variants it never picks here (the ymm kernels'
// vpdpbusd arithmetic in EVEX form on AVX-512 machines, which mostly lack AVX-VNNI; the plain
// NEON kernels of the k-quants, which keep native rows at that level).
struct PackedVariant {
  const char* name;
  const PackedKernel* kernel;
};
std::vector<PackedVariant> packed_kernel_variants(DType type);

// The scalar model of the packed arithmetic (any level): what the SIMD kernels compute, in
// the same order per lane; tests compare them bit for bit and both with ref::vec_dot.
void packed_quantize_ref(DType type, const float* x, void* out, int64_t k);
void packed_gemm_ref(DType type, const void* w, int64_t k, int64_t m, int64_t g0, int64_t g1, const void* xa,
                     size_t act_stride, int64_t n, float* y, int64_t y_stride);

}  // namespace hearth::kernels
