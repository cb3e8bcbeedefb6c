// Shared by hearth's Vulkan compute shaders: buffers reached by device address (push constants
// carry 64-bit addresses, so no descriptor set is ever created), byte and half loads and stores,
// f16 rounding done by hand (to nearest even, the bits of core/fp16.h on every device), and the
// decoder of every quantized weight type (the same form as the CUDA kernels' decode8: chunk
// `part` of 32-value sub-block `j` of a row is 8 integers q with one scale d and offset m,
// value = d * q + m).
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_EXT_shader_8bit_storage : require
#extension GL_EXT_shader_16bit_storage : require

layout(buffer_reference, std430, buffer_reference_align = 4) buffer F32s { float v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) buffer I32s { int v[]; };
layout(buffer_reference, std430, buffer_reference_align = 1) buffer U8s { uint8_t v[]; };
layout(buffer_reference, std430, buffer_reference_align = 2) buffer U16s { uint16_t v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) buffer U32s { uint v[]; };

// Element i of an array at a device address (indices may pass 2^32 elements, so they are
// folded into the address: GLSL indexes arrays with 32-bit integers only).
float ld_f32(uint64_t base, uint64_t i) { return F32s(base + 4ul * i).v[0]; }
void st_f32(uint64_t base, uint64_t i, float v) { F32s(base + 4ul * i).v[0] = v; }
int ld_i32(uint64_t base, uint64_t i) { return I32s(base + 4ul * i).v[0]; }
uint byte_at(uint64_t base, uint64_t i) { return uint(U8s(base + i).v[0]); }
void st_u8(uint64_t base, uint64_t i, uint v) { U8s(base + i).v[0] = uint8_t(v & 255u); }
int sext8(uint v) { return int(v) - (v >= 128u ? 256 : 0); }
uint u16_at(uint64_t base, uint64_t i) { return byte_at(base, i) | (byte_at(base, i + 1ul) << 8); }
// Eight bytes at an even address, as four 16-bit loads (GGUF blocks are 2-byte aligned).
void load8(uint64_t a, out uint b[8]) {
  for (uint i = 0; i < 4u; ++i) {
    const uint h = uint(U16s(a + 2ul * i).v[0]);
    b[2u * i] = h & 255u;
    b[2u * i + 1u] = h >> 8;
  }
}
// Eight bytes at a 4-aligned address, as two 32-bit loads.
void load8_4(uint64_t a, out uint b[8]) {
  for (uint i = 0; i < 2u; ++i) {
    const uint w = U32s(a + 4ul * i).v[0];
    for (uint j = 0; j < 4u; ++j) b[4u * i + j] = (w >> (8u * j)) & 255u;
  }
}
float f16_even(uint64_t a) { return unpackHalf2x16(uint(U16s(a).v[0])).x; }  // an f16 at an even address
float f16_to_f32(uint h) { return unpackHalf2x16(h).x; }  // exact for every half
float f16_at(uint64_t base, uint64_t i) { return f16_to_f32(u16_at(base, i)); }
float bf16_to_f32(uint h) { return uintBitsToFloat(h << 16); }

// f32 -> f16 bits, round to nearest even (overflow to infinity, NaN kept quiet).
uint f32_to_f16(float f) {
  const uint x = floatBitsToUint(f);
  const uint sign = (x >> 16) & 0x8000u;
  const uint e = (x >> 23) & 0xffu;
  uint m = x & 0x7fffffu;
  if (e == 0xffu) return sign | 0x7c00u | (m != 0u ? 0x200u | (m >> 13) : 0u);
  const int exp = int(e) - 127 + 15;
  if (exp >= 31) return sign | 0x7c00u;
  if (exp <= 0) {
    if (exp < -10) return sign;
    m |= 0x800000u;
    const uint shift = uint(14 - exp);
    uint half_m = m >> shift;
    const uint rest = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (half_m & 1u) != 0u)) half_m += 1u;
    return sign | half_m;
  }
  uint h = sign | (uint(exp) << 10) | (m >> 13);
  const uint rest = m & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) != 0u)) h += 1u;  // may carry into the exponent: right
  return h;
}
float f16_round(float f) { return f16_to_f32(f32_to_f16(f)); }

// A flat workgroup index over a 2-D dispatch (x up to 65535 groups, then y).
uint group_index() { return gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x; }

// Weight types (core/dtype.h ids).
const uint T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q2_K = 10,
           T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_BF16 = 30;

uint block_bytes(uint t) {
  switch (t) {
    case T_Q4_0: return 18u; case T_Q4_1: return 20u; case T_Q5_0: return 22u; case T_Q5_1: return 24u;
    case T_Q8_0: return 34u; case T_Q2_K: return 84u; case T_Q3_K: return 110u; case T_Q4_K: return 144u;
    case T_Q5_K: return 176u; default: return 210u;  // Q6_K
  }
}
bool is_k_quant(uint t) { return t >= T_Q2_K && t <= T_Q6_K; }

// A k-quant's chunk as integers: value = dk * sc * q - dmk * mn (Q3_K and Q6_K: mn = 0), with
// dk and dmk the super-block's f16 scales; the form of the CPU's integer dot products.
void decode8_k(uint t, uint64_t row, uint64_t j, uint part, out int q[8], out int sc, out int mn, out float dk,
               out float dmk) {
  const uint64_t b = row + (j / 8u) * block_bytes(t);
  const uint s = uint(j % 8u);
  mn = 0;
  dmk = 0.0;
  if (t == T_Q4_K || t == T_Q5_K) {
    if (s < 4u) {
      sc = int(byte_at(b, 4u + s) & 63u);
      mn = int(byte_at(b, 8u + s) & 63u);
    } else {
      sc = int((byte_at(b, 4u + s + 4u) & 15u) | ((byte_at(b, 4u + s - 4u) >> 6) << 4));
      mn = int((byte_at(b, 4u + s + 4u) >> 4) | ((byte_at(b, 4u + s) >> 6) << 4));
    }
    dk = f16_even(b);
    dmk = f16_even(b + 2u);
    const uint64_t qs = b + (t == T_Q4_K ? 16u : 48u) + 32u * (s / 2u) + 8u * part;
    const uint shift = s % 2u == 0u ? 0u : 4u;
    uint by[8], hb[8];
    load8(qs, by);
    if (t == T_Q5_K) load8(b + 16u + 8u * part, hb);
    for (uint i = 0; i < 8u; ++i) {
      uint v = (by[i] >> shift) & 15u;
      if (t == T_Q5_K) v |= ((hb[i] >> s) & 1u) << 4;
      q[i] = int(v);
    }
  } else if (t == T_Q6_K) {
    const uint h = s / 4u, k = s % 4u, l0 = 8u * part;
    dk = f16_even(b + 208u);
    sc = sext8(byte_at(b, 192u + 8u * h + l0 / 16u + 2u * k));
    uint lb[8], hb[8];
    load8(b + 64u * h + 32u * (k & 1u) + l0, lb);
    load8(b + 128u + 32u * h + l0, hb);
    for (uint i = 0; i < 8u; ++i) {
      const uint lo = (lb[i] >> (k >= 2u ? 4u : 0u)) & 15u;
      const uint hi = (hb[i] >> (2u * k)) & 3u;
      q[i] = int(lo | (hi << 4)) - 32;
    }
  } else if (t == T_Q2_K) {
    const uint half_i = s / 4u, shift = 2u * (s % 4u);
    const uint scb = byte_at(b, 8u * half_i + 2u * (s % 4u) + part / 2u);
    dk = f16_even(b + 80u);
    dmk = f16_even(b + 82u);
    sc = int(scb & 15u);
    mn = int(scb >> 4);
    uint by[8];
    load8(b + 16u + 32u * half_i + 8u * part, by);
    for (uint i = 0; i < 8u; ++i) q[i] = int((by[i] >> shift) & 3u);
  } else {  // Q3_K
    const uint half_i = s / 4u, shift = 2u * (s % 4u), is = 2u * s + part / 2u;
    const uint low = (byte_at(b, 96u + is % 8u) >> (4u * (is / 8u))) & 15u;
    const uint high = (byte_at(b, 104u + is % 4u) >> (2u * (is / 4u))) & 3u;
    dk = f16_even(b + 108u);
    sc = int(low | (high << 4)) - 32;
    uint by[8], hm[8];
    load8(b + 32u + 32u * half_i + 8u * part, by);
    load8(b + 8u * part, hm);
    for (uint i = 0; i < 8u; ++i) {
      const uint q2 = (by[i] >> shift) & 3u;
      const uint hbit = (hm[i] >> s) & 1u;
      q[i] = int(q2) - (hbit != 0u ? 0 : 4);
    }
  }
}

// Chunk `part` of sub-block j of the row at `row`: q[8], d, m.
void decode8(uint t, uint64_t row, uint64_t j, uint part, out int q[8], out float d, out float m) {
  m = 0.0;
  if (!is_k_quant(t)) {
    const uint64_t b = row + j * block_bytes(t);
    d = f16_even(b);
    uint by[8];
    if (t == T_Q8_0) {
      load8(b + 2u + 8u * part, by);
      for (uint i = 0; i < 8u; ++i) q[i] = sext8(by[i]);
      return;
    }
    const bool has_min = t == T_Q4_1 || t == T_Q5_1, has_high = t == T_Q5_0 || t == T_Q5_1;
    if (has_min) {
      const vec2 dm = unpackHalf2x16(U32s(b).v[0]);
      d = dm.x;
      m = dm.y;
    }
    const uint64_t qs = b + 2u + (has_min ? 2u : 0u) + (has_high ? 4u : 0u);
    uint qh = 0u;
    if (has_high) {
      const uint64_t h = b + 2u + (has_min ? 2u : 0u);
      qh = uint(U16s(h).v[0]) | (uint(U16s(h + 2ul).v[0]) << 16);
    }
    const int bias = t == T_Q4_0 ? 8 : t == T_Q5_0 ? 16 : 0;
    if (has_min) load8_4(qs + 8u * (part % 2u), by); else load8(qs + 8u * (part % 2u), by);
    for (uint i = 0; i < 8u; ++i) {
      const uint v = 8u * part + i;  // value index in the block
      const uint byte_v = by[i];
      uint nib = v < 16u ? (byte_v & 15u) : (byte_v >> 4);
      if (has_high) nib |= ((qh >> v) & 1u) << 4;
      q[i] = int(nib) - bias;
    }
    return;
  }
  int sc, mn;
  float dk, dmk;
  decode8_k(t, row, j, part, q, sc, mn, dk, dmk);
  d = dk * float(sc);
  m = -(dmk * float(mn));
}

// Element i of a plain (f32 / f16 / bf16) row.
float plain_at(uint t, uint64_t row, uint64_t i) {
  if (t == T_F32) return ld_f32(row, i);
  const uint h = u16_at(row, 2ul * i);
  return t == T_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

// d * q + m, rounded as the reference computes it (no fused multiply-add).
float dq(float d, int q, float m) {
  precise float p = d * float(q);
  precise float r = p + m;
  return r;
}
