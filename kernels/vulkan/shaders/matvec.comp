// y [n, m] = x [n, k] * w [m, k]^T for n <= 8 tokens (decoding): one workgroup per weight row,
// its 64 invocations over 8-value chunks of the row (quantized: decode8) or single values
// (f32 / f16 / bf16), every token's dot product at once, a shared-memory tree reduction.
// The plain path: dequantized weights times f32 activations (no integer dot product yet).
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint TYPE = 0;
layout(push_constant) uniform P {
  uint64_t w, x, y, row_bytes;
  uint m, k, n;
} p;
shared float red[8 * 64];

void main() {
  const uint row = group_index();
  if (row >= p.m) return;
  const uint tid = gl_LocalInvocationID.x;
  float acc[8] = float[8](0, 0, 0, 0, 0, 0, 0, 0);
  const uint64_t r = p.w + uint64_t(row) * p.row_bytes;
  F32s x = F32s(p.x);
  if (TYPE == T_F32 || TYPE == T_F16 || TYPE == T_BF16) {
    for (uint i = tid; i < p.k; i += 64u) {
      const float wv = plain_at(TYPE, r, i);
      for (uint t = 0; t < p.n; ++t) acc[t] += wv * x.v[t * p.k + i];
    }
  } else {
    for (uint c = tid; c < p.k / 8u; c += 64u) {
      int q[8];
      float d, m;
      decode8(TYPE, r, c / 4u, c % 4u, q, d, m);
      float wv[8];
      for (uint i = 0; i < 8u; ++i) wv[i] = dq(d, q[i], m);
      for (uint t = 0; t < p.n; ++t) {
        float s = 0.0;
        for (uint i = 0; i < 8u; ++i) s += wv[i] * x.v[t * p.k + 8u * c + i];
        acc[t] += s;
      }
    }
  }
  for (uint t = 0; t < p.n; ++t) red[t * 64u + tid] = acc[t];
  barrier();
  for (uint s = 32u; s > 0u; s >>= 1) {
    if (tid < s) {
      for (uint t = 0; t < p.n; ++t) red[t * 64u + tid] += red[t * 64u + tid + s];
    }
    barrier();
  }
  if (tid == 0u) {
    for (uint t = 0; t < p.n; ++t) st_f32(p.y, uint64_t(t) * p.m + row, red[t * 64u]);
  }
}
