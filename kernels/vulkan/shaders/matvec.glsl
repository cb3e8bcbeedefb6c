// y [n, m] = x [n, k] * w [m, k]^T for n <= TOKENS tokens (decoding; TOKENS is 1 or 8, one
// shader each: matvec1.comp, matvec8.comp). A workgroup is one subgroup wide (its size is the
// device's subgroup size, specialization constant 1) and owns ROWS weight rows: its invocations
// take the row's 8-value chunks in turn (chunk c: the invocation c mod width), load the
// activations of a chunk once and use them for every row, and keep each (row, token) sum in a
// register; subgroupAdd then sums the invocations (and, where a device runs the workgroup as
// several subgroups, shared memory sums those).
//
// Quantized weights take 8-bit activations (quantize_x MODE 4 / 5 records) and multiply as
// integers, as the CPU's dot products do: a chunk's integer sum is exact, then scaled with the
// CPU's formula for the weight type (its per-block form applied per chunk), so the result differs
// from the CPU's only by the rounding of a few float operations per chunk and their order, not by
// a rounding per product. Plain weights (f32 / f16 / bf16) multiply floats.
//
// Why this shape: a software device (lavapipe) runs one subgroup as one SIMD vector and loads
// from a buffer lane by lane, per component, and a workgroup wider than one subgroup costs it
// dearly; so every load is counted: a chunk's activations are loaded once for ROWS rows, the
// accumulators are named variables (a0..a7), the rows unrolled by hand. Per token the sums are
// added in the same order in both shaders (precise: no contraction), so a token's result does
// not depend on the batch it came in (the op suite asserts it).
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"
#ifdef INTEGER_DOT
// OpSDot on four packed signed 8-bit values (SPV_KHR_integer_dot_product, core in Vulkan 1.3;
// capabilities DotProduct and DotProductInput4x8BitPacked), spelled through spirv_intrinsics
// because this glslang predates GL_EXT_integer_dot_product.
#extension GL_EXT_spirv_intrinsics : require
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6019, 6018], id = 4450)
int sdot4x8(uint a, uint b, spirv_literal int packed_format);
#endif
layout(local_size_x_id = 1) in;
layout(constant_id = 0) const uint TYPE = 0;
layout(push_constant) uniform P {
  uint64_t w, x, y, row_bytes;
  uint m, k, n;
} p;

#if TOKENS == 1
#define ROWS 8
#define ACC float
#else
#define ROWS 4
#define ACC mat2x4
#endif
shared float red[ROWS * TOKENS][16];  // per subgroup, when the workgroup holds several

const bool PLAIN = TYPE == T_F32 || TYPE == T_F16 || TYPE == T_BF16;

uint row0() { return group_index() * ROWS; }

// A chunk of weights: plain rows as floats (f), quantized ones as integers (q) with the scales
// of the CPU's formula: a, b = d, m (Q4_0 .. Q8_0) or the super-block's d, dmin (k-quants), and
// the sub-block's integer scale and min.
struct W8 {
  mat2x4 f;
  ivec4 qlo, qhi;
  uint plo, phi;  // INTEGER_DOT: q packed four 8-bit values to a word
  float a, b;
  int sc, mn;
};

// A chunk of one token's activations: floats, or the 8-bit values with their block's d and s
// (s = d * sum of the block, for Q4_1 / Q5_1) and the chunk's sum (for k-quant minimums).
struct X8 {
  mat2x4 f;
  ivec4 qlo, qhi;
  uint plo, phi;  // the record's packed words
  float d, s;
  int qsum;
};

uint packed4(const ivec4 v) { return uint(v.x & 255) | uint(v.y & 255) << 8 | uint(v.z & 255) << 16 | uint(v.w & 255) << 24; }

ivec4 bytes4(const uint word) {
  return ivec4(bitfieldExtract(int(word), 0, 8), bitfieldExtract(int(word), 8, 8), bitfieldExtract(int(word), 16, 8),
               bitfieldExtract(int(word), 24, 8));
}

W8 weights(const uint row, const uint c) {
  const uint64_t r = p.w + uint64_t(min(row, p.m - 1u)) * p.row_bytes;
  W8 w;
  if (PLAIN) {
    float v[8];
    for (uint i = 0; i < 8u; ++i) v[i] = 8u * c + i < p.k ? plain_at(TYPE, r, 8u * c + i) : 0.0;
    w.f = mat2x4(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
    return w;
  }
  int q[8];
  if (is_k_quant(TYPE)) {
    decode8_k(TYPE, r, c / 4u, c % 4u, q, w.sc, w.mn, w.a, w.b);
  } else {
    decode8(TYPE, r, c / 4u, c % 4u, q, w.a, w.b);
  }
  w.qlo = ivec4(q[0], q[1], q[2], q[3]);
  w.qhi = ivec4(q[4], q[5], q[6], q[7]);
#ifdef INTEGER_DOT
  w.plo = packed4(w.qlo);
  w.phi = packed4(w.qhi);
#endif
  return w;
}

// Token t's activations of chunk c (zeros past n tokens, or past k values of a plain row).
X8 activations(const uint t, const uint c) {
  X8 x;
  x.qlo = ivec4(0);
  x.qhi = ivec4(0);
  x.plo = 0u;
  x.phi = 0u;
  x.d = 0.0;
  x.s = 0.0;
  x.qsum = 0;
  x.f = mat2x4(0.0);
  if (t >= p.n) return x;
  if (PLAIN) {
    F32s xs = F32s(p.x);
    float v[8];
    for (uint i = 0; i < 8u; ++i) v[i] = 8u * c + i < p.k ? xs.v[t * p.k + 8u * c + i] : 0.0;
    x.f = mat2x4(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
    return x;
  }
  // Records of 10 words per 32 values (quantize_x.comp); k is a multiple of 32.
  const uint64_t rec = p.x + 40ul * (uint64_t(t) * (p.k / 32u) + c / 4u);
  U32s words = U32s(rec);
  x.plo = words.v[2u * (c % 4u)];
  x.phi = words.v[2u * (c % 4u) + 1u];
  x.qlo = bytes4(x.plo);
  x.qhi = bytes4(x.phi);
  x.d = uintBitsToFloat(words.v[8]);
  x.s = uintBitsToFloat(words.v[9]);
  x.qsum = x.qlo.x + x.qlo.y + x.qlo.z + x.qlo.w + x.qhi.x + x.qhi.y + x.qhi.z + x.qhi.w;
  return x;
}

// The chunk's share of w . x, in the CPU's formula for the type (kernels/cpu/dot_ref.cpp).
float dot8(const W8 w, const X8 x, const uint c) {
  if (PLAIN) {
    precise float s = w.f[0][0] * x.f[0][0];
    s += w.f[0][1] * x.f[0][1];
    s += w.f[0][2] * x.f[0][2];
    s += w.f[0][3] * x.f[0][3];
    s += w.f[1][0] * x.f[1][0];
    s += w.f[1][1] * x.f[1][1];
    s += w.f[1][2] * x.f[1][2];
    s += w.f[1][3] * x.f[1][3];
    return s;
  }
#ifdef INTEGER_DOT
  const int isum = sdot4x8(w.plo, x.plo, 0) + sdot4x8(w.phi, x.phi, 0);
#else
  const int isum = w.qlo.x * x.qlo.x + w.qlo.y * x.qlo.y + w.qlo.z * x.qlo.z + w.qlo.w * x.qlo.w +
                   w.qhi.x * x.qhi.x + w.qhi.y * x.qhi.y + w.qhi.z * x.qhi.z + w.qhi.w * x.qhi.w;
#endif
  precise float r;
  if (TYPE == T_Q4_0 || TYPE == T_Q5_0) {
    r = float(isum) * w.a * x.d;
  } else if (TYPE == T_Q8_0) {
    r = float(isum) * (w.a * x.d);
  } else if (TYPE == T_Q4_1 || TYPE == T_Q5_1) {
    r = (w.a * x.d) * float(isum);
    if (c % 4u == 0u) r += w.b * x.s;  // the block's minimum term, once per block
  } else if (TYPE == T_Q3_K || TYPE == T_Q6_K) {
    r = (w.a * x.d) * float(w.sc * isum);
  } else {  // Q2_K, Q4_K, Q5_K
    r = (x.d * w.a) * float(w.sc * isum) - (x.d * w.b) * float(w.mn * x.qsum);
  }
  return r;
}

#if TOKENS == 1
#define CHUNK(r, a) { const W8 w = weights(r0 + r, c); a += dot8(w, x0, c); }
#else
#define CHUNK(r, a) { const W8 w = weights(r0 + r, c); \
    a[0] += vec4(dot8(w, x0, c), dot8(w, x1, c), dot8(w, x2, c), dot8(w, x3, c)); \
    a[1] += vec4(dot8(w, x4, c), dot8(w, x5, c), dot8(w, x6, c), dot8(w, x7, c)); }
#endif

float token_sum(const ACC a, const uint t) {
#if TOKENS == 1
  return a;
#else
  return a[t / 4u][t % 4u];
#endif
}

// The invocations' sums of row r0 + r, token t: stored, or (several subgroups) kept for main.
void finish(const uint r, const uint t, const ACC a) {
  const float s = subgroupAdd(token_sum(a, t));
  if (!subgroupElect()) return;
  if (gl_NumSubgroups > 1u) {
    red[r * TOKENS + t][gl_SubgroupID] = s;
  } else if (row0() + r < p.m && t < p.n) {
    st_f32(p.y, uint64_t(t) * p.m + row0() + r, s);
  }
}

void main() {
  const uint lane = gl_LocalInvocationID.x;
  const uint r0 = row0();
  ACC a0 = ACC(0.0), a1 = ACC(0.0), a2 = ACC(0.0), a3 = ACC(0.0);
#if ROWS == 8
  ACC a4 = ACC(0.0), a5 = ACC(0.0), a6 = ACC(0.0), a7 = ACC(0.0);
#endif
  const uint chunks = PLAIN ? (p.k + 7u) / 8u : p.k / 8u;
  for (uint c = lane; c < chunks; c += gl_WorkGroupSize.x) {
    const X8 x0 = activations(0u, c);
#if TOKENS == 8
    const X8 x1 = activations(1u, c), x2 = activations(2u, c), x3 = activations(3u, c);
    const X8 x4 = activations(4u, c), x5 = activations(5u, c), x6 = activations(6u, c), x7 = activations(7u, c);
#endif
    CHUNK(0u, a0)
    CHUNK(1u, a1)
    CHUNK(2u, a2)
    CHUNK(3u, a3)
#if ROWS == 8
    CHUNK(4u, a4)
    CHUNK(5u, a5)
    CHUNK(6u, a6)
    CHUNK(7u, a7)
#endif
  }
  for (uint t = 0; t < TOKENS; ++t) {
    finish(0u, t, a0);
    finish(1u, t, a1);
    finish(2u, t, a2);
    finish(3u, t, a3);
#if ROWS == 8
    finish(4u, t, a4);
    finish(5u, t, a5);
    finish(6u, t, a6);
    finish(7u, t, a7);
#endif
  }
  if (gl_NumSubgroups > 1u) {  // the same for the whole workgroup
    barrier();
    if (lane < ROWS * TOKENS) {
      const uint r = lane / TOKENS, t = lane % TOKENS;
      if (r0 + r < p.m && t < p.n) {
        float s = 0.0;
        for (uint i = 0; i < gl_NumSubgroups; ++i) s += red[lane][i];
        st_f32(p.y, uint64_t(t) * p.m + r0 + r, s);
      }
    }
  }
}
