// Block layouts of the quantized formats hearth computes with, byte for byte as stored in GGUF.
// A row of n elements is n / QK consecutive blocks. f16 fields are raw IEEE half bits
// (see core/fp16.h). All multi-byte fields are little-endian, as GGUF is.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hearth {

inline constexpr int kQK4_0 = 32;
inline constexpr int kQK4_1 = 32;
inline constexpr int kQK5_0 = 32;
inline constexpr int kQK5_1 = 32;
inline constexpr int kQK8_0 = 32;
inline constexpr int kQK_K = 256;       // super-block of the k-quants
inline constexpr int kKScaleSize = 12;  // packed 6-bit scales and mins of Q4_K / Q5_K

// x = d * (q - 8), q in 0..15. qs[j] holds element j (low nibble) and j + 16 (high nibble).
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK4_0 / 2];
};

// x = d * q + m, q in 0..15, nibbles as in Q4_0.
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK4_1 / 2];
};

// x = d * (q - 16), q in 0..31: low 4 bits as in Q4_0, bit 4 of element j is bit j of qh.
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK5_0 / 2];
};

// x = d * q + m, q in 0..31, bits as in Q5_0.
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK5_1 / 2];
};

// x = d * q, q in -127..127.
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK8_0];
};

// Q8_0 plus s = d * sum(q): an activation format, never stored in model files.
struct BlockQ8_1 {
  uint16_t d;
  uint16_t s;
  int8_t qs[kQK8_0];
};

// 16 sub-blocks of 16: x = d * (scales[i] & 15) * q - dmin * (scales[i] >> 4), q in 0..3.
struct BlockQ2_K {
  uint8_t scales[kQK_K / 16];
  uint8_t qs[kQK_K / 4];
  uint16_t d;
  uint16_t dmin;
};

// 16 sub-blocks of 16: x = d * (scale6[i] - 32) * (q2 - (hmask bit set ? 0 : 4)).
struct BlockQ3_K {
  uint8_t hmask[kQK_K / 8];
  uint8_t qs[kQK_K / 4];
  uint8_t scales[12];
  uint16_t d;
};

// 8 sub-blocks of 32: x = d * scale6[i] * q - dmin * min6[i], q in 0..15.
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQK_K / 2];
};

// Q4_K with a fifth bit per element in qh.
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};

// 16 sub-blocks of 16: x = d * scales[i] * (q - 32), q in 0..63 (4 low bits in ql, 2 high in qh).
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};

// Activation format of the k-quant dot products: x = d * q, plus bsums[i] = sum of q over
// each group of 16, used to apply the k-quants' minimums cheaply.
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};

// The 8 six-bit scales and mins of a Q4_K / Q5_K block from its 12 packed bytes: bytes 0..3
// hold scales 0..3 and bytes 4..7 mins 0..3 (low 6 bits); for sub-blocks 4..7 the low 4 bits
// come from bytes 8..11 and the high 2 bits from the top of bytes 0..7.
inline void unpack_scales_mins_k4(const uint8_t* q, int scale[8], int min[8]) {
  for (int j = 0; j < 4; ++j) {
    scale[j] = q[j] & 63;
    min[j] = q[j + 4] & 63;
  }
  for (int j = 4; j < 8; ++j) {
    scale[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    min[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// The 16 signed 6-bit scales of a Q3_K block (already minus 32): low 4 bits from bytes 0..7
// (two per byte), high 2 bits from bytes 8..11 (four per byte).
inline void unpack_scales_q3_K(const uint8_t* s, int scale[16]) {
  for (int i = 0; i < 16; ++i) {
    const int low = (s[i % 8] >> (4 * (i / 8))) & 0xF;
    const int high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    scale[i] = (low | (high << 4)) - 32;
  }
}

static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ8_1) == 36);
static_assert(sizeof(BlockQ2_K) == 84);
static_assert(sizeof(BlockQ3_K) == 110);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);

}  // namespace hearth
