// y [n, m] = x [n, k] * w [m, k]^T for n <= TOKENS tokens (decoding; TOKENS is 1 or 8, one
// shader each: matvec1.comp, matvec8.comp). A workgroup is one subgroup wide (its size is the
// device's subgroup size, specialization constant 1) and owns ROWS weight rows: its invocations
// take the row's 8-value chunks in turn (chunk c: the invocation c mod width), load the
// activations of a chunk once and use them for every row, and keep each (row, token) sum in a
// register; subgroupAdd then sums the invocations (and, where a device runs the workgroup as
// several subgroups, shared memory sums those).
//
// Why this shape: a software device (lavapipe) runs one subgroup as one SIMD vector and loads
// from a buffer lane by lane, per component, and a workgroup wider than one subgroup costs it
// dearly; so every load is counted: activations come as vec4s, once per chunk for ROWS rows,
// the accumulators are named variables (a0..a7), the rows unrolled by hand. On lavapipe this
// made SmolLM2's decoding about 6 times faster than the previous eight-rows-per-64-invocations
// kernel. Per token the sums are added in the same order in both shaders (precise: no
// contraction), so a token's result does not depend on the batch it came in (the op suite
// asserts it).
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"
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

uint row0() { return group_index() * ROWS; }

// One token's chunk sum, the products added in index order.
float dot8(const mat2x4 w, const mat2x4 x) {
  precise float s = w[0][0] * x[0][0];
  s += w[0][1] * x[0][1];
  s += w[0][2] * x[0][2];
  s += w[0][3] * x[0][3];
  s += w[1][0] * x[1][0];
  s += w[1][1] * x[1][1];
  s += w[1][2] * x[1][2];
  s += w[1][3] * x[1][3];
  return s;
}

const bool PLAIN = TYPE == T_F32 || TYPE == T_F16 || TYPE == T_BF16;

// Chunk c of row `row` as floats (plain rows: values 8c .. 8c + 7, those past k read as 0).
mat2x4 weights(const uint row, const uint c) {
  const uint64_t r = p.w + uint64_t(min(row, p.m - 1u)) * p.row_bytes;
  float v[8];
  if (PLAIN) {
    for (uint i = 0; i < 8u; ++i) v[i] = 8u * c + i < p.k ? plain_at(TYPE, r, 8u * c + i) : 0.0;
  } else {
    int q[8];
    float d, m;
    decode8(TYPE, r, c / 4u, c % 4u, q, d, m);
    for (uint i = 0; i < 8u; ++i) v[i] = dq(d, q[i], m);
  }
  return mat2x4(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
}

// Token t's activations of chunk c (zeros past n tokens, or past k values of a plain row).
// Quantized rows have k a multiple of 32 and take them from matmul's scratch (16-byte aligned):
// two vec4 loads, where a software device would gather eight floats one by one.
layout(buffer_reference, std430, buffer_reference_align = 16) buffer F32x4s { vec4 v[]; };
mat2x4 activations(const uint t, const uint c) {
  if (t >= p.n) return mat2x4(0.0);
  if (!PLAIN) {
    F32x4s x = F32x4s(p.x + 4ul * (uint64_t(t) * p.k + 8u * c));
    return mat2x4(x.v[0], x.v[1]);
  }
  F32s x = F32s(p.x);
  float v[8];
  for (uint i = 0; i < 8u; ++i) v[i] = 8u * c + i < p.k ? x.v[t * p.k + 8u * c + i] : 0.0;
  return mat2x4(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
}

#if TOKENS == 1
#define CHUNK(r, a) { const mat2x4 w = weights(r0 + r, c); a += dot8(w, x0); }
#else
#define CHUNK(r, a) { const mat2x4 w = weights(r0 + r, c); \
    a[0] += vec4(dot8(w, x0), dot8(w, x1), dot8(w, x2), dot8(w, x3)); \
    a[1] += vec4(dot8(w, x4), dot8(w, x5), dot8(w, x6), dot8(w, x7)); }
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
    const mat2x4 x0 = activations(0u, c);
#if TOKENS == 8
    const mat2x4 x1 = activations(1u, c), x2 = activations(2u, c), x3 = activations(3u, c);
    const mat2x4 x4 = activations(4u, c), x5 = activations(5u, c), x6 = activations(6u, c), x7 = activations(7u, c);
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
