// y [n, m] = x [n, k] * w [m, k]^T for n <= 8 tokens (decoding): eight weight rows per workgroup
// of 64 invocations, eight invocations per row taking its 8-value chunks (quantized: decode8) or
// its values (f32 / f16 / bf16) in turn, every token's dot product at once; one barrier, then
// the row's first invocation sums the eight partial sums. (Few, busy workgroups with one barrier
// suit lavapipe, where every barrier splits the shader; GPUs get eight rows in flight per group.)
// The plain path: dequantized weights times f32 activations (no integer dot product yet).
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint TYPE = 0;
layout(push_constant) uniform P {
  uint64_t w, x, y, row_bytes;
  uint m, k, n;
} p;
shared float red[8][64];

void main() {
  const uint tid = gl_LocalInvocationID.x, lane = tid % 8u;
  const uint row = group_index() * 8u + tid / 8u;
  float acc[8] = float[8](0, 0, 0, 0, 0, 0, 0, 0);
  if (row < p.m) {
    const uint64_t r = p.w + uint64_t(row) * p.row_bytes;
    F32s x = F32s(p.x);
    if (TYPE == T_F32 || TYPE == T_F16 || TYPE == T_BF16) {
      for (uint i = lane; i < p.k; i += 8u) {
        const float wv = plain_at(TYPE, r, i);
        for (uint t = 0; t < 8u; ++t) {  // constant bounds: acc stays in registers
          if (t < p.n) acc[t] += wv * x.v[t * p.k + i];
        }
      }
    } else {
      for (uint c = lane; c < p.k / 8u; c += 8u) {
        int q[8];
        float d, m;
        decode8(TYPE, r, c / 4u, c % 4u, q, d, m);
        float wv[8];
        for (uint i = 0; i < 8u; ++i) wv[i] = dq(d, q[i], m);
        for (uint t = 0; t < 8u; ++t) {
          if (t >= p.n) break;
          float s = 0.0;
          for (uint i = 0; i < 8u; ++i) s += wv[i] * x.v[t * p.k + 8u * c + i];
          acc[t] += s;
        }
      }
    }
  }
  for (uint t = 0; t < 8u; ++t) red[t][tid] = acc[t];
  barrier();
  if (lane == 0u && row < p.m) {
    for (uint t = 0; t < p.n; ++t) {
      float s = 0.0;
      for (uint i = 0; i < 8u; ++i) s += red[t][tid + i];
      st_f32(p.y, uint64_t(t) * p.m + row, s);
    }
  }
}
